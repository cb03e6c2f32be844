"""The pipeline YAML: its keys (`PipelineSpec`), the stage options that name principles, and
which file `cai pipeline` reads when none is named. `cai.pipeline.stages` loads and runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cai import ROOT
from cai.foundation import options as cfgmod
from cai.foundation.errors import CaiError

DEFAULT_PIPELINE = ROOT / "configs" / "pipeline.yaml"  # the one shipped with cai


def default_pipeline() -> Path:
    """The pipeline YAML used when none is named: configs/pipeline.yaml in the working
    directory when there is one (your checkout, even with another checkout's environment), else
    the one shipped with the installed cai."""
    here = Path("configs") / "pipeline.yaml"
    return here.resolve() if here.is_file() else DEFAULT_PIPELINE


PREFERENCES = ("dpo", "ppo", "rs", "grpo")
#: The stages between sft and eval for each preference method.
MIDDLE = {"dpo": ["label", "dpo"], "ppo": ["label", "rm", "ppo"], "rs": ["classifier", "rs"],
          "grpo": ["classifier", "grpo"]}

# Stage options that name principles, and the constitution section they name them from.
PRINCIPLE_OPTIONS = {("revise", "principles"): "critique_revision",
                     ("revise", "gate_principles"): "preference",
                     ("label", "principle_ids"): "preference",
                     ("label", "helpful_principle_ids"): "preference",
                     ("eval", "helpful_principles"): "preference",
                     ("eval", "harmless_principles"): "preference"}


@dataclass
class PipelineSpec:
    """The keys of a pipeline YAML."""

    workdir: str = cfgmod.opt("runs/pipeline", "folder for every stage's outputs "
                                               "(relative to the YAML's folder, always)")
    model: str = cfgmod.opt("smollm2-135m-instruct", "the policy: the helpful-only model being "
                                                     "aligned")
    feedback_model: str | None = cfgmod.opt(None, "writes critiques and revisions, gates them and "
                                                  "labels pairs (default: the policy, as in the "
                                                  "paper)")
    judge: str | None = cfgmod.opt(None, "the evaluation's judge (default: cai eval's); the "
                                         "report flags a judge that is the feedback model or "
                                         "an evaluated model")
    constitution: str = cfgmod.opt("constitutions/default.yaml", "the principles, for every stage")
    preference: str = cfgmod.opt("dpo", "preference learning: dpo, ppo (trains a preference "
                                        "model first), rs (rejection sampling) or grpo, the "
                                        "last two on the two-sided classifier reward (trains "
                                        "the classifier first)")
    prompts_dir: str | None = cfgmod.opt(None, "folder with your own prompt templates")
    revise: dict = cfgmod.opt(help="`cai revise` options", factory=dict)
    sft: dict = cfgmod.opt(help="config: YAML path; set: {section.key: value}", factory=dict)
    label: dict = cfgmod.opt(help="`cai label` options", factory=dict)
    dpo: dict = cfgmod.opt(help="config: YAML path; set: {section.key: value}", factory=dict)
    rm: dict = cfgmod.opt(help="config: YAML path; set: {section.key: value}", factory=dict)
    ppo: dict = cfgmod.opt(help="config: YAML path; set: {section.key: value}", factory=dict)
    classifier: dict = cfgmod.opt(help="`cai train classifier` options", factory=dict)
    rs: dict = cfgmod.opt(help="config: YAML path; set: {section.key: value}", factory=dict)
    grpo: dict = cfgmod.opt(help="config: YAML path; set: {section.key: value}", factory=dict)
    eval: dict = cfgmod.opt(help="`cai eval` options", factory=dict)

    def __post_init__(self):
        if self.preference not in PREFERENCES:
            raise CaiError(f"preference must be one of {', '.join(PREFERENCES)}, got "
                           f"'{self.preference}'")
