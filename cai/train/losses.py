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
