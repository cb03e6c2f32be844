"""Temperature and nucleus (top-p) sampling, exact and cheap on a CPU.

transformers' sampler sorts the whole vocabulary for top-p and draws from a full softmax at
every step; for SmolLM2's 49k-token vocabulary and a batch of 16 that is about a third of a
decode step on 2 CPU cores (measured: 108 ms/step with top-p 0.95 against 71 ms greedy).
Here the nucleus is found among the `candidates` most likely tokens (a partial sort), which
holds it whenever those tokens carry at least `top_p` of the mass (rows where they do not fall
back to a full sort), and the draw is an exponential race: argmax_i (z_i - log E_i) with
E_i ~ Exp(1) picks token i with probability softmax(z)_i, with no normalization needed.

`SampleProcessor` plugs this into `model.generate` as a logits processor that returns a one-hot
of the drawn token, so generation runs in greedy mode and picks exactly the sampled token.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


def sample(logits: torch.Tensor, temperature: float, top_p: float = 1.0,
           candidates: int = 256, generators: list | None = None) -> torch.Tensor:
    """One token per row from softmax(logits / temperature) restricted to its top-p nucleus.

    The nucleus is the smallest set of most likely tokens whose probability reaches `top_p`
    (the token that crosses the threshold included), renormalized: the same distribution as
    transformers' TopPLogitsWarper (up to ties at the threshold).

    Shape: logits (B, V); returns (B,) token ids (long). Uses torch's global RNG, or with
    `generators` (one `torch.Generator` per row) each row's own, so a row's draw does not
    depend on the other rows of the batch.
    """
    z = logits.float() / temperature                                       # (B, V)
    if top_p >= 1.0:
        return _race(z, generators)
    k = min(candidates, z.size(-1))
    top, index = torch.topk(z, k, dim=-1)                                   # (B, k), descending
    probs = torch.exp(top - torch.logsumexp(z, dim=-1, keepdim=True))      # (B, k)
    before = probs.cumsum(-1) - probs                                       # mass above each token
    keep = before < top_p                                                   # (B, k), first is kept
    chosen = index.gather(-1, _race(top.masked_fill(~keep, -torch.inf), generators)[:, None])[:, 0]
    short = (probs.sum(-1) < top_p).nonzero()[:, 0]  # nucleus not inside the candidates
    if short.numel():
        full, order = torch.sort(z[short], descending=True, dim=-1)
        p = torch.softmax(full, dim=-1)
        keep = (p.cumsum(-1) - p) < top_p
        rows = None if generators is None else [generators[i] for i in short.tolist()]
        chosen[short] = order.gather(-1, _race(full.masked_fill(~keep, -torch.inf),
                                               rows)[:, None])[:, 0]
    return chosen


def _race(z: torch.Tensor, generators: list | None = None) -> torch.Tensor:
    """argmax(z - log E), E ~ Exp(1) i.i.d.: a draw from softmax(z) per row (-inf never wins);
    row i's noise comes from `generators[i]` when given."""
    if generators is None:
        e = torch.empty_like(z).exponential_()
    else:
        e = torch.stack([torch.empty_like(row).exponential_(generator=g)
                         for row, g in zip(z, generators)])
    return torch.argmax(z - torch.log(e), dim=-1)


class SampleProcessor(LogitsProcessor):
    """A `model.generate` logits processor (use with do_sample=False) that samples each step."""

    def __init__(self, temperature: float, top_p: float, generators: list | None = None):
        self.temperature, self.top_p, self.generators = temperature, top_p, generators

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        token = sample(scores, self.temperature, self.top_p, generators=self.generators)
        out = torch.full_like(scores, -torch.inf)
        out.scatter_(-1, token[:, None], 0.0)
        return out
