"""The `Generator` protocol every engine implements, and what every engine shares: sampling
parameters, per-item seeds and the one prompt encoder.

`chat` continues each conversation as the assistant. `choice_logprobs` gives, for each
conversation, log P(choice | conversation + assistant turn start) for each choice string: the
feedback model's multiple-choice answer (Bai et al. 2022, section 4.1). The engines are built
by `cai.generation.roles.make_generator`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Protocol

from cai.foundation.errors import CaiError

Conversation = list[dict]  # [{"role": "user" | "assistant" | "system", "content": str}, ...]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding.

    `seeds`, one per conversation, makes each answer depend on its own seed alone, not on the
    other conversations of the call (jobs derive them from the job seed and the item id with
    `item_seeds`, so a resumed or re-chunked job samples what an uninterrupted one would).
    Without it, conversation i gets `seed + i`.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    seeds: tuple[int, ...] | None = None

    def seed_for(self, index: int) -> int | None:
        """The seed of conversation `index` of a call."""
        if self.seeds is not None:
            return self.seeds[index]
        return None if self.seed is None else self.seed + index

    def __post_init__(self):
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(self.seeds))
        if self.max_new_tokens < 1:
            raise CaiError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise CaiError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise CaiError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class GenerationStats:
    """Counters an engine keeps, read by jobs for the manifest and the progress bar."""

    generated_tokens: int = 0
    generation_seconds: float = 0.0
    calls: int = field(default=0)


class Generator(Protocol):
    stats: GenerationStats
    #: Longest prompt + completion the model takes, or None when the engine cannot tell.
    context_length: int | None
    name: str

    def chat(self, conversations: list[Conversation], params: SamplingParams) -> list[str]: ...

    def choice_logprobs(self, conversations: list[Conversation],
                        choices: list[str]) -> list[list[float]]: ...

    def prompt_tokens(self, conversations: list[Conversation]) -> list[int] | None:
        """Token count of each conversation as a prompt, or None when the engine cannot tell."""
        ...

    def close(self) -> None: ...


def item_seeds(seed: int, keys) -> tuple[int, ...]:
    """One sampling seed per key (an item id, with its step or sample number): a hash of the
    job's seed and the key, the same in every run, chunk and shard."""
    return tuple(zlib.crc32(f"{seed}:{key}".encode()) for key in keys)


def encode_chat(tokenizer, conversation: Conversation) -> list[int]:
    """Token ids of a conversation in the model's chat template, ending where the assistant speaks.

    Every engine builds its prompts here, so `hf`, `vllm` and `openai` score the same tokens.
    """
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def choice_requests(tokenizer, conversations: list[Conversation], choices: list[str]):
    """(prompt ids per conversation, token ids per choice) for `choice_logprobs`.

    Each choice is tokenized on its own, as the first words of the assistant's turn; its
    log-prob is the sum over its tokens of log P(token | prompt, earlier choice tokens).
    """
    choice_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    if not choices or any(not ids for ids in choice_ids):
        raise CaiError(f"choices must be non-empty text, got {choices!r}")
    return [encode_chat(tokenizer, c) for c in conversations], choice_ids
