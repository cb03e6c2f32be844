"""What every trainer shares: the model from the config, TrainingArguments, the output folder.

A trainer module (sft.py, rm.py, dpo.py) defines its config section and its
`transformers.Trainer` subclass, and calls these in order: `model_and_tokenizer`,
`training_arguments`, then `run`.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import torch

from cai.foundation import lock
from cai.foundation.errors import CaiError
from cai.foundation.model_store import load_tokenizer
from cai.train import resume as resume_rules
from cai.train.config import RESOLVED, TrainConfig, save_resolved
from cai.train.loading import add_lora, load_for_training


def model_and_tokenizer(cfg: TrainConfig, num_labels: int | None = None):
    """The model to train (LoRA, QLoRA or full), and its tokenizer, as the config says.

    The adapter's random init is seeded with `training.seed`, so a run is reproducible.
    `num_labels`: a sequence classifier with a fresh (seeded) head instead of the causal LM.
    """
    from transformers import set_seed

    q, lora = cfg.quantization, cfg.lora
    if q.load_in_4bit and not lora.enabled:
        raise CaiError(f"{cfg.source}: quantization.load_in_4bit needs lora.enabled (4-bit "
                       "weights cannot be trained in full)")
    tokenizer = load_tokenizer(cfg.model.name)
    if num_labels:
        set_seed(int(cfg.training.get("seed", 42)))
    model = load_for_training(cfg.model.name, dtype=cfg.model.dtype,
                              attn_implementation=cfg.model.attn_implementation,
                              trust_remote_code=cfg.model.trust_remote_code,
                              load_in_4bit=q.load_in_4bit, quant_type=q.quant_type,
                              double_quant=q.double_quant, compute_dtype=q.compute_dtype,
                              num_labels=num_labels)
    model.config.use_cache = False  # no KV cache while training
    if num_labels:
        model.config.pad_token_id = tokenizer.pad_token_id  # a classifier pools the last non-pad
    if lora.enabled:
        set_seed(int(cfg.training.get("seed", 42)))
        model = add_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                         target_modules=lora.target_modules,
                         modules_to_save=lora.modules_to_save,
                         gradient_checkpointing=bool(cfg.training.get("gradient_checkpointing")),
                         task_type="SEQ_CLS" if num_labels else "CAUSAL_LM")
    return model, tokenizer


def training_arguments(cfg: TrainConfig, **defaults):
    """`transformers.TrainingArguments` from the `training:` section over cai's defaults."""
    from transformers import TrainingArguments

    values = {
        "report_to": "tensorboard" if importlib.util.find_spec("tensorboard") else "none",
        "logging_steps": 10,
        "prediction_loss_only": True,
        "dataloader_pin_memory": torch.cuda.is_available(),
        "use_cpu": not torch.cuda.is_available(),  # with torchrun on a CPU: DDP over gloo
        **defaults,
        **cfg.training,
        "remove_unused_columns": False,  # cai's collators choose the columns
    }
    reporters = values["report_to"] if isinstance(values["report_to"], list) else \
        [values["report_to"]]
    if "tensorboard" in reporters and not importlib.util.find_spec("tensorboard"):
        raise CaiError(f"{cfg.source}: training.report_to tensorboard needs the tensorboard "
                       "package: pip install 'cai[tensorboard]'")
    if values.get("gradient_checkpointing") and not values.get("gradient_checkpointing_kwargs"):
        values["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    try:
        return TrainingArguments(**values)
    except (ValueError, TypeError) as e:
        raise CaiError(f"{cfg.source}: training: {str(e).splitlines()[0]}") from None


def evaluate(trainer) -> dict:
    """Evaluate on the held-out rows; log and save the metrics (eval_results.json)."""
    evaluation = trainer.evaluate()
    trainer.log_metrics("eval", evaluation)
    trainer.save_metrics("eval", evaluation)  # eval_results.json, all_results.json
    return evaluation


def checkpoints(folder: Path) -> list[Path]:
    """The whole checkpoints of a run, oldest first (`cai.train.resume`)."""
    return resume_rules.checkpoints(folder)


def check_output(cfg: TrainConfig, resume: bool) -> None:
    """Refuse to mix runs: an output folder with checkpoints needs --resume, and --resume one;
    and one run at a time: the output folder stays locked until this process ends (the main
    process's lock stands for all of a distributed run's processes)."""
    if os.environ.get("RANK", "0") == "0":
        lock.keep(cfg.output_dir)
    found = checkpoints(cfg.output_dir) if cfg.output_dir.is_dir() else []
    if resume and not found:
        raise CaiError(f"--resume: no checkpoint to continue from in {cfg.output_dir} (a "
                       "checkpoint-N counts once its save has finished)")
    if resume:
        resume_rules.check_config(cfg, RESOLVED)
    elif (cfg.output_dir / resume_rules.FINISHED).is_file():
        raise CaiError(f"{cfg.output_dir}: holds a finished run ({resume_rules.FINISHED}); pass "
                       "--overwrite to train anew there, --resume with a larger "
                       "training.max_steps to continue it, or choose another "
                       "--training.output_dir")
    elif found:
        raise CaiError(f"{cfg.output_dir}: holds checkpoints of an earlier run; pass --resume to "
                       "continue it, or choose another --training.output_dir")


def run(trainer, cfg: TrainConfig, resume: bool) -> dict:
    """Train (or continue), save the final model/adapter, tokenizer and state; return metrics."""
    if trainer.args.process_index == 0:
        save_resolved(cfg, cfg.output_dir)
    last = checkpoints(cfg.output_dir)[-1] if resume else None  # the newest whole one
    if last and 0 < trainer.args.max_steps <= resume_rules.steps_done(last):
        return resume_rules.finish_from(last, trainer)  # killed after its last step's save
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    seconds = time.perf_counter() - start
    trainer.save_model(str(cfg.output_dir))
    trainer.save_state()
    metrics = dict(result.metrics)
    count = torch.as_tensor(getattr(trainer, "tokens_seen", 0)).to(trainer.args.device, torch.long)
    tokens = int(trainer.accelerator.reduce(count, reduction="sum").item())  # all processes
    if tokens:
        metrics["train_tokens"] = tokens
        metrics["train_tokens_per_second"] = round(tokens / max(seconds, 1e-9), 2)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    return metrics


def accepts_logits_to_keep(model) -> bool:
    """Whether `model(..., logits_to_keep=MASK)` takes a (B, T) boolean mask: the model's
    forward has the argument and transformers slices with masks (5.2x; 5.19 and older index
    with the mask as if it were positions and fail)."""
    import inspect

    import transformers.modeling_utils

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters and \
        hasattr(transformers.modeling_utils, "slice_logits_to_keep")


class NullWriter:
    """A metrics writer that writes nothing, so a loop never branches on logging."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


def metrics_writer(args, folder: Path):
    """A tensorboard `SummaryWriter` on `folder` when `training.report_to` names tensorboard,
    else a `NullWriter` (for loops outside `Trainer`, like PPO's)."""
    reporters = args.report_to if isinstance(args.report_to, list) else [args.report_to]
    if "tensorboard" in reporters:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(folder))
    return NullWriter()
