"""The configs of `cai train sft|dpo|rm|ppo|grpo`: their sections and how a YAML file and overrides
become one (no torch is imported here).

A config is YAML with typed sections, each a dataclass below, plus the algorithm's own section
(below too; PPO's is `cai.train.ppo.config`, which `cai train grpo` shares) and a `training:`
mapping handed straight to `transformers.TrainingArguments`:

    model:        {name, dtype, attn_implementation, trust_remote_code}
    data:         {path, max_length, packing, ...}
    lora:         {enabled, r, alpha, dropout, target_modules}
    quantization: {load_in_4bit, quant_type, double_quant, compute_dtype}
    sft:          the algorithm's options
    training:     any TrainingArguments field (output_dir, learning_rate, max_steps, ...)

Command-line overrides are `--section.key value` (or `--key value` when only one section has
that key). Unknown keys fail with the file, line and key named; the resolved config is written
to `OUTPUT_DIR/cai_config.yaml`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cai.foundation.errors import CaiError
from cai.foundation.options import check_minimum, coerce, key_lines, opt, read_yaml

RESOLVED = "cai_config.yaml"


@dataclass
class ModelSection:
    name: str | None = opt(None, "embedded name, local folder or hub id "
                                 "(default: smollm2-135m-instruct)")
    dtype: str = opt("float32", "dtype of the trainable weights: float32, bfloat16 or float16 "
                                "(with QLoRA: of the layers that stay unquantized)")
    attn_implementation: str | None = opt(None, "sdpa, eager, flash_attention_2, ... "
                                                "(default: transformers' choice)")
    trust_remote_code: bool = opt(False, "run model code from the hub")


@dataclass
class DataSection:
    path: str = opt("", ".jsonl file, a `cai revise` output folder (its data.jsonl), or "
                        "dataset:NAME_OR_DIR for the datasets library")
    split: str = opt("train", "split, for dataset: sources")
    messages_column: str = opt("messages", "column holding the conversation "
                                           "([{role, content}, ...])")
    eval_path: str | None = opt(None, "held-out conversations, same formats as path")
    eval_fraction: float = opt(0.0, "hold out this fraction of path for evaluation instead")
    limit: int | None = opt(None, "only the first N conversations")
    max_length: int = opt(1024, "longest example in tokens (and the packed row length)")
    truncation: str = opt("cut", "longer examples: 'cut' keeps the first max_length tokens "
                                 "(preference pairs: cuts the prompt from the left and keeps "
                                 "the answers), 'drop' skips them")
    packing: bool = opt(False, "pack several examples into each row of max_length tokens "
                               "(attention stays within each example)")
    group_by_length: bool = opt(True, "without packing: batch examples of similar length")
    seed: int = opt(0, "seed of the eval split and of the packing order")

    def __post_init__(self):
        if self.truncation not in ("cut", "drop"):
            raise CaiError(f"data.truncation must be 'cut' or 'drop', got '{self.truncation}'")
        if self.max_length < 2:
            raise CaiError(f"data.max_length is too small: {self.max_length}")
        if not 0 <= self.eval_fraction < 1:
            raise CaiError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")


@dataclass
class LoraSection:
    enabled: bool = opt(True, "train a LoRA adapter (false: full fine-tuning)")
    r: int = opt(16, "rank")
    alpha: int = opt(32, "scale numerator: the update is (alpha / r) B A")
    dropout: float = opt(0.05, "dropout on the adapter's input")
    target_modules: list[str] = opt(help="module names, or all-linear",
                                    factory=lambda: ["all-linear"])
    modules_to_save: list[str] | None = opt(None, "modules trained in full next to the adapter")


@dataclass
class QuantizationSection:
    load_in_4bit: bool = opt(False, "QLoRA: base weights in 4-bit (needs bitsandbytes)")
    quant_type: str = opt("nf4", "nf4 (QLoRA's NormalFloat) or fp4")
    double_quant: bool = opt(True, "quantize the quantization constants too")
    compute_dtype: str = opt("bfloat16", "dtype of the 4-bit layers' matmuls")

    def __post_init__(self):
        if self.quant_type not in ("nf4", "fp4"):
            raise CaiError(f"quantization.quant_type must be nf4 or fp4, got '{self.quant_type}'")


# --------------------------------------------------------------------------------------------
# Each algorithm's own section (PPO's is in its package: `cai.train.ppo.config`)


@dataclass
class SFTSection:
    assistant_only_loss: bool = opt(True, "train on assistant tokens only (false: on every "
                                          "token of the conversation)")
    kl_coef: float = opt(0.0, minimum=0,
                         help="add this times the KL (sft.kl_direction) of the next-token "
                              "distributions at the trained tokens, the base being the model "
                              "with the adapter off (LoRA only): keeps the model near its base "
                              "where the data does not teach it something new")
    kl_direction: str = opt("forward",
                            help="forward: KL(base || model), which pulls the model's whole "
                                 "distribution back to the base's; reverse: KL(model || base), "
                                 "which pushes back harder on a token the base gives almost no "
                                 "mass, such as a refusal leaking onto benign prompts")
    kl_only_kinds: list[str] = opt(factory=list,
                                   help="rows of these kinds (the `kind` of `cai revise` "
                                        "rows: helpful, revision) are trained by the KL term "
                                        "alone, not imitated (needs kl_coef)")

    def __post_init__(self):
        if self.kl_direction not in ("forward", "reverse"):
            raise CaiError(f"sft.kl_direction must be forward or reverse, got "
                           f"'{self.kl_direction}'")


@dataclass
class DPOSection:
    beta: float = opt(0.1, "strength of the pull toward the reference (DPO's beta, IPO's tau)")
    loss_type: str = opt("sigmoid", "sigmoid (DPO), ipo, hinge or robust")
    label_smoothing: float = opt(0.0, "robust only: the assumed rate of flipped labels, "
                                      "in [0, 0.5)")
    soft_labels: bool = opt(False, "train toward the AI label P(chosen better) (label_column) "
                                   "instead of 'chosen is better'")
    label_column: str = opt("p_chosen", "field holding P(chosen better), in [0, 1]")
    disable_dropout: bool = opt(True, "no dropout in the policy (its log-probs stay comparable "
                                      "with the reference's, as in TRL)")
    ref_batch_size: int | None = opt(None, "pairs per batch of the reference pass "
                                           "(default: per_device_eval_batch_size)")
    cache_reference: bool = opt(True, "keep the reference log-probs in output_dir and reuse "
                                      "them (resume, reruns on the same data)")

    def __post_init__(self):
        from cai.train.losses import DPO_LOSSES  # torch: only when a dpo config is built

        if self.loss_type not in DPO_LOSSES:
            raise CaiError(f"dpo.loss_type must be one of {', '.join(DPO_LOSSES)}, got "
                           f"'{self.loss_type}'")
        if self.beta <= 0:
            raise CaiError(f"dpo.beta must be positive, got {self.beta}")
        if self.loss_type == "robust" and not 0 <= self.label_smoothing < 0.5:
            raise CaiError(f"dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss_type == "robust" and self.soft_labels and self.label_smoothing:
            # The expected robust loss under a soft target t acts like a label
            # (t - e) / (1 - 2e), pushed away from 1/2 (e = 0.1, t = 0.55: optimum at
            # logit(0.5625)): the label noise would be corrected twice.
            raise CaiError("dpo.loss_type robust with dpo.soft_labels corrects label noise twice "
                           "(the soft label is already a probability): use one of them, or "
                           "label_smoothing 0")
        if self.loss_type != "robust" and self.label_smoothing:
            raise CaiError("dpo.label_smoothing applies to loss_type robust only (soft_labels "
                           "gives the sigmoid loss per-pair targets)")


@dataclass
class RMSection:
    soft_labels: bool = opt(False, "train toward the AI label P(chosen better) (label_column) "
                                   "instead of 'chosen is better'")
    label_column: str = opt("p_chosen", "field holding P(chosen better), in [0, 1]")
    prefix_pairs: int = opt(0, "also train on this many copies of each pair with both answers "
                               "cut to the same first k tokens (k drawn at random below the "
                               "shorter one), with the pair's label: so that an unfinished "
                               "answer is scored like where it leads, as PPO's reward-model "
                               "critic reads it (ppo.critic: reward_model; measured: no closer "
                               "than without, docs/training.md)")

    def __post_init__(self):
        if self.prefix_pairs < 0:
            raise CaiError("rm.prefix_pairs must be 0 or more")


COMMON = {"model": ModelSection, "data": DataSection, "lora": LoraSection,
          "quantization": QuantizationSection}


@dataclass
class TrainConfig:
    """One trainer's resolved config: the typed sections and the TrainingArguments values."""

    algo: str
    model: ModelSection
    data: DataSection
    lora: LoraSection
    quantization: QuantizationSection
    options: typing.Any  # the algorithm's own section (e.g. SFTSection)
    training: dict = field(default_factory=dict)
    source: str = "options"
    section: str = ""  # the algorithm's section name, when it is not `algo` (grpo: ppo)

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    def as_dict(self) -> dict:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in COMMON}
        out[self.section or self.algo] = dataclasses.asdict(self.options)
        out["training"] = dict(self.training)
        return out


def training_fields() -> dict:
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainingArguments) if f.init}


def parse_overrides(argv: list[str]) -> list[tuple[str, str]]:
    """`--a.b value`, `--a.b=value` and a bare `--flag` (= true) into (key, value) pairs."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise CaiError(f"unexpected argument '{arg}' (overrides look like --section.key value)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            else:
                value = "true"
        pairs.append((key.replace("-", "_"), value))
        i += 1
    return pairs


def load(path: str | None, overrides: list[tuple[str, str]], algo: str, algo_cls,
         section: str | None = None) -> TrainConfig:
    """The config in `path` (may be None) with `overrides` applied, validated; the algorithm's
    options are the section `section` (default: `algo`) of class `algo_cls`."""
    raw = read_yaml(path) if path else {}
    source = str(path or "options")
    lines = key_lines(path) if path else {}
    own = section or algo
    sections = {**COMMON, own: algo_cls}
    tfields = training_fields()

    def where(*keys) -> str:
        line = lines.get(keys)
        return f"{source}:{line}" if line else source

    values: dict[str, dict] = {}
    for name, body in raw.items():
        if name not in sections and name != "training":
            match = difflib.get_close_matches(str(name), [*sections, "training"], n=1)
            raise CaiError(f"{where(name)}: unknown section '{name}'"
                           + (f" (did you mean '{match[0]}'?)" if match else "")
                           + f"; sections: {', '.join([*sections, 'training'])}")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise CaiError(f"{where(name)}: section '{name}' must be a mapping of keys to values")
        values[name] = dict(body)

    for key, value in overrides:
        section, dot, name = key.partition(".")
        if not dot:  # a bare key: the one section that has it
            name = section
            owners = [s for s, cls in sections.items() if name in _field_names(cls)]
            owners += ["training"] if name in tfields else []
            if len(owners) != 1:
                raise CaiError(f"--{name}: " + (f"ambiguous, say --{owners[0]}.{name} or "
                                                f"--{owners[1]}.{name}" if owners else
                                                "no such option in any section"))
            section = owners[0]
        if section not in sections and section != "training":
            raise CaiError(f"--{key}: unknown section '{section}'; sections: "
                           f"{', '.join([*sections, 'training'])}")
        values.setdefault(section, {})[name] = value

    built = {}
    for name, cls in sections.items():
        body = values.get(name, {})
        for key in body:
            if key not in _field_names(cls):
                match = difflib.get_close_matches(str(key), _field_names(cls), n=1)
                raise CaiError(f"{where(name, key)}: unknown key '{name}.{key}'"
                               + (f" (did you mean '{name}.{match[0]}'?)" if match else ""))
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for k, v in body.items():
            if isinstance(v, str) and _accepts(hints[k], dict):  # a mapping on the command line
                v = _coerce_training(v, dict | None, f"{where(name, k)}: '{name}.{k}'") or None
            kwargs[k] = coerce(v, hints[k], f"{where(name, k)}: '{name}.{k}'")
            check_minimum(fields[k].metadata.get("minimum"), kwargs[k],
                          f"{where(name, k)}: '{name}.{k}'")
        built[name] = cls(**kwargs)

    training = {}
    for key, value in values.get("training", {}).items():
        if key not in tfields:
            match = difflib.get_close_matches(str(key), list(tfields), n=1)
            raise CaiError(f"{where('training', key)}: unknown key 'training.{key}' (not a "
                           f"transformers.TrainingArguments field"
                           + (f"; did you mean 'training.{match[0]}'?)" if match else ")"))
        training[key] = _coerce_training(value, tfields[key], f"{where('training', key)}: "
                                                              f"'training.{key}'")
    if not training.get("output_dir"):
        raise CaiError(f"{source}: missing training.output_dir (the run's folder)")
    if not built["data"].path and algo != "rs":  # rs samples its own data (rs.prompts)
        raise CaiError(f"{source}: missing data.path (a .jsonl, a `cai revise` folder or "
                       "dataset:NAME)")
    return TrainConfig(algo=algo, options=built.pop(own), training=training, source=source,
                       section="" if own == algo else own, **built)


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _coerce_training(value, hint, where: str):
    """A TrainingArguments value: command-line strings become the field's number/bool/mapping."""
    if not isinstance(value, str):
        if isinstance(value, float) and not math.isfinite(value):
            raise CaiError(f"{where}: expected a finite number, got {value!r}")
        if isinstance(value, float) and _accepts(hint, int) and not _accepts(hint, float) \
                and value.is_integer():
            return int(value)
        return value
    text = value.strip()
    if _accepts(hint, bool) and text.lower() in ("true", "false", "yes", "no", "1", "0"):
        return text.lower() in ("true", "yes", "1")
    if _accepts(hint, int) or _accepts(hint, float):
        for kind in (int, float) if _accepts(hint, float) else (int,):
            try:
                number = kind(text)
            except ValueError:
                continue
            if not math.isfinite(number):
                raise CaiError(f"{where}: expected a finite number, got {value!r}")
            return number
        if not _accepts(hint, str):
            raise CaiError(f"{where}: expected a number, got {value!r}")
    if (_accepts(hint, dict) or _accepts(hint, list)) and text[:1] in "{[":
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CaiError(f"{where}: not a valid YAML list or mapping: {text!r} "
                           f"({getattr(e, 'problem', None) or 'parse error'})") from None
    return value


def _accepts(hint, kind) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, kind) for a in typing.get_args(hint))
    return hint is kind or origin is kind


def save_resolved(cfg: TrainConfig, folder: Path) -> Path:
    """Write the resolved config (every default filled in) where the run writes its outputs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESOLVED
    text = f"# resolved config of `cai train {cfg.algo}` (from {cfg.source})\n"
    text += yaml.safe_dump(cfg.as_dict(), sort_keys=False, default_flow_style=False)
    path.write_text(text, encoding="utf-8")
    return path
