"""Loss functions: pure tensor code, importing only torch.

Conventions shared by every trainer: `labels` use -100 (`IGNORE_INDEX`) for positions that are
not targets; `logits` and `labels` passed to a loss are already aligned (the logit at a position
scores the label at the same position), so the one-token shift of causal LMs happens once, in
the trainer, before calling in. Per-token values come back with zeros where ignored; the one
reduction is `token_mean`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) for each position, 0 where the label is ignored.

    log p(y_t) = logits_t[y_t] - logsumexp(logits_t), computed in float32.

    Shape:
        logits: (..., V), any leading shape (e.g. (B, T, V), or (N, V) for kept positions only)
        labels: (...), token ids, IGNORE_INDEX where there is no target
        returns: (...) float32
    """
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), safe.reshape(-1),
                          reduction="none").view(labels.shape)  # fused log_softmax + gather
    return -nll * mask


def token_mean(values: torch.Tensor, mask: torch.Tensor,
               num_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """sum(values * mask) / N, with N = `num_items` when given, else mask.sum() (at least 1).

    This is the "token-mean" reduction: every target token in the batch weighs the same,
    whatever the length of the example it belongs to. Passing `num_items` = the number of target
    tokens in the whole optimizer step (all gradient-accumulation micro-batches, all processes)
    makes the sum of micro-batch losses equal the loss of the whole step, so gradient
    accumulation 8x1 equals 1x8 and N processes equal one.

    Shape: values (...), mask (...) bool; returns a scalar.
    """
    total = (values * mask).sum()
    if num_items is None:
        num_items = mask.sum().clamp(min=1)
    return total / num_items


def sft_loss(logits: torch.Tensor, labels: torch.Tensor,
             num_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """Masked negative log-likelihood, token-mean (supervised fine-tuning).

        L = -(1 / N) * sum_{t : y_t != -100} log p(y_t | y_<t)

    where the sum runs over target tokens only (the assistant turns; prompts, system text and
    padding carry -100) and N is the number of target tokens (see `token_mean` for why N can be
    the count over the whole optimizer step rather than this batch). Sequence-mean weighting,
    where each example counts the same whatever its length, is *not* what this computes.

    Shape:
        logits: (..., V) aligned with labels (already shifted for a causal LM)
        labels: (...) token ids or -100
        num_items: scalar or None
        returns: scalar
    """
    return token_mean(-token_logps(logits, labels), labels != IGNORE_INDEX, num_items)


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Full-vocabulary KL of the next-token distributions, per position: forward (the default)
    or reverse.

        forward  KL_t(ref || policy) = sum_v p_ref(v) * (log p_ref(v) - log p(v))
        reverse  KL_t(policy || ref) = sum_v p(v)     * (log p(v) - log p_ref(v))

    with every p(v) the next-token probability given y_<t.

    The forward gradient is the soft cross-entropy -sum_v p_ref(v) grad log p(v): it pulls the
    policy's whole distribution back toward the reference's, where the NLL of a sampled or
    greedy token would sharpen it (self-distillation with soft targets, Hinton et al. 2015,
    arXiv:1503.02531). It is mass-covering: a token the policy has come to favour where the
    reference gives it almost nothing costs only the mass it took from the others (about
    -log(1 - q) for mass q). The reverse direction charges that token q log(q / p_ref), so it
    pushes back much harder on a new mode, such as a refusal leaking onto benign prompts; it is
    the direction of the KL penalty in RLHF (Ziegler et al. 2019, arXiv:1909.08593). `cai train
    sft` adds either with `sft.kl_coef` (`sft.kl_direction`), computed exactly over the
    vocabulary instead of sampled.

    Shape:
        logits, ref_logits: (..., V), the same positions (already shifted)
        returns: (...) float32, >= 0
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    if reverse:
        return (logp.exp() * (logp - ref_logp)).sum(-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


# --------------------------------------------------------------------------------------------
# Preference losses: DPO family and Bradley-Terry
#
# A soft target t = P(chosen is better) (the AI label of `cai label`) turns any pairwise loss
# L(z) into its expectation over a label drawn from Bernoulli(t), where swapping chosen and
# rejected negates the margin z:  L_t(z) = t L(z) + (1 - t) L(-z).  t = 1 is the hard loss;
# t = 1/2 is symmetric in z, so its gradient at z = 0 is zero. For the sigmoid loss this is the
# cross-entropy -t log s(bz) - (1-t) log s(-bz) (conservative DPO, Mitchell 2023, with a
# per-example t).


def _sigmoid_loss(z: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return -F.logsigmoid(beta * z)


def _hinge_loss(z: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return torch.relu(1 - beta * z)


def _ipo_loss(z: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return (z - 1 / (2 * beta)) ** 2


def _robust_loss(z: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return (-(1 - eps) * F.logsigmoid(beta * z) + eps * F.logsigmoid(-beta * z)) / (1 - 2 * eps)


DPO_LOSSES = {"sigmoid": _sigmoid_loss, "hinge": _hinge_loss, "ipo": _ipo_loss,
              "robust": _robust_loss}


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", target: torch.Tensor | None = None, *,
             label_smoothing: float = 0.0, chosen_lengths: torch.Tensor | None = None,
             rejected_lengths: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct preference optimization and its variants, per example.

    With the log-ratios  d_c = log pi(y_c) - log ref(y_c),  d_r = log pi(y_r) - log ref(y_r)
    (sequence log-probs: sums over the completion tokens) and the margin z = d_c - d_r:

        sigmoid  -log s(beta z)                        Rafailov et al. 2023 (arXiv:2305.18290) Eq. 7
        hinge    max(0, 1 - beta z)                    SLiC-HF, Zhao et al. 2023 (arXiv:2305.10425),
                                                       its calibration loss with margin 1/beta,
                                                       on the log-ratios as in TRL
        ipo      (z' - 1 / (2 beta))^2,  z' = d_c / |y_c| - d_r / |y_r|
                                                       Azar et al. 2023 (arXiv:2310.12036) Eq. 17
        robust   [-(1-e) log s(beta z) + e log s(-beta z)] / (1 - 2e)
                                                       Chowdhury et al. 2024 (arXiv:2403.00409),
                                                       e = `label_smoothing`, the label-flip rate

    IPO uses log-ratios averaged per completion token (|y| = `chosen_lengths`,
    `rejected_lengths`, required for "ipo"), as TRL does (TRL reports that the paper's results
    used this form); with lengths of 1 it is Eq. 17 on summed log-probs. `target` is
    the soft label t = P(chosen better) (None means 1): the loss becomes
    t L(z) + (1 - t) L(-z), the expected loss under a label drawn with probability t (see above).

    The implicit rewards (Rafailov et al. 2023, section 5) are beta * d_c and beta * d_r, from
    the summed log-probs for every loss type, detached (they are for logging).

    Shape:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: (B,)
        target, chosen_lengths, rejected_lengths: (B,) or None
        returns: (losses (B,), chosen_rewards (B,), rejected_rewards (B,))
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"loss_type must be one of {', '.join(DPO_LOSSES)}, got {loss_type!r}")
    if loss_type == "robust" and not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps        # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    if loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("the ipo loss needs chosen_lengths and rejected_lengths (completion "
                             "token counts) to average the log-ratios per token")
        z = chosen_logratios / chosen_lengths.clamp(min=1) \
            - rejected_logratios / rejected_lengths.clamp(min=1)
    else:
        z = chosen_logratios - rejected_logratios
    hard = DPO_LOSSES[loss_type]
    losses = hard(z, beta, label_smoothing)
    if target is not None:
        losses = target * losses + (1 - target) * hard(-z, beta, label_smoothing)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def preference_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                    target: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry loss of a preference (reward) model, per example, with soft targets.

        L = -t log s(r_c - r_r) - (1 - t) log s(r_r - r_c)

    where r_c, r_r are the model's scalar scores of the chosen and rejected responses and t the
    soft label P(chosen better) (None means 1, the usual -log s(r_c - r_r)). Bradley & Terry
    1952; Ouyang et al. 2022 (arXiv:2203.02155) Eq. 1; Bai et al. 2022 (arXiv:2212.08073)
    section 4.1 train the preference model on the AI labels' soft probabilities.

    Shape: chosen_scores, rejected_scores, target: (B,); returns (B,)
    """
    margin = chosen_scores - rejected_scores  # (B,)
    if target is None:
        return -F.logsigmoid(margin)
    return -target * F.logsigmoid(margin) - (1 - target) * F.logsigmoid(-margin)


# --------------------------------------------------------------------------------------------
# PPO and critic-free policy gradients (RL-CAI)
#
# Rollout tensors are (B, T) over the *response* tokens only, right-padded: `mask` is True on
# the tokens the policy produced (up to and including EOS) and False after. Log-probs are of
# the sampled tokens, computed from logits divided by the sampling temperature.


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(values * mask) / max(sum(mask), 1). Shape: values (...), mask (...) bool; scalar."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Normalize `values` to zero mean and unit variance over the positions where `mask` holds.

        w = (x - mean) / sqrt(var + eps)       (shift_mean=False adds the mean back: only
                                                 the scale changes, as for rewards)

    mean and the (Bessel-corrected) variance are taken over masked positions only; masked-out
    positions come back as 0. Used on GAE advantages before the policy loss (Huang et al. 2023).

    Shape: values (...), mask (...) bool; returns (...)
    """
    mean = masked_mean(values, mask)
    n = mask.sum()
    var = (((values - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi (Schulman 2020).

    With the log-ratio  l = log pi(y_t) - log ref(y_t):
        k1 = l                      unbiased, high variance, can be negative per token
        k2 = l^2 / 2                biased (low for small l), always >= 0
        k3 = exp(-l) - 1 + l        unbiased (E_pi[exp(-l)] = 1), always >= 0, low variance
    Summed over a response, each estimates the sequence KL; their expectations under pi agree
    for k1 and k3 exactly.

    Shape: logps, ref_logps (B, T); returns (B, T) (mask it yourself).
    """
    log_ratio = logps - ref_logps
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator must be k1, k2 or k3, got {kind!r}")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

        delta_t = r_t + gamma V_{t+1} - V_t        (V_{t+1} = 0 after the last response token)
        A_t     = delta_t + gamma lam A_{t+1}
        G_t     = A_t + V_t                         (the value targets, "returns")

    computed backwards over each row; positions where `mask` is False are outside the episode
    (contribute nothing and come back as 0). `rewards` holds the per-token reward (the KL
    penalty on every token plus the score on the last one).

    Shape: rewards, values (B, T), mask (B, T) bool (a prefix of each row);
           returns (advantages (B, T), returns (B, T))
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = adv
        next_value, next_adv = values[:, t], adv  # both 0 past a row's end
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347 Eq. 7), as a loss.

        rho_t = exp(log pi(y_t) - log pi_old(y_t))
        L     = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - clip, 1 + clip))

    token-mean over masked positions. Also returned (detached): `clip_frac`, the share of tokens
    where the clipped term was the larger, and `approx_kl` = mean (rho - 1) - log rho, the k3
    estimate of KL(pi_old || pi), which shows how far a minibatch update moved the policy.

    Shape: logps, old_logps, advantages (B, T), mask (B, T) bool; returns (scalar, stats)
    """
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask)}
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, dict]:
    """Clipped value loss (the PPO baselines' form; Huang et al. 2023 detail 9).

        V_clip = V_old + clip(V - V_old, -clip, +clip)
        L      = 0.5 mean_t max((V_t - G_t)^2, (V_clip_t - G_t)^2)

    token-mean over masked positions; `clip_frac` (detached) is the share of tokens where the
    clipped error was the larger.

    Shape: values, old_values, returns (B, T), mask (B, T) bool; returns (scalar, stats)
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((err_clipped > err).float(), mask)}
    return loss, stats


def _group_centred(rewards: torch.Tensor, name: str) -> torch.Tensor:
    """r_i - mean_j r_j within each prompt's group of k samples: the one baseline that RLOO and
    GRPO both start from. Shape: rewards (P, k), k >= 2; returns (P, k)."""
    if rewards.size(-1) < 2:
        raise ValueError(f"{name} needs at least 2 samples per prompt")
    return rewards - rewards.mean(-1, keepdim=True)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024).

        A_i = R_i - (1 / (k - 1)) sum_{j != i} R_j = (k / (k - 1)) (R_i - mean_j R_j)

    for the k samples of one prompt; a sequence-level advantage, no critic. Computed as the
    right-hand form: the group-centred rewards, rescaled (`_group_centred`, shared with GRPO).

    Shape: rewards (P, k) with k >= 2 samples per prompt; returns (P, k)
    """
    k = rewards.size(-1)
    return _group_centred(rewards, "rloo") * (k / (k - 1))  # raises first when k < 2


def grpo_advantages(rewards: torch.Tensor, scale_by_std: bool = True,
                    eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages (GRPO: Shao et al. 2024, arXiv:2402.03300, section 4.1.2).

        A_i = (R_i - mean_j R_j) / (std_j R_j + eps)      scale_by_std (GRPO)
        A_i =  R_i - mean_j R_j                           otherwise (Dr. GRPO: Liu et al. 2025,
                                                          arXiv:2503.20783)

    over the k samples of one prompt; std is the Bessel-corrected standard deviation of the
    group (as TRL computes it), and a group whose rewards are all equal gets 0 everywhere.
    Dividing by the group's std weights prompts whose answers barely differ (nearly all right
    or all wrong) as much as the others, the per-question bias Dr. GRPO removes; without it the
    advantage is RLOO's up to the factor (k - 1) / k. A sequence-level advantage, no critic.

    Shape: rewards (P, k) with k >= 2 samples per prompt; returns (P, k)
    """
    centred = _group_centred(rewards, "grpo")
    if not scale_by_std:
        return centred
    return centred / (rewards.std(-1, keepdim=True) + eps)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax at each position: H = logsumexp(z) - sum softmax(z) z.

    Shape: logits (..., V); returns (...) float32
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al. 2019 (arXiv:1909.08593) adaptive KL coefficient, one update.

        e     = clip(KL / target - 1, -0.2, 0.2)
        beta <- beta (1 + e n / horizon)

    where KL is the measured mean sequence KL of the rollout batch and n its number of
    samples: beta grows when the policy drifts past the target and shrinks below it.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_steps / horizon)
