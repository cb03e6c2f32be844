"""`cai train grpo`: the PPO loop (`cai.train.ppo.loop`) with group-relative advantages.

GRPO (Shao et al. 2024, arXiv:2402.03300) drops PPO's critic: each prompt gets a group of
`samples_per_prompt` answers, and an answer's advantage is its reward minus the group's mean,
divided by the group's std (`cai.train.losses.grpo_advantages`; `scale_by_std: false` is
Dr. GRPO). Nothing else differs from `cai train ppo` with `ppo.advantage: grpo`: the config has
the same `ppo:` section, only its defaults are GRPO's (`GRPOSection`: advantage grpo, 4 answers
per prompt), and the run's folder is a PPO run's.
"""

from __future__ import annotations

from cai.train import config as train_config
from cai.train.config import TrainConfig
from cai.train.ppo.config import GRPOSection


def load_config(path: str | None, overrides: list[tuple[str, str]]) -> TrainConfig:
    return train_config.load(path, overrides, "grpo", GRPOSection, section="ppo")


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run `cai train grpo` from a resolved config; returns the final metrics."""
    from cai.train.ppo import loop

    return loop.train(cfg, resume)
