"""The `Generator` protocol every engine implements, and the engine factory.

`chat` continues each conversation as the assistant. `choice_logprobs` gives, for each
conversation, log P(choice | conversation + assistant turn start) for each choice string: the
feedback model's multiple-choice answer (Bai et al. 2022, section 4.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cai.errors import CaiError

Conversation = list[dict]  # [{"role": "user" | "assistant" | "system", "content": str}, ...]
ENGINES = ("hf", "vllm", "openai")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
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


def make_generator(engine: str = "hf", model: str | None = None, **options) -> Generator:
    """Build an engine by name; engines import their heavy dependencies only here."""
    if engine == "hf":
        from cai.generation.hf import HFGenerator

        return HFGenerator(model, **options)
    if engine == "vllm":
        from cai.generation.vllm import VLLMGenerator

        return VLLMGenerator(model, **options)
    if engine == "openai":
        from cai.generation.openai import OpenAIGenerator

        return OpenAIGenerator(model, **options)
    raise CaiError(f"unknown engine '{engine}' (choose from {', '.join(ENGINES)})")
