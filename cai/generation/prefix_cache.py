"""Reuse of the key/value cache between consecutive `generate` calls of the hf engine.

The requests of one critique-revision chunk share long token prefixes from call to call: a
revision request is its critique request plus the generated critique plus a short instruction,
and the next round's critique request repeats the few-shot turns and the red-team prompt. The
engine keeps the cache of its last batch with the tokens each cached position holds; a new batch
whose sequences extend those tokens is fed only the new part.

The cache is rectangular, so rows reuse different amounts: a row's positions that are not part
of its reused prefix are masked out (attention mask 0), and its new tokens are left padded after
the kept columns. Position ids come from the attention mask's running sum, so every reused or new
token sits at the position it would have in a fresh forward pass; the result equals a fresh pass
up to floating-point rounding.

`plan_reuse` is the pure part (which cached row each sequence extends, how much of it, which
columns to keep); `PrefixCache` applies a plan to a transformers `DynamicCache`.

The cache's layers also write into a buffer with room to spare instead of concatenating:
transformers' `DynamicLayer` copies the whole cache at every decoding step (`torch.cat`), which
on a CPU with ~1000-token prompts cost as much as the rest of the step (batch 16, 1200 cached
tokens, bf16: 165 ms a step with concatenation, 94 ms with the buffer).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

from cai.foundation.model_store import pad_batch

INVALID = -1  # a cached position that holds no token of its row (padding, after end-of-sequence)


@dataclass
class ReusePlan:
    rows: list[int]          # the cached row each new sequence continues
    reused: list[int]        # how many leading tokens of each sequence the cache already holds
    keep: int                # cache columns kept (the rest are cropped)
    mask: list[list[int]]    # (batch, keep): 1 where a kept column is part of the reused prefix


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plan_reuse(cached: list[list[int]], sequences: list[list[int]], min_share: float = 0.5,
               min_tokens: int = 64) -> ReusePlan | None:
    """How `sequences` can continue the cached rows, or None when too little would be reused.

    `cached[r][j]` is the token at column j of cached row r, or INVALID. A sequence may reuse the
    longest run of its leading tokens that some row holds (in order, skipping invalid columns),
    always leaving its last token to be fed, since the next token's logits come from it. None
    when the reused tokens are under `min_share` of all the sequences' tokens (the masked columns
    a reuse brings would cost about what it saves) or under `min_tokens` a sequence on average
    (a shared chat-template system turn alone, about 30 tokens, is not worth it, and keeping
    reuse inside a job's chunk keeps resumed jobs exact).
    """
    if not cached or not sequences:
        return None
    valid = [[(j, t) for j, t in enumerate(row) if t != INVALID] for row in cached]
    tokens = [[t for _, t in row] for row in valid]
    rows, reused = [], []
    for seq in sequences:
        best, best_n, head = 0, -1, seq[:-1]
        for r, row in enumerate(tokens):
            n = _common_prefix(row, head)
            if n > best_n:
                best, best_n = r, n
        rows.append(best)
        reused.append(best_n)
    if sum(reused) < max(min_share * sum(len(s) for s in sequences), min_tokens * len(reused)):
        return None
    ends = [valid[r][n - 1][0] + 1 if n else 0 for r, n in zip(rows, reused)]
    keep = max(ends)
    mask = []
    for r, n in zip(rows, reused):
        used = {j for j, _ in valid[r][:n]}
        mask.append([1 if j in used else 0 for j in range(keep)])
    return ReusePlan(rows, reused, keep, mask)


def cache_kwarg() -> str:
    """The name `generate` takes a cache under: `cache` from transformers 5.2x, before that
    `past_key_values` (asked of transformers itself: a peft wrapper hides the signature)."""
    from transformers.generation.utils import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose update does not copy the cache at every step."""

    def update(self, key_states, value_states, *args, **kwargs):
        """DynamicLayer.update without the per-step copy: the keys and values are views of a buffer
        with room to spare, reallocated (half as large again) only when full or replaced."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2] if self.keys.numel() else 0
        new = key_states.shape[-2]
        buf = getattr(self, "_key_buffer", None)
        if not (buf is not None and n and self.keys.data_ptr() == buf.data_ptr()
                and buf.shape[:2] == key_states.shape[:2] and n + new <= buf.shape[-2]):
            room = n + new + max(256, (n + new) // 2)
            shape = (*key_states.shape[:2], room, key_states.shape[-1])
            keys, values = key_states.new_empty(shape), value_states.new_empty(shape)
            if n:
                keys[..., :n, :] = self.keys
                values[..., :n, :] = self.values
            self._key_buffer, self._value_buffer = keys, values
        self._key_buffer[..., n:n + new, :] = key_states
        self._value_buffer[..., n:n + new, :] = value_states
        self.keys = self._key_buffer[..., :n + new, :]
        self.values = self._value_buffer[..., :n + new, :]
        return self.keys, self.values


def new_cache(model):
    """An empty DynamicCache whose layers grow without copying, or None when the model's cache
    has other layer types (sliding-window, linear attention): transformers then makes its own."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # older signatures
        cache = DynamicCache()
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    for layer in layers:
        layer.__class__ = GrowingLayer
    return cache


def select_and_crop(cache, rows: list[int], keep: int) -> None:
    """Keep the given rows (repeats allowed, in that order) and the first `keep` columns."""
    index = None
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        if index is None:
            index = torch.tensor(rows, device=layer.keys.device)
        layer.keys = layer.keys.index_select(0, index)[..., :keep, :].contiguous()
        layer.values = layer.values.index_select(0, index)[..., :keep, :].contiguous()


class PrefixCache:
    """The last batch's cache and the token each of its positions holds (kept only with
    `reuse=True`; without, every batch starts a fresh growing cache)."""

    def __init__(self, reuse: bool = True, min_share: float = 0.5):
        self.reuse, self.min_share = reuse, min_share
        self.cache = None
        self.tokens: list[list[int]] = []
        self.reused_tokens = 0   # statistics: prompt tokens not recomputed
        self.prompt_tokens = 0

    def clear(self) -> None:
        self.cache, self.tokens = None, []

    def prepare(self, model, sequences: list[list[int]], pad_id: int):
        """(cache, input_ids, attention_mask) for `generate`: a cut-down old cache and only the
        new tokens when enough is reused, else a fresh cache and the left-padded sequences
        (cache None when the model's cache type does not support reuse)."""
        self.prompt_tokens += sum(len(s) for s in sequences)
        plan = plan_reuse(self.tokens, sequences, self.min_share) \
            if self.reuse and self.cache is not None else None
        if plan is None:
            self.clear()
            ids, mask = pad_batch(sequences, pad_id)
            return new_cache(model), ids, mask
        cache, old = self.cache, self.tokens
        self.clear()
        select_and_crop(cache, plan.rows, plan.keep)
        self.reused_tokens += sum(plan.reused)
        prefix_ids = torch.tensor([[t if t != INVALID else pad_id for t in old[r][:plan.keep]]
                                   for r in plan.rows], dtype=torch.long)
        new_ids, new_mask = pad_batch([s[n:] for s, n in zip(sequences, plan.reused)], pad_id)
        ids = torch.cat([prefix_ids, new_ids], dim=1)
        mask = torch.cat([torch.tensor(plan.mask, dtype=torch.long), new_mask], dim=1)
        return cache, ids, mask

    def remember(self, cache, sequences: torch.Tensor, mask: torch.Tensor, answers) -> None:
        """Record a finished batch: `sequences` (B, T) is generate's output, `mask` the input's
        attention mask, `answers[b]` the generated tokens of row b that count (up to and
        including end-of-sequence). The cache holds the first `get_seq_length()` columns (the
        last sampled token was never fed back)."""
        if cache is None or not self.reuse:
            return
        width = cache.get_seq_length()
        rows = []
        for b in range(sequences.shape[0]):
            counted = mask[b].tolist() + [1] * len(answers[b])
            rows.append([t if j < len(counted) and counted[j] else INVALID
                         for j, t in enumerate(sequences[b, :width].tolist())])
        self.cache, self.tokens = cache, rows

