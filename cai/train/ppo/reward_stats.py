"""PPO's reward normalization: the shift and scale of the starting policy's scores.

Ziegler et al. 2019 (arXiv:1909.08593, section 2.2) normalize the reward model's output to mean 0
and variance 1 over samples of the initial policy, and keep those statistics for the whole run.
Estimating them from the first rollout batch (8-16 answers) makes every later reward depend on
that batch's luck; a dedicated pass of a few hundred answers does not. The pass is cached in the
run folder, like DPO's reference log-probs, so a rerun or a resume reads it back.
"""

from __future__ import annotations

import hashlib
import json
import random

import torch
from tqdm.auto import tqdm

from cai.foundation import records

FILE = "reward_stats.json"


def estimate(trainer) -> dict:
    """The reward's shift and scale: mean and std of the scores of `reward_stats_samples`
    answers of the starting policy (the adapter disabled), to the training prompts in a
    seeded cycle (Ziegler et al. 2019: normalized over the initial policy's samples, then
    fixed). Saved in output_dir/reward_stats.json under a key of what they depend on, and
    read back from there by a rerun."""
    from cai.foundation.model_store import fingerprint

    opts, n = trainer.opts, trainer.opts.reward_stats_samples
    if opts.classifier:  # its heads (and backbone name) and the parts' weights
        weights = json.dumps(opts.reward_weights, sort_keys=True)
        source = f"classifier:{fingerprint(opts.classifier)}:{weights}"
    else:
        source = fingerprint(opts.reward_model) if opts.reward_model else \
            opts.reward_function or f"labeler:{fingerprint(opts.labeler)}"
    key = hashlib.sha256(json.dumps([  # a retrained model in the same folder changes it
        fingerprint(trainer.cfg.model.name), source, opts.feedback_baseline, opts.max_new_tokens,
        opts.temperature, trainer.args.seed, n, [r["id"] for r in trainer.prompts]]).encode())
    key = key.hexdigest()[:16]
    path = trainer.cfg.output_dir / FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if saved.get("key") == key:
        trainer.log(f"reward normalization: from {path}")
        return saved
    order = random.Random(f"{trainer.args.seed}:reward-stats").sample(
        range(len(trainer.prompts)), len(trainer.prompts))
    prompts = [trainer.prompts[order[i % len(order)]] for i in range(n)]
    scores = []
    with tqdm(total=n, desc="reward normalization", unit="answer", dynamic_ncols=True) as bar:
        for start in range(0, n, trainer.batch):
            part = prompts[start:start + trainer.batch]
            keys = [f"stats:{start + j}:{r['id']}" for j, r in enumerate(part)]
            scores += trainer.answers(part, trainer.args.seed + 7_919 * (start + 1), keys,
                                      start_policy=True)[2].tolist()
            bar.update(len(part))
    values = torch.tensor(scores, dtype=torch.float64)
    std = values.std().item()
    stats = {"key": key, "samples": n, "mean": values.mean().item(), "std": std,
             "shift": values.mean().item(), "scale": std if std > 1e-6 else 1.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    records.atomic_write_text(path, json.dumps(stats, indent=1))
    trainer.log(f"reward normalization: shift {stats['shift']:.4f}, scale {stats['scale']:.4f} "
                f"from {n} answers of the starting policy")
    return stats

