"""What the trainer benchmarks share (benchmarks/sft.py, benchmarks/dpo.py): cai and TRL each
train in a process of their own (so peak memory is its own), alternating `--repeats` times, and
each side's best run is kept; a step timer times the optimizer steps after `--warmup` and sums
what each timed step's batch held.

A benchmark script defines its data, `run_cai` and `run_trl`, and its summary; the child
process prints one `BENCH {json}` line that the parent reads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class StepTimer:
    """Times optimizer steps after the warmup and keeps what `measure(batch)` counts of each
    batch (a dict of counts, e.g. real tokens)."""

    def __init__(self, warmup: int, measure):
        self.warmup, self.measure, self.batches = warmup, measure, []
        self.start = self.end = self.cpu_start = self.cpu_end = None

    def count(self, batch: dict) -> dict:
        self.batches.append(self.measure(batch))
        return batch

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _Timer(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == timer.warmup:
                    timer.start, timer.cpu_start = time.perf_counter(), time.process_time()
                timer.end, timer.cpu_end = time.perf_counter(), time.process_time()

        return _Timer()

    def totals(self, steps: int) -> tuple[dict, float, float]:
        """(each count summed over the timed steps, their wall seconds, their CPU seconds).

        CPU seconds (all threads of this process) barely move when other jobs share the machine;
        wall seconds do. One batch per step (no accumulation)."""
        timed = self.batches[self.warmup:steps]
        sums = {k: sum(b[k] for b in timed) for k in (timed[0] if timed else {})}
        return sums, self.end - self.start, self.cpu_end - self.cpu_start


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The options both trainers take alike."""
    p.add_argument("--warmup", type=int, default=2, help="steps not timed")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--gradient-checkpointing", action="store_true", help="on for both")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for both")


def add_repeat_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=1, help="alternate cai/TRL runs; best kept")
    p.add_argument("--child", choices=["cai", "trl"], help=argparse.SUPPRESS)


def child(opts, records, runners: dict) -> None:
    """Run side `opts.child` (`runners[side](opts, records, folder)`) in a temporary folder and
    print its result, with the total time and peak memory, as the `BENCH` line."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = runners[opts.child](opts, records, Path(tmp))
        result["total_seconds"] = round(time.perf_counter() - start, 2)
    result["peak_memory_mb"] = peak_memory_mb()
    print("BENCH " + json.dumps(result), flush=True)


def best_runs(opts, script: str, metric: str) -> dict[str, dict]:
    """{side: its best result by `metric`} of `opts.repeats` alternating cai and TRL runs of
    `script`, each a child process with the same options."""
    best: dict[str, dict] = {}
    for _ in range(opts.repeats):
        for name in ("cai", "trl"):
            cmd = [sys.executable, script, "--child", name]
            for key, value in vars(opts).items():
                if key in ("child", "repeats") or value is None or value is False:
                    continue
                cmd += ["--" + key.replace("_", "-")] + ([] if value is True else [str(value)])
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONWARNINGS": "ignore",
                                    "TOKENIZERS_PARALLELISM": "false"})
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("BENCH ")]
            if r.returncode or not lines:
                raise SystemExit(f"{name} run failed:\n{r.stderr[-3000:]}")
            result = json.loads(lines[-1][6:])
            if name not in best or result[metric] > best[name][metric]:
                best[name] = result
    return best


def device() -> str:
    import platform

    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"cpu ({os.cpu_count()} cores, {platform.machine()})"
