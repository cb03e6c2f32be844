"""JSON Schemas of the files people edit: constitutions, job configs, training and pipeline
configs. YAML editors (VS Code and JetBrains through the YAML language server) validate and
complete a file from the schema its first-line comment names:

    # yaml-language-server: $schema=schemas/sft.schema.json

Each schema is made from the definitions the loader reads (a constitution's tables in
`cai.constitution`, the option dataclasses of each job), so the two cannot drift apart; the
shipped files are rewritten with `python -m cai.schemas` and a test checks they are current.
A schema knows types, keys and help texts; checks that need code (a value in range, a file that
exists, one reward source of three) stay with the loaders.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

from cai import ROOT
from cai.foundation.options import flat_options

DRAFT = "http://json-schema.org/draft-07/schema#"
#: The comment that points editors at a file's schema (a path relative to the YAML file).
MODELINE = "# yaml-language-server: $schema="
CONFIG_SCHEMAS = "configs/schemas"


def type_schema(hint) -> dict:
    """The JSON Schema of one field type (str, int, float, bool, list[...], dict, X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = type_schema(args[0])
        if "type" in inner and type(None) in typing.get_args(hint):
            inner["type"] = [*([inner["type"]] if isinstance(inner["type"], str)
                               else inner["type"]), "null"]
        return inner
    if origin in (list, tuple):
        (item, *_) = typing.get_args(hint) or (typing.Any,)
        # the loaders also take one comma-separated string (`cai.foundation.options.coerce`)
        return {"type": ["array", "string"], "items": type_schema(item)}
    if origin is dict or hint is dict:
        return {"type": "object"}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    return {"type": simple[hint]} if hint in simple else {}


def dataclass_schema(cls, description: str = "") -> dict:
    """An object schema from a dataclass of options: one property per option (a role's too, by
    its flat key), with its type, default, help and floor (`cai.foundation.options.opt`);
    unknown keys are errors, as in the loaders."""
    properties = {}
    for o in flat_options(cls):
        prop = type_schema(o.hint)
        if o.help:
            prop["description"] = o.help
        if o.minimum is not None:  # the loader's floor (`opt(minimum=...)`)
            prop["minimum"] = o.minimum
        default = o.factory() if o.factory is not None else o.default
        if default is not dataclasses.MISSING and default not in (None, "", {}):
            prop["default"] = default
        properties[o.key] = prop
    out = {"type": "object", "additionalProperties": False, "properties": properties}
    return {"description": description, **out} if description else out


def _document(title: str, body: dict) -> dict:
    return {"$schema": DRAFT, "title": title, **body}


def job_schema(name: str) -> dict:
    """`cai revise|label|eval --config FILE`: the job's options."""
    from cai.contrast.config import ContrastConfig
    from cai.eval.config import EvalConfig
    from cai.label.config import LabelConfig
    from cai.revise.config import ReviseConfig
    from cai.train.classifier import ClassifierConfig

    cls = {"revise": ReviseConfig, "label": LabelConfig, "eval": EvalConfig,
           "contrast": ContrastConfig, "classifier": ClassifierConfig}[name]
    return _document(f"cai {name} config", dataclass_schema(
        cls, f"options of `cai {name} --config FILE`: any of its command-line options"))


def train_schema(algo: str) -> dict:
    """`cai train ALGO CONFIG`: the typed sections, the algorithm's own and `training:`."""
    from cai.train.config import COMMON, DPOSection, RMSection, SFTSection
    from cai.train.ppo.config import GRPOSection, PPOSection
    from cai.train.rs import RSSection

    own = {"sft": SFTSection, "dpo": DPOSection, "rm": RMSection, "ppo": PPOSection,
           "grpo": GRPOSection, "rs": RSSection}[algo]
    key = "ppo" if algo == "grpo" else algo  # grpo is the PPO loop: its section is ppo:
    what = {"model": "the model to train", "data": "the training data",
            "lora": "the LoRA adapter", "quantization": "QLoRA: the 4-bit base model",
            key: f"the options of {algo}" + (" (the PPO loop's)" if key != algo else "")}
    sections = {name: dataclass_schema(cls, what[name]) for name, cls in
                {**COMMON, key: own}.items()}
    sections["training"] = {
        "type": "object",
        "description": "any transformers.TrainingArguments field (output_dir, learning_rate, "
                       "max_steps, ...), passed through unchanged; the trainer checks the names"}
    return _document(f"cai train {algo} config", {
        "type": "object", "additionalProperties": False, "properties": sections})


def pipeline_schema() -> dict:
    """`cai pipeline run|status FILE`: the roles, and each stage's options."""
    from cai.pipeline.spec import PREFERENCES, PipelineSpec

    body = dataclass_schema(PipelineSpec)
    props = body["properties"]
    for name in ("revise", "label", "eval", "classifier"):
        job = job_schema(name)
        props[name] = {**props[name], "type": ["object", "null"],
                       "properties": job["properties"], "additionalProperties": False}
    props["eval"]["properties"]["models"] = {
        "type": "array", "items": {"enum": ["base", "sft", "final"]}, "minItems": 2,
        "description": "which of the pipeline's models the evaluation compares (default: all "
                       "three; each model costs one judgment per evaluated answer)"}
    for name in ("sft", "dpo", "rm", "ppo", "rs", "grpo"):
        stage = {"config": {"type": "string", "description": f"a `cai train {name}` config "
                                                             f"(default: configs/{name}.yaml)"},
                 "set": {"type": "object", "description": "section.key: value overrides, e.g. "
                                                          "training.max_steps: 96"}}
        if name in ("ppo", "grpo"):
            stage["prompts"] = {"type": "string", "description": "the prompts PPO answers"}
        props[name] = {**props[name], "type": ["object", "null"], "properties": stage,
                       "additionalProperties": False}
    props["preference"]["enum"] = list(PREFERENCES)
    return _document("cai pipeline", body)


def constitution_schema() -> dict:
    from cai.constitution import schema

    return schema()


#: Every shipped schema file and what makes it.
SHIPPED = {
    "constitutions/constitution.schema.json": constitution_schema,
    **{f"{CONFIG_SCHEMAS}/{n}.schema.json": (lambda n=n: job_schema(n))
       for n in ("revise", "label", "eval", "contrast", "classifier")},
    **{f"{CONFIG_SCHEMAS}/{a}.schema.json": (lambda a=a: train_schema(a))
       for a in ("sft", "dpo", "rm", "ppo", "grpo", "rs")},
    f"{CONFIG_SCHEMAS}/pipeline.schema.json": pipeline_schema,
}


def dumps(schema: dict) -> str:
    """The text of a schema file (what `cai constitution schema` prints)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def modeline_target(path: str | Path) -> Path | None:
    """The schema file a YAML file's `# yaml-language-server: $schema=...` comment names."""
    path = Path(path)
    for line in path.read_text(encoding="utf-8").splitlines()[:5]:
        if line.startswith(MODELINE):
            return (path.parent / line[len(MODELINE):].strip()).resolve()
    return None


def write_all(root: Path = ROOT) -> list[Path]:
    """(Re)write every shipped schema file; returns those whose text changed."""
    changed = []
    for rel, make in SHIPPED.items():
        path = root / rel
        text = dumps(make())
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    for p in write_all():
        print(f"wrote {p.relative_to(ROOT)}")
