"""The options of `cai contrast` (`--config` YAML keys and command-line flags)."""

from __future__ import annotations

from dataclasses import dataclass

from cai.foundation.options import flat_init, opt
from cai.generation import Role, main_role

EVAL_SETS = ["data/eval/red_team.jsonl", "data/eval/borderline.jsonl", "data/eval/helpful.jsonl",
             "data/eval/judge_check.jsonl", "data/eval/judge_examples.jsonl"]
TRAIN_SETS = ["data/red_team.jsonl", "data/borderline.jsonl", "data/helpful.jsonl"]


@flat_init
@dataclass
class ContrastConfig:
    """Options of `cai contrast` (also the keys of its `--config` YAML). The engine options are
    the feedback model's, which writes the contrast requests and labels every request."""

    seeds: str = opt("data/red_team.jsonl", "requests to decline that the new ones are written "
                                            "from (.jsonl with id, prompt)")
    include: list[str] = opt(help="prompt sets labelled and kept in the output beside the "
                                  "generated requests (the training sets)",
                             factory=lambda: list(TRAIN_SETS))
    exclude: list[str] = opt(help="prompt sets nothing may overlap (the evaluation sets): a "
                                  "generated request this similar to one of them is dropped",
                             factory=lambda: list(EVAL_SETS))
    similarity: float = opt(0.5, minimum=0, help="word-bigram Jaccard similarity at which two "
                                                 "requests count as near-duplicates")
    out: str = opt("", "output folder: raw.jsonl (the model's text), labels.jsonl, data.jsonl "
                       "(every request with p_decline), manifest.json")
    constitution: str | None = opt(None, "constitution YAML (default: constitutions/default.yaml)")
    examples: str = opt("data/contrast/request_examples.jsonl",
                        "demonstrations of the decision (prompt, decision: decline|answer)")
    label: bool = opt(True, "label every request with P(decline) (false: write the set only)")
    limit: int | None = opt(None, minimum=1, help="only the first N seeds")
    max_new_tokens: int = opt(160, minimum=1, help="longest reply per seed, in tokens")
    temperature: float = opt(0.8, minimum=0, help="sampling temperature of the writing")
    top_p: float = opt(0.95, minimum=0, help="nucleus sampling of the writing")
    seed: int = opt(0, "sampling seed (each seed request's reply depends on it and its id)")
    batch_size: int = opt(16, minimum=1, help="sequences per forward pass (hf engine)")
    feedback: Role = main_role(help={
        "model": "the feedback model (default: qwen2.5-coder-1.5b-instruct)"})

    def __post_init__(self):
        from cai.foundation.errors import CaiError

        if not self.out:
            raise CaiError("cai contrast needs --out (the output folder)")
        if not 0 < self.similarity <= 1:
            raise CaiError(f"--similarity must be in (0, 1], got {self.similarity}")
