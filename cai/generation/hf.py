"""The transformers engine: batched generation on CPU or one GPU.

Prompts are sorted by length and cut into batches so each batch pads little; batches are left
padded (generation appends on the right) and the results are put back in input order.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager

import torch
from transformers import LogitsProcessorList

from cai.foundation.errors import CaiError
from cai.foundation.model_store import DEFAULT_MODEL, load_causal_lm, load_tokenizer, pad_batch
from cai.generation.base import (
    Conversation,
    GenerationStats,
    SamplingParams,
    choice_requests,
    encode_chat,
)
from cai.generation.prefix_cache import PrefixCache, cache_kwarg
from cai.generation.sampling import SampleProcessor


class HFGenerator:
    def __init__(self, model: str | None = None, dtype: str = "bfloat16", batch_size: int = 8,
                 device: str | None = None, trust_remote_code: bool = False, model_obj=None,
                 tokenizer=None, reuse_prefix: bool = True):
        self.name = str(model or DEFAULT_MODEL)
        self.tokenizer = tokenizer or load_tokenizer(model)
        self.model = model_obj if model_obj is not None else \
            load_causal_lm(model, dtype=dtype, trust_remote_code=trust_remote_code)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        if batch_size < 1:
            raise CaiError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self.stats = GenerationStats()
        eos = self.model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_token_ids = eos
        # A KV cache that grows without copying, and the last batch's kept for the next batch
        # when that extends its sequences (cai.generation.prefix_cache; reuse_prefix=False: no
        # reuse).
        self.prefix = PrefixCache(reuse=reuse_prefix)
        # KV caches of the few-shot prefixes `choice_logprobs` scored last (`_prefix_cache`)
        self.prefixes: dict = {}
        self.head32: dict = {}  # the LM head's float32 weight, for `choice_logprobs`
        self._cache_kwarg = cache_kwarg()

    # ----------------------------------------------------------------------------------------

    def encode(self, conversation: Conversation) -> list[int]:
        """Token ids of a conversation rendered with the chat template, ready for the assistant."""
        return encode_chat(self.tokenizer, conversation)

    def prompt_tokens(self, conversations: list[Conversation]) -> list[int]:
        return [len(self.encode(c)) for c in conversations]

    def _batches(self, sequences: list[list[int]]):
        """Index batches, longest first, so each batch holds sequences of similar length."""
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        for start in range(0, len(order), self.batch_size):
            yield order[start:start + self.batch_size]

    @torch.inference_mode()
    def generate_ids(self, conversations: list[Conversation],
                     params: SamplingParams) -> list[list[int]]:
        """The sampled token ids of each answer, in input order, up to and including the first
        end-of-sequence token (an answer without one ran into `max_new_tokens`)."""
        encoded = [self.encode(c) for c in conversations]
        out: list[list[int]] = [[] for _ in encoded]
        if params.seeds is not None and len(params.seeds) != len(encoded):
            raise ValueError(f"{len(params.seeds)} seeds for {len(encoded)} conversations")
        if params.seed is not None and params.seeds is None:
            torch.manual_seed(params.seed)
        for batch in self._batches(encoded):
            # Sampling runs as a logits processor in greedy mode (cai.generation.sampling: the
            # same distribution as transformers' sampler, a third less time per step on a CPU);
            # with per-conversation seeds each row draws from its own generator.
            generators = None if params.seeds is None else [
                torch.Generator(self.device).manual_seed(params.seeds[i]) for i in batch]
            processors = [SampleProcessor(params.temperature, params.top_p, generators)] \
                if params.temperature > 0 else []
            cache, ids, mask = self.prefix.prepare(self.model, [encoded[i] for i in batch],
                                                   self.tokenizer.pad_token_id)
            ids, mask = ids.to(self.device), mask.to(self.device)
            generated = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=params.max_new_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None,
                logits_processor=LogitsProcessorList(processors),
                eos_token_id=self.eos_token_ids, pad_token_id=self.tokenizer.pad_token_id,
                **({self._cache_kwarg: cache} if cache is not None else {}))
            answers = []
            for row, i in enumerate(batch):
                tokens = generated[row, ids.shape[1]:].tolist()
                cut = next((j for j, t in enumerate(tokens) if t in self.eos_token_ids), None)
                out[i] = tokens if cut is None else tokens[:cut + 1]
                answers.append(out[i])
            self.prefix.remember(cache, generated, mask, answers)
        return out

    def chat(self, conversations: list[Conversation], params: SamplingParams) -> list[str]:
        if not conversations:
            return []
        start = time.perf_counter()
        out = []
        for tokens in self.generate_ids(conversations, params):
            self.stats.generated_tokens += len(tokens)
            if tokens and tokens[-1] in self.eos_token_ids:
                tokens = tokens[:-1]
            out.append(self.tokenizer.decode(tokens, skip_special_tokens=True).strip())
        self.stats.generation_seconds += time.perf_counter() - start
        self.stats.calls += 1
        return out

    def choice_logprobs(self, conversations: list[Conversation],
                        choices: list[str]) -> list[list[float]]:
        """log P(choice | prompt) = sum over the choice's tokens of log-softmax at each step."""
        start = time.perf_counter()
        prompts, choice_ids = choice_requests(self.tokenizer, conversations, choices)
        heads = [self._head(c, ids) for c, ids in zip(conversations, prompts)]
        rows = [(p, k) for p in range(len(prompts)) for k in range(len(choices))]
        with float32_logits(self.model, self.head32):
            flat = continuation_logprobs(self.model, self.tokenizer.pad_token_id,
                                         [prompts[p] for p, _ in rows],
                                         [choice_ids[k] for _, k in rows], self.batch_size,
                                         self.prefixes, [heads[p] for p, _ in rows])
        result = [[0.0] * len(choices) for _ in prompts]
        for (p, k), lp in zip(rows, flat):
            result[p][k] = lp
        self.stats.generation_seconds += time.perf_counter() - start
        return result

    def _head(self, conversation: Conversation, ids: list[int]) -> int:
        """How many leading tokens of `ids` are the turns before the last one (a judge's or
        labeler's few-shot turns): a prefix fixed by the conversation alone, so scores never
        depend on which other conversations share the call. 0 for a single turn."""
        if len(conversation) < 2:
            return 0
        text = self.tokenizer.apply_chat_template(conversation[:-1], tokenize=False)
        head = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return len(head) if len(head) < len(ids) and ids[:len(head)] == head else 0

    def close(self) -> None:
        self.prefix.clear()
        self.prefixes.clear()


def on_model(model, tokenizer, *, name: str | None, batch_size: int, device) -> HFGenerator:
    """The hf engine over a model a trainer holds in memory (PPO's policy): it samples with the
    weights as they are at each call, so no KV cache is kept from one call to the next."""
    return HFGenerator(name, model_obj=model, tokenizer=tokenizer, batch_size=batch_size,
                       device=str(device), reuse_prefix=False)


def sequence_logprobs(model, tokenizer, contexts: list[list[int]], targets: list[list[int]],
                      batch_size: int = 8) -> list[float]:
    """log P(targets[k] | contexts[k]), summed over the target's tokens, of a transformers model
    loaded outside an engine (`cai eval`'s ability probes): `continuation_logprobs` with the
    tokenizer's pad id."""
    return continuation_logprobs(model, padding_id(tokenizer), contexts, targets, batch_size)


def padding_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end of sequence, else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return value
    return 0


@contextmanager
def float32_logits(model, store: dict):
    """Within the block, the model's LM head computes its logits in float32: its input upcast,
    times a float32 copy of its weight (kept in `store` until the weight changes).

    A bfloat16 head rounds each logit to 8 significant bits, a step of 0.125 for logits between
    16 and 32: a judge's or labeler's log-odds between two options then move in steps of that
    size, and many near-ties become exact ties. The head is one matrix product per scored
    position, so doing it in float32 costs little; the layers below it keep their dtype.
    """
    head = model.get_output_embeddings()
    if head is None or head.weight.dtype == torch.float32:
        yield
        return
    key = (id(head.weight), head.weight._version)  # an in-place update makes a new copy
    if store.get("key") != key:
        store.clear()
        store.update(key=key, weight=head.weight.detach().float(),
                     bias=None if head.bias is None else head.bias.detach().float())

    def upcast(module, args, output):
        return torch.nn.functional.linear(args[0].float(), store["weight"], store["bias"])

    handle = head.register_forward_hook(upcast)
    try:
        yield
    finally:
        handle.remove()


def continuation_logprobs(model, pad_id: int, contexts: list[list[int]],
                          targets: list[list[int]], batch_size: int = 8,
                          memo: dict | None = None, heads: list[int] | None = None
                          ) -> list[float]:
    """log P(targets[k] | contexts[k]), summed over the target's tokens, for each k.

    Targets that share a context (the options of one multiple-choice question) are scored from
    one pass over it: the context runs once, its last logits give each target's first token,
    and the rest of each target (a token or two: "(A)" is "(", "A", ")" or "(A", ")") runs on a
    copy of the context's KV cache. `shared_prefix_logprobs` is that path, `_whole_logprobs` the
    plain one (each context + target as its own sequence) for contexts used once.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, c in enumerate(contexts):
        groups.setdefault(tuple(c), []).append(k)
    shared = [k for g in groups.values() if len(g) > 1 for k in g]
    alone = [k for g in groups.values() if len(g) == 1 for k in g]
    out = [0.0] * len(contexts)
    for ks, values in (
            (shared, shared_prefix_logprobs(model, pad_id, [contexts[k] for k in shared],
                                            [targets[k] for k in shared], batch_size, memo,
                                            [heads[k] for k in shared] if heads else None)),
            (alone, _whole_logprobs(model, pad_id, [contexts[k] for k in alone],
                                    [targets[k] for k in alone], batch_size))):
        for k, v in zip(ks, values):
            out[k] = v
    return out


def _whole_logprobs(model, pad_id: int, contexts: list[list[int]], targets: list[list[int]],
                    batch_size: int) -> list[float]:
    """Each context + target as one sequence. Sequences are sorted by length and left padded in
    batches (position ids from the mask), so every target ends at the last position and only
    the last positions are projected onto the vocabulary (`logits_to_keep`). The token at
    position t is predicted by the logits at t - 1."""
    if not contexts:
        return []
    sequences = [c + t for c, t in zip(contexts, targets)]
    order = sorted(range(len(sequences)), key=lambda k: -len(sequences[k]))
    out = [0.0] * len(sequences)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            ids, mask = pad_batch([sequences[k] for k in batch], pad_id)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(len(targets[k]) for k in batch) + 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), logits_to_keep=keep).logits
            logps = torch.log_softmax(logits.float(), dim=-1)                 # (B, keep, V)
            for row, k in enumerate(batch):
                n = len(targets[k])
                # The last kept logit (index keep - 1) predicts the token after the sequence.
                steps = torch.arange(keep - 1 - n, keep - 1, device=logps.device)
                picked = logps[row, steps, torch.tensor(targets[k], dtype=torch.long,
                                                        device=logps.device)]
                out[k] = picked.sum().item()
    return out


def shared_prefix_logprobs(model, pad_id: int, contexts: list[list[int]],
                           targets: list[list[int]], batch_size: int = 8,
                           memo: dict | None = None, heads: list[int] | None = None
                           ) -> list[float]:
    """`continuation_logprobs` computing each distinct context once.

    Distinct contexts go through the model in left-padded batches of `batch_size`, with their
    KV cache. With `heads` (per context, how many leading tokens are its earlier turns: a
    judge's few-shot demonstrations), contexts with the same head of `MIN_SHARED_PREFIX` tokens
    or more share it: it runs once, as one sequence, and each batch continues from copies of
    its cache, the padding between head and rest masked out (`_prefix_batches`); `memo` keeps
    the last few heads' caches from call to call (the engine's own). The head is fixed by the
    context, not by the batch, so at batch size 1 a score never depends on the call. log
    P(first target token) is read from the last position. For targets longer than one token,
    the cache is copied once per target (`batch_select_indices`) and the target's tokens but
    its last are fed after it, positions continuing from the context's length, and each next
    token is read from those logits.
    """
    if not contexts:
        return []
    index: dict[tuple[int, ...], int] = {}
    for c in contexts:
        index.setdefault(tuple(c), len(index))
    unique = list(index)
    owners: list[list[int]] = [[] for _ in unique]  # target indices per distinct context
    for k, c in enumerate(contexts):
        owners[index[tuple(c)]].append(k)
    out = [0.0] * len(contexts)
    device = next(model.parameters()).device
    memo = {} if memo is None else memo
    with torch.inference_mode():
        split = [0] * len(unique)
        for k, c in enumerate(contexts):
            split[index[tuple(c)]] = heads[k] if heads else 0
        for batch, shared in _prefix_batches(unique, split, batch_size, device.type == "cpu"):
            seqs = [list(unique[u]) for u in batch]
            ids, mask = pad_batch([s[shared:] for s in seqs], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs = {}
            if shared:
                kwargs[cache_kwarg()] = _prefix_cache(model, seqs[0][:shared], len(seqs), memo)
                mask = torch.cat([torch.ones(len(seqs), shared, dtype=mask.dtype,
                                             device=device), mask], -1)
            result = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           use_cache=True, logits_to_keep=1, **kwargs)
            first = torch.log_softmax(result.logits[:, -1].float(), dim=-1)      # (B, V)
            rows = [(row, k) for row, u in enumerate(batch) for k in owners[u]]
            for row, k in rows:
                out[k] = first[row, targets[k][0]].item()
            longer = [(row, k) for row, k in rows if len(targets[k]) > 1]
            if not longer:
                continue
            cache = getattr(result, "cache", None) or result.past_key_values
            cache.batch_select_indices(torch.tensor([row for row, _ in longer], device=device))
            width = max(len(targets[k]) for _, k in longer) - 1
            tail = torch.full((len(longer), width), pad_id, dtype=torch.long, device=device)
            tail_mask = torch.zeros_like(tail)
            for r, (_, k) in enumerate(longer):
                tail[r, :len(targets[k]) - 1] = torch.tensor(targets[k][:-1])
                tail_mask[r, :len(targets[k]) - 1] = 1
            rows_t = torch.tensor([row for row, _ in longer], device=device)
            lengths = mask[rows_t].sum(-1, keepdim=True)                        # (R, 1)
            logits = model(input_ids=tail, attention_mask=torch.cat([mask[rows_t], tail_mask], -1),
                           position_ids=lengths + torch.arange(width, device=device),
                           use_cache=True, **{cache_kwarg(): cache}).logits
            logps = torch.log_softmax(logits.float(), dim=-1)                  # (R, width, V)
            for r, (_, k) in enumerate(longer):
                rest = targets[k][1:]
                picked = logps[r, torch.arange(len(rest), device=device),
                               torch.tensor(rest, dtype=torch.long, device=device)]
                out[k] += picked.sum().item()
    return out


MIN_SHARED_PREFIX = 16  # a shorter common prefix is not worth a separate forward pass
PREFIX_BATCH_CPU = 8  # rows per batch on a CPU when they share a prefix
PREFIXES_KEPT = 4  # prefix caches remembered (a judge's two option orders, with room to spare)


def _prefix_batches(unique: list[tuple[int, ...]], heads: list[int], batch_size: int,
                    cpu: bool):
    """(distinct-context indices, shared head length) per batch: contexts grouped by their head
    (shared only when `MIN_SHARED_PREFIX` tokens or longer), the longest first within a group.
    Every row gets its own copy of the head's cache, and on a CPU large batches spend more
    time copying it than they save: `PREFIX_BATCH_CPU` rows there (docs/performance.md)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for u, (c, n) in enumerate(zip(unique, heads)):
        groups.setdefault(c[:n] if n >= MIN_SHARED_PREFIX else (), []).append(u)
    for head, members in groups.items():
        members.sort(key=lambda u: -len(unique[u]))
        size = min(batch_size, PREFIX_BATCH_CPU) if head and cpu else batch_size
        for start in range(0, len(members), size):
            yield members[start:start + size], len(head)


def _prefix_cache(model, prefix: list[int], copies: int, memo: dict):
    """The KV cache of `prefix` repeated `copies` times along the batch, the prefix's own pass
    remembered in `memo` (the `PREFIXES_KEPT` most recently used) for the next batch with the
    same prefix."""
    key = tuple(prefix)
    if key in memo:
        memo[key] = memo.pop(key)  # most recently used last
    else:
        while len(memo) >= PREFIXES_KEPT:
            memo.pop(next(iter(memo)))
        device = next(model.parameters()).device
        ids = torch.tensor([prefix], dtype=torch.long, device=device)
        result = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        memo[key] = getattr(result, "cache", None) or result.past_key_values
    cache = copy.deepcopy(memo[key])
    cache.batch_repeat_interleave(copies)
    return cache
