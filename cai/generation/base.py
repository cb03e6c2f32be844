"""The `Generator` protocol every engine implements, and the engine factory.

`chat` continues each conversation as the assistant. `choice_logprobs` gives, for each
conversation, log P(choice | conversation + assistant turn start) for each choice string: the
feedback model's multiple-choice answer (Bai et al. 2022, section 4.1).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Protocol

from cai.foundation.config import opt
from cai.foundation.errors import CaiError
from cai.foundation.manifest import redact
from cai.foundation.model_store import fingerprint

Conversation = list[dict]  # [{"role": "user" | "assistant" | "system", "content": str}, ...]
ENGINES = ("hf", "vllm", "openai")


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


@dataclass
class EngineConfig:
    """Engine options shared by every generating job (`cai revise`, `cai label`, ...)."""

    model: str | None = opt(None, "embedded name, local folder or hub id "
                                  "(default: smollm2-135m-instruct)")
    engine: str = opt("hf", "generation engine: hf, vllm or openai")
    dtype: str = opt("bfloat16", "hf/vllm weights dtype")
    batch_size: int = opt(32, minimum=1, help="sequences per forward pass (hf engine)")
    base_url: str | None = opt(None, "openai engine: the server, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = opt(None, "openai engine: environment variable with the server's "
                                        "key (default: none sent, except OPENAI_API_KEY to "
                                        "api.openai.com)")
    concurrency: int = opt(16, minimum=1, help="openai engine: requests in flight at once")
    engine_options: dict = opt(help="more engine options (config file only), e.g. vllm's "
                                    "tensor_parallel_size, gpu_memory_utilization, max_model_len",
                               factory=dict)


def engine_kwargs(cfg: EngineConfig) -> dict:
    """Keyword arguments for `make_generator(cfg.engine, cfg.model, **kwargs)`."""
    kwargs = dict(cfg.engine_options)
    if cfg.engine in ("hf", "vllm"):
        kwargs.setdefault("dtype", cfg.dtype)
    if cfg.engine == "hf":
        kwargs.setdefault("batch_size", cfg.batch_size)
    if cfg.engine == "openai":
        if not cfg.base_url and "base_url" not in kwargs:
            raise CaiError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        kwargs.setdefault("base_url", cfg.base_url)
        kwargs.setdefault("api_key_env", cfg.api_key_env)
        kwargs.setdefault("concurrency", cfg.concurrency)
    return kwargs


# Engine options that change how fast records come, not what they hold: left out of identities.
SPEED_OPTIONS = ("batch_size", "concurrency", "api_key_env", "max_retries", "timeout",
                 "deadline", "gpu_memory_utilization")


def engine_identity(role: str, engine: str, model: str | None, kwargs: dict) -> dict:
    """What a job's identity holds for one model, as `ROLE.KEY` entries: the engine, the model's
    fingerprint (its files, or a served model's name) and every engine option that changes the
    records (dtype, server, served model, tokenizer, ...), credentials removed from URLs."""
    return {f"{role}.engine": engine, f"{role}.fingerprint": fingerprint(model, engine),
            **{f"{role}.{k}": v for k, v in record_options(kwargs).items()}}


def record_options(kwargs: dict) -> dict:
    """The engine options among `kwargs` that change the records, URL credentials removed."""
    return redact({k: v for k, v in sorted(kwargs.items()) if k not in SPEED_OPTIONS})


def role_engine(cfg, role: str) -> tuple[str, str | None, dict]:
    """(engine, model, kwargs) of a job's second model, named by prefixed options.

    A job that runs two models (`cai label`'s labeler, `cai eval`'s judge) names the second one
    `ROLE` with `ROLE_engine`, `ROLE_dtype`, `ROLE_base_url`, `ROLE_api_key_env` and
    `ROLE_engine_options`; an engine, server or key left unset is the job's own (`engine`,
    `base_url`, `api_key_env`), and the batch size and concurrency are shared.
    """
    own_engine = getattr(cfg, f"{role}_engine", None)
    engine = own_engine or cfg.engine
    options = getattr(cfg, f"{role}_engine_options", None) or {}
    base_url = getattr(cfg, f"{role}_base_url", None) or cfg.base_url
    flag = role.replace("_", "-")
    if engine == "openai" and not (base_url or "base_url" in options):
        raise CaiError((f"--{flag}-engine openai" if own_engine else "--engine openai")
                       + f" needs --{flag}-base-url (or --base-url), "
                       "e.g. http://127.0.0.1:8000/v1")
    kwargs = engine_kwargs(EngineConfig(
        model=getattr(cfg, role), engine=engine, dtype=getattr(cfg, f"{role}_dtype"),
        batch_size=cfg.batch_size, base_url=base_url,
        api_key_env=getattr(cfg, f"{role}_api_key_env", None) or cfg.api_key_env,
        concurrency=cfg.concurrency, engine_options=options))
    return engine, getattr(cfg, role), kwargs


def make_generator(engine: str = "hf", model: str | None = None, **options) -> Generator:
    """Build an engine by name; engines import their heavy dependencies only here. An option
    the engine does not take is a one-line error naming it and the ones it takes."""
    if engine == "hf":
        from cai.generation.hf import HFGenerator as cls
    elif engine == "vllm":
        from cai.generation.vllm import VLLMGenerator as cls
    elif engine == "openai":
        from cai.generation.openai import OpenAIGenerator as cls
    else:
        raise CaiError(f"unknown engine '{engine}' (choose from {', '.join(ENGINES)})")
    import inspect

    params = inspect.signature(cls.__init__).parameters
    known = [p for p in params if p not in ("self", "model")
             and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(options) - set(known))
    if unknown and not takes_any:  # vllm passes the rest on to vllm.LLM
        raise CaiError(f"the {engine} engine has no option {', '.join(map(repr, unknown))} "
                       f"(engine_options: it takes {', '.join(known)})")
    return cls(model, **options)
