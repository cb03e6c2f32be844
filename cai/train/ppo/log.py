"""The log of a `cai train ppo` run: one JSON line per step and per evaluation in
OUTPUT/metrics.jsonl, the same values to TensorBoard (when `report_to` has it), and the printed
line of each.

A resumed run keeps the lines up to its checkpoint's step and drops the rest: those written by
the killed run after it, and a line the kill tore in half.
"""

from __future__ import annotations

import json
from pathlib import Path

from cai.train import common

METRICS = "metrics.jsonl"


class RunLog:
    def __init__(self, args, out: Path, resume_step: int | None = None):
        self.file = out / METRICS
        if resume_step is not None:
            lines = self.file.read_text().splitlines() if self.file.is_file() else []
            kept = [line for line in lines
                    if (step := _step_of(line)) is not None and step <= resume_step]
            self.file.write_text("".join(line + "\n" for line in kept))
        elif self.file.exists():
            self.file.unlink()
        self.writer = common.metrics_writer(args, out / "runs")

    def record(self, row: dict) -> None:
        with open(self.file, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.writer.close()


def step_line(m: dict, max_steps: int) -> str:
    return (f"step {m['step']}/{max_steps}  reward {m['reward/mean']:.3f} "
            f"(std {m['reward/std']:.3f})  kl {m['kl']:.3f}  entropy {m['entropy']:.2f}  "
            f"clip {m.get('policy/clip_frac', 0):.3f}  len {m['response/length']:.1f}  "
            f"gen {m['time/generation']:.1f}s  score {m['time/scoring']:.1f}s  "
            f"train {m['time/training']:.1f}s")


def eval_line(m: dict) -> str:
    return (f"eval at step {m['step']}: reward {m['eval/reward_mean']:.3f} "
            f"(std {m['eval/reward_std']:.3f})  kl {m['eval/kl']:.3f}  "
            f"len {m['eval/response_length']:.1f}")


def _step_of(line: str) -> int | None:
    """The step of a metrics line, or None for a line a kill tore in half."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None
