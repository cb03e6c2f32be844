"""The transformers engine: batched generation on CPU or one GPU.

Prompts are sorted by length and cut into batches so each batch pads little; batches are left
padded (generation appends on the right) and the results are put back in input order.
"""

from __future__ import annotations

import time

import torch
from transformers import LogitsProcessorList

from cai.errors import CaiError
from cai.generation.base import (
    Conversation,
    GenerationStats,
    SamplingParams,
    choice_requests,
    encode_chat,
)
from cai.generation.prefix_cache import PrefixCache, cache_kwarg
from cai.generation.sampling import SampleProcessor
from cai.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, pad_batch


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
        if params.seed is not None:
            torch.manual_seed(params.seed)
        # Sampling runs as a logits processor in greedy mode (cai.generation.sampling: the same
        # distribution as transformers' sampler, a third less time per step on a CPU).
        processors = [SampleProcessor(params.temperature, params.top_p)] \
            if params.temperature > 0 else []
        for batch in self._batches(encoded):
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
        rows = [(p, k) for p in range(len(prompts)) for k in range(len(choices))]
        flat = continuation_logprobs(self.model, self.tokenizer.pad_token_id,
                                     [prompts[p] for p, _ in rows],
                                     [choice_ids[k] for _, k in rows], self.batch_size)
        result = [[0.0] * len(choices) for _ in prompts]
        for (p, k), lp in zip(rows, flat):
            result[p][k] = lp
        self.stats.generation_seconds += time.perf_counter() - start
        return result

    def close(self) -> None:
        self.prefix.clear()


def continuation_logprobs(model, pad_id: int, contexts: list[list[int]],
                          targets: list[list[int]], batch_size: int = 8) -> list[float]:
    """log P(targets[k] | contexts[k]), summed over the target's tokens, for each k.

    Sequences are sorted by length and left padded in batches (position ids from the mask), so
    every target ends at the last position and only the last positions are projected onto the
    vocabulary (`logits_to_keep`). The token at position t is predicted by the logits at t - 1.
    """
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
