"""What a `cai train` run may continue from, and with which settings.

- A checkpoint counts once it is whole: the Trainer writes `trainer_state.json` last, and PPO
  renames a finished `checkpoint-N` into place with its `ppo_state.json`. A kill during a save
  leaves a folder without them, which resume skips for the newest whole one.
- `--resume` continues the run its folder holds, so the settings that shaped the steps taken
  so far must be the ones saved in its `cai_config.yaml`. Only how long it runs and how often it
  logs, saves and evaluates may change (`RESUMABLE`); anything else is refused, by name.
- A finished run (`train_results.json`) is not trained over unless `--overwrite` asks for it.
- A run killed after its last checkpoint but before its final save is finished from that
  checkpoint without another step (`finish_from`): the Trainer, resumed at `global_step ==
  max_steps` in the middle of an epoch, would train one step more than an uninterrupted run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from cai.foundation.errors import CaiError

FINISHED = "train_results.json"
RESUMABLE = {
    "training.output_dir", "training.max_steps", "training.num_train_epochs",
    "training.logging_steps", "training.logging_strategy", "training.logging_first_step",
    "training.save_steps", "training.save_strategy", "training.save_total_limit",
    "training.eval_steps", "training.eval_strategy", "training.eval_on_start",
    "training.report_to", "training.disable_tqdm", "training.run_name",
    "ppo.eval_every",
}
RUN_FILES = (FINISHED, "all_results.json", "eval_results.json", "trainer_state.json",
             "metrics.jsonl", "ppo_state.json")


CHECKPOINT_ONLY = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin")


def steps_done(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def finish_from(checkpoint: Path, trainer) -> dict:
    """Make `checkpoint` (a whole one at the last step) the run's final output, as the end of
    an uninterrupted run writes it: the model or adapter files, the tokenizer and the trainer
    state; returns the train metrics (mean logged loss, steps, epoch)."""
    out = Path(trainer.args.output_dir)
    for f in checkpoint.iterdir():
        if f.is_file() and f.name not in CHECKPOINT_ONLY and not f.name.startswith("rng_state"):
            shutil.copy2(f, out / f.name)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    metrics = {"train_loss": sum(losses) / len(losses) if losses else float("nan"),
               "epoch": state.get("epoch"), "global_step": state["global_step"],
               "finished_from": checkpoint.name}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    return metrics


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / "trainer_state.json").is_file() or \
        (checkpoint / "ppo_state.json").is_file()


def checkpoints(folder: Path) -> list[Path]:
    """The whole `checkpoint-N` folders in `folder`, oldest first."""
    found = [p for p in Path(folder).glob("checkpoint-*")
             if re.fullmatch(r"checkpoint-\d+", p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(saved: dict, current: dict) -> list[str]:
    """The `section.key`s whose values differ between two resolved configs, outside
    `RESUMABLE`."""
    a, b = _flat(saved), _flat(current)
    return sorted(k for k in a.keys() | b.keys() if k not in RESUMABLE and a.get(k) != b.get(k))


def check_config(cfg, resolved_name: str) -> None:
    """A one-line error when `--resume` would continue under other settings than the run's."""
    path = cfg.output_dir / resolved_name
    if not path.is_file():
        return  # a run from before configs were saved: nothing to compare with
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise CaiError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); cannot tell what "
                       "the run was trained with") from None
    # the current config through the same YAML round trip as the saved one
    current = yaml.safe_load(yaml.safe_dump(cfg.as_dict(), sort_keys=False))
    changed = changed_keys(saved, current)
    if changed:
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6
                                          else "")
        raise CaiError(f"--resume: {shown} differ from the run in {cfg.output_dir} (see "
                       f"{path}); only max_steps, epochs and the logging, saving and eval "
                       "cadence may change when resuming; train into another "
                       "--training.output_dir")


def clear_run(folder: Path) -> None:
    """`--overwrite`: remove a previous run's checkpoints and results from `folder` (caches
    keyed by their inputs, like DPO's reference log-probs, stay)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.glob("checkpoint-*"):
        if re.fullmatch(r"checkpoint-\d+", p.name):
            shutil.rmtree(p)
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
