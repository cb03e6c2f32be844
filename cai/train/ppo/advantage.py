"""PPO's advantages, `ppo.advantage`: GAE with a critic, or one advantage per answer relative to
its prompt's group of `samples_per_prompt` answers (RLOO, GRPO), with no critic.

gae: per-token rewards -kl_coef KL_t plus the score on the last token; GAE with the rollout's
values (the value head fitted to the first rollout's returns before that, `value_warmup`); with
`whiten_advantages` whitened over the batch's answer tokens (shift and scale: Huang et al.
2023).

rloo and grpo: the sequence reward score - kl_coef sum_t KL_t, relative to the prompt's group,
the same advantage on every token of an answer (`cai.train.losses`: both start from the group's
centred rewards). rloo: the leave-one-out baseline; already centred per prompt, so
`whiten_advantages` only divides by their std over the answers (Ahmadian et al. 2024: no
token-level re-centring, which would weight long answers more and shift every advantage by a
batch-dependent baseline). grpo: minus the group's mean, over the group's std with
`scale_by_std` (Shao et al. 2024; without it Dr. GRPO, Liu et al. 2025); no further whitening.
"""

from __future__ import annotations

import torch

from cai.train.losses import gae, grpo_advantages, masked_whiten, rloo_advantages
from cai.train.ppo import critic


def compute(trainer, rollout, final: torch.Tensor, kl: torch.Tensor):
    """(advantages (B, R), returns (B, R) or None) of `trainer`'s rollout from the normalized
    scores `final` (B,) and the per-token KL estimates `kl` (B, R), answers prompt-major."""
    opts, mask = trainer.opts, rollout.mask
    if opts.advantage != "gae":
        sequence = final - trainer.kl_coef * kl.sum(-1)                           # (B,)
        return per_answer(sequence, opts)[:, None] * mask, None
    rewards_t = -trainer.kl_coef * kl                                               # (B, R)
    last = mask.sum(-1) - 1                                                         # (B,)
    rewards_t[torch.arange(len(rollout)), last] += final
    if not trainer.value_fitted:  # the critic's start (cai.train.ppo.critic)
        targets = critic.reward_to_go(rewards_t, mask, opts.gamma)
        rollout.values = critic.fit_head(trainer.value_head, rollout.hidden, targets, mask)
        trainer.value_fitted = True
        fit = critic.explained_variance(targets, rollout.values, mask)
        trainer.log(f"critic warm-up: the value head explains {fit:.2f} of the first "
                    "rollout's returns (in sample)" + (": its features hardly predict this "
                                                       "reward" if fit < 0.1 else ""))
    advantages, returns = gae(rewards_t, rollout.values, mask, opts.gamma, opts.lam)
    if opts.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return advantages, returns


def per_answer(sequence: torch.Tensor, opts) -> torch.Tensor:
    """rloo's or grpo's advantage of each answer (B,) from its sequence reward (B,), the
    `samples_per_prompt` answers of a prompt next to each other."""
    groups = sequence.view(-1, opts.samples_per_prompt)                             # (P, k)
    if opts.advantage == "grpo":  # scaled per group already, or (Dr. GRPO) not at all
        return grpo_advantages(groups, opts.scale_by_std).view(-1)
    out = rloo_advantages(groups).view(-1)
    if opts.whiten_advantages and len(out) > 1:
        out = out / (out.std() + 1e-8)
    return out
