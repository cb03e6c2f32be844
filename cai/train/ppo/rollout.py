"""PPO rollouts: answers sampled by the policy, and the per-token tensors the update needs.

A rollout batch holds B samples (prompt, answer). Its tensors are over the *answer* tokens only,
(B, R), right-padded to the longest answer R: `mask` is True on the tokens the policy produced,
up to and including its end-of-sequence token (an answer that never ends has none). For a
forward pass the prompts are left-padded to a common width P and the answers right-padded after
them, `[pad.. prompt | answer ..pad]`, with position ids counting real tokens only, so the
logits at the R positions P-1 .. P+R-2 predict the answer's tokens and only those go through the
LM head (`logits_to_keep`). Logits are divided by the sampling temperature before any log-prob
(Huang et al. 2023: the log-probs must be those of the distribution that was sampled).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from cai.train.losses import IGNORE_INDEX, entropy_from_logits, token_logps


@dataclass
class Rollout:
    """B sampled answers and what PPO computes about them; tensors are (B, R)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    ended: torch.Tensor                     # (B,) bool: the answer ended with end-of-sequence
    tokens: torch.Tensor                    # (B, R) answer ids, IGNORE_INDEX past the end
    mask: torch.Tensor                      # (B, R) bool
    logps: torch.Tensor | None = None       # (B, R) policy at sampling time
    ref_logps: torch.Tensor | None = None   # (B, R) reference (adapter disabled)
    values: torch.Tensor | None = None      # (B, R) value head at sampling time
    entropy: torch.Tensor | None = None     # (B, R) policy entropy per position
    hidden: torch.Tensor | None = None      # (B, R, H) the critic's features, when kept

    @classmethod
    def build(cls, prompt_ids: list[list[int]], response_ids: list[list[int]],
              eos_ids: list[int]) -> Rollout:
        width = max(len(r) for r in response_ids)
        tokens = torch.full((len(response_ids), width), IGNORE_INDEX, dtype=torch.long)
        for row, ids in enumerate(response_ids):
            tokens[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        ended = torch.tensor([bool(r) and r[-1] in eos_ids for r in response_ids])
        return cls(prompt_ids, response_ids, ended, tokens, tokens != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.response_ids)


def model_inputs(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                 device) -> tuple[dict, int]:
    """(forward kwargs, R) for `[pad.. prompt | answer ..pad]` rows.

    input_ids, attention_mask, position_ids: (b, P + R), P the longest prompt, R the longest
    answer of these rows.
    """
    width_p = max(len(p) for p in prompt_ids)
    width_r = max(len(r) for r in response_ids)
    ids = torch.full((len(prompt_ids), width_p + width_r), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[row, width_p - len(p):width_p + len(r)] = torch.tensor(p + r, dtype=torch.long)
        mask[row, width_p - len(p):width_p + len(r)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding shifts no position
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
              "position_ids": positions.to(device)}
    return inputs, width_r


def answer_forward(model, value_head, inputs: dict, width_r: int, temperature: float,
                   keep_logits: bool = True, keep_hidden: bool = False):
    """(logits (b, R, V) float32 divided by `temperature`, values (b, R) or None, hidden
    (b, R, H) or None).

    The value of answer position t is the value head on the last hidden state (after the final
    norm) at the position that predicts token t, i.e. of the state prompt + answer[:t];
    `keep_hidden` also returns those states (the critic's features, `cai.train.ppo.critic`).
    """
    kwargs = {"logits_to_keep": width_r + 1} if keep_logits else {}
    want_hidden = value_head is not None or keep_hidden
    out = model(**inputs, use_cache=False, output_hidden_states=want_hidden, **kwargs)
    logits = out.logits[:, -(width_r + 1):-1].float() / temperature           # (b, R, V)
    values = hidden = None
    if want_hidden:
        hidden = out.hidden_states[-1][:, -(width_r + 1):-1]                    # (b, R, H)
    if value_head is not None:
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()  # (b, R)
    return logits, values, hidden.float() if keep_hidden else None


@torch.no_grad()
def score_tokens(model, value_head, rollout: Rollout, pad_id: int, device, temperature: float,
                 batch_size: int, autocast, keep_logits: bool = True, reference: bool = False,
                 keep_hidden: bool = False):
    """Fill the rollout's sampling-time tensors: with `reference`, `ref_logps` (the caller has
    disabled the adapter); otherwise `logps`, `entropy`, (with a value head) `values` and (with
    `keep_hidden`) `hidden`."""
    out = {k: torch.zeros(rollout.mask.shape) for k in ("logps", "entropy", "values")}
    hidden = []
    for start in range(0, len(rollout), batch_size):
        rows = slice(start, start + batch_size)
        inputs, width = model_inputs(rollout.prompt_ids[rows], rollout.response_ids[rows],
                                     pad_id, device)
        with autocast():
            logits, values, states = answer_forward(model, None if reference else value_head,
                                                    inputs, width, temperature, keep_logits,
                                                    keep_hidden and not reference)
        out["logps"][rows, :width] = token_logps(logits, rollout.tokens[rows, :width]
                                                 .to(logits.device)).cpu()
        if not reference:
            out["entropy"][rows, :width] = entropy_from_logits(logits).cpu()
            if values is not None:
                out["values"][rows, :width] = values.cpu()
            if states is not None:
                pad = rollout.mask.size(1) - width  # to the batch's longest answer
                hidden.append(torch.nn.functional.pad(states.cpu(), (0, 0, 0, pad)))
    mask = rollout.mask
    if reference:
        rollout.ref_logps = out["logps"] * mask
    else:
        rollout.logps, rollout.entropy = out["logps"] * mask, out["entropy"] * mask
        rollout.values = out["values"] * mask if value_head is not None else None
        if hidden:
            rollout.hidden = torch.cat(hidden) * mask[..., None]
    return rollout


def step_prompts(prompts: list[dict], step: int, per_step: int, seed: int) -> list[dict]:
    """The prompts of step `step` (0-based): consecutive slices of seeded permutations of the
    prompt set, one permutation per pass, so every prompt comes once per pass."""
    n, out = len(prompts), []
    for i in range(step * per_step, (step + 1) * per_step):
        order = random.Random(f"{seed}:pass:{i // n}").sample(range(n), n)
        out.append(prompts[order[i % n]])
    return out
