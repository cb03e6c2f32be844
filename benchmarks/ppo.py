"""Benchmark: where a `cai train ppo` step spends its time (generation, scoring, training).

Runs `--steps` PPO steps of `PPOTrainer` on the embedded model (LoRA, `--prompts-per-step`
red-team prompts from data/red_team.jsonl, `--max-new-tokens`, `--ppo-epochs` passes of
minibatches of `--batch` answers) against a preference model, and reports for the steps after
`--warmup` the mean seconds per step of each phase and its share:

- generation: sampling the answers (`HFGenerator.generate_ids` on the policy, KV cache on);
- scoring: the reward source (the preference model's forward over prompt + answer);
- training: the no-grad passes (policy log-probs, values, reference log-probs with the adapter
  disabled) plus the PPO epochs (forward + backward + optimizer).

The preference model is `--reward-model DIR` (a `cai train rm` folder), or by default an
untrained one built from the same base (a sequence classifier with a seeded head: the same
architecture and cost as a trained one). Prints one JSON summary.

    python benchmarks/ppo.py
    python benchmarks/ppo.py --reward-model runs/rm --steps 6 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fresh_reward_model(model: str, out: Path) -> Path:
    """An untrained classifier (one output, seeded head) on `model`, saved as a folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cai.foundation.model_store import resolve

    path = resolve(model)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1,
                                                            dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--reward-model", help="a `cai train rm` folder (default: an untrained one)")
    p.add_argument("--prompts", default=str(ROOT / "data" / "red_team.jsonl"))
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--ppo-epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=4, help="answers per minibatch")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1, help="steps not timed")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--advantage", default="gae", choices=["gae", "rloo"])
    opts = p.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from cai.train.ppo import loop as ppo

    with tempfile.TemporaryDirectory() as tmp:
        rm = opts.reward_model or fresh_reward_model(opts.model, Path(tmp) / "rm")
        samples = 2 if opts.advantage == "rloo" else 1
        cfg = ppo.load_config(None, [(k, str(v)) for k, v in {
            "model.name": opts.model, "model.dtype": opts.dtype, "data.path": opts.prompts,
            "lora.r": opts.lora_r, "lora.alpha": 2 * opts.lora_r, "lora.dropout": 0.0,
            "ppo.reward_model": rm, "ppo.prompts_per_step": opts.prompts_per_step // samples,
            "ppo.samples_per_prompt": samples, "ppo.advantage": opts.advantage,
            "ppo.max_new_tokens": opts.max_new_tokens, "ppo.ppo_epochs": opts.ppo_epochs,
            "training.output_dir": Path(tmp) / "run", "training.max_steps": opts.steps,
            "training.per_device_train_batch_size": opts.batch,
            "training.learning_rate": 1e-5, "training.save_strategy": "no",
            "training.report_to": "none", "training.seed": 0}.items()])
        start = time.perf_counter()
        trainer = ppo.PPOTrainer(cfg, log=lambda *_: None)
        setup = time.perf_counter() - start
        steps = []
        for n in range(opts.steps):
            begin, cpu = time.perf_counter(), time.process_time()
            m = trainer.step(n)
            m["wall"], m["cpu"] = time.perf_counter() - begin, time.process_time() - cpu
            steps.append(m)
    timed = steps[opts.warmup:]
    mean = {phase: sum(m[f"time/{phase}"] for m in timed) / len(timed)
            for phase in ("generation", "scoring", "training")}
    total = sum(mean.values())
    tokens = sum(m["response/length"] * opts.prompts_per_step for m in timed)
    summary = {
        "benchmark": "ppo", "model": opts.model, "dtype": opts.dtype,
        "reward_model": opts.reward_model or "untrained (same base)",
        "advantage": opts.advantage, "answers_per_step": opts.prompts_per_step,
        "max_new_tokens": opts.max_new_tokens, "ppo_epochs": opts.ppo_epochs,
        "minibatch": opts.batch, "lora_r": opts.lora_r, "steps": opts.steps,
        "timed_steps": len(timed),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else
        f"cpu ({os.cpu_count()} cores, {platform.machine()})",
        "setup_seconds": round(setup, 2),
        "seconds_per_step": round(sum(m["wall"] for m in timed) / len(timed), 2),
        "cpu_seconds_per_step": round(sum(m["cpu"] for m in timed) / len(timed), 2),
        "phase_seconds": {k: round(v, 2) for k, v in mean.items()},
        "phase_share": {k: round(v / total, 3) for k, v in mean.items()},
        "mean_answer_tokens": round(tokens / len(timed) / opts.prompts_per_step, 1),
        "generated_tokens_per_second": round(tokens / sum(m["time/generation"] for m in timed),
                                             1),
        "peak_memory_mb": peak_memory_mb(),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
