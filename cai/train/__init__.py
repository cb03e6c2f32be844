"""Training: losses, data, and the trainers built on `transformers.Trainer`: `sft`, `dpo`, `rm`
(the preference model) and `ppo/` (the hand-written PPO/RLOO/GRPO loop; `grpo` is that loop with
GRPO's defaults), each with a `load_config(path, overrides)` and a `train(cfg, resume)`;
`export` merges an adapter.

Nothing is imported at load time, so `cai.train.losses` loads with torch alone and
`cai.train.config` with no torch at all.
"""

ALGORITHMS = ("sft", "dpo", "rm", "ppo", "rs", "grpo")


def trainer(algo: str):
    """The module of `cai train ALGO` (its `load_config` and `train`), imported now."""
    if algo == "sft":
        from cai.train import sft as module
    elif algo == "dpo":
        from cai.train import dpo as module
    elif algo == "rm":
        from cai.train import rm as module
    elif algo == "ppo":
        from cai.train.ppo import loop as module
    elif algo == "grpo":
        from cai.train.ppo import grpo as module
    elif algo == "rs":
        from cai.train import rs as module
    else:
        raise ValueError(f"no trainer '{algo}' (choose from {', '.join(ALGORITHMS)})")
    return module
