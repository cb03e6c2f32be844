"""The models a job runs, each one `Role`: the policy, the feedback model, the labeler, the
judge; and building a role's engine.

A role is a model and how it runs: its engine, the weights' dtype, the openai engine's server
and key variable, and any further engine options. A job's config holds one `Role` per model,
declared with `main_role` (the policy, or the evaluated models) or `second_role` (a second
model); their options keep flat names wherever a user meets them (the command line, YAML, the
JSON Schemas, manifests). The main role's are bare: `--model` (or the job's own name for it),
`--engine`, `--dtype`, `--base-url`, `--api-key-env` and `engine_options`. A second model's
carry its prefix: `--labeler`, `--labeler-engine`, ..., `labeler_engine_options`; the engine,
server and key it leaves unset are the main role's (`beside`). The batch size and concurrency
are the job's, shared by all its roles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cai.foundation.errors import CaiError
from cai.foundation.manifest import redact
from cai.foundation.model_store import fingerprint
from cai.foundation.options import group
from cai.generation.base import Generator

ENGINES = ("hf", "vllm", "openai")


@dataclass
class Role:
    """One model a job runs, and how."""

    model: str | None = None  # embedded name, local folder, hub id or served name
    engine: str | None = None  # hf, vllm or openai; None in a second role: the main role's
    dtype: str = "bfloat16"  # hf/vllm weights
    base_url: str | None = None  # openai: the server
    api_key_env: str | None = None  # openai: the environment variable with the server's key
    engine_options: dict = field(default_factory=dict)  # more, passed to the engine


#: The main role's options, as `--help` and the schemas describe them.
MAIN_HELP = {
    "model": "embedded name, local folder or hub id (default: smollm2-135m-instruct)",
    "engine": "generation engine: hf, vllm or openai",
    "dtype": "hf/vllm weights dtype",
    "base_url": "openai engine: the server, e.g. http://127.0.0.1:8000/v1",
    "api_key_env": "openai engine: environment variable with the server's key (default: none "
                   "sent, except OPENAI_API_KEY to api.openai.com)",
    "engine_options": "more engine options (config file only), e.g. vllm's "
                      "tensor_parallel_size, gpu_memory_utilization, max_model_len",
}


def main_role(model_key: str | None = "model", help: dict[str, str] | None = None):
    """A config field holding the job's main role, its options bare: `model_key` (None: the
    job names its models otherwise), `engine` (hf by default), `dtype`, `base_url`,
    `api_key_env`, `engine_options`. `help` replaces `MAIN_HELP`'s texts where given."""
    keys = {a: a for a in ("engine", "dtype", "base_url", "api_key_env", "engine_options")}
    if model_key:
        keys["model"] = model_key
    return group(Role, keys, defaults={"engine": "hf", "dtype": "bfloat16"},
                 hints={"engine": str}, help={**MAIN_HELP, **(help or {})})


def second_role(prefix: str, who: str, *, model_help: str, engine_help: str,
                dtype: str = "bfloat16"):
    """A config field holding a job's second model, its options under `prefix` (the model
    itself as `prefix`, then `prefix_engine`, ...); `who` names it in the help ("the judge")."""
    note = " (the hf engine computes the choice logits in float32 either way)" \
        if dtype == "float32" else ""
    keys = {"model": prefix, **{a: f"{prefix}_{a}" for a in ("engine", "dtype", "base_url",
                                                             "api_key_env", "engine_options")}}
    return group(Role, keys, defaults={"dtype": dtype}, help={
        "model": model_help, "engine": engine_help, "dtype": f"hf/vllm weights of {who}{note}",
        "base_url": f"openai engine: {who}'s server (default: --base-url)",
        "api_key_env": f"openai engine: {who}'s key variable (default: --api-key-env)",
        "engine_options": f"extra {prefix} engine options (config file only)"})


def beside(role: Role, main: Role, prefix: str) -> Role:
    """A second model's role with the engine, server and key it leaves unset taken from the
    job's main role; an openai engine without a server is an error naming `prefix`'s flags."""
    engine = role.engine or main.engine
    base_url = role.base_url or main.base_url
    flag = prefix.replace("_", "-")
    if engine == "openai" and not (base_url or "base_url" in role.engine_options):
        raise CaiError((f"--{flag}-engine openai" if role.engine else "--engine openai")
                       + f" needs --{flag}-base-url (or --base-url), "
                       "e.g. http://127.0.0.1:8000/v1")
    return dataclasses.replace(role, engine=engine, base_url=base_url,
                               api_key_env=role.api_key_env or main.api_key_env)


def engine_kwargs(role: Role, batch_size: int = 32, concurrency: int = 16) -> dict:
    """Keyword arguments for `make_generator(role.engine, role.model, **kwargs)`; the batch
    size and concurrency are the job's."""
    kwargs = dict(role.engine_options)
    if role.engine in ("hf", "vllm"):
        kwargs.setdefault("dtype", role.dtype)
    if role.engine == "hf":
        kwargs.setdefault("batch_size", batch_size)
    if role.engine == "openai":
        if not role.base_url and "base_url" not in kwargs:
            raise CaiError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        kwargs.setdefault("base_url", role.base_url)
        kwargs.setdefault("api_key_env", role.api_key_env)
        kwargs.setdefault("concurrency", concurrency)
    return kwargs


# Engine options that change how fast records come, not what they hold: left out of identities.
SPEED_OPTIONS = ("batch_size", "concurrency", "api_key_env", "max_retries", "timeout",
                 "deadline", "gpu_memory_utilization")


def engine_identity(name: str, role: Role, kwargs: dict) -> dict:
    """What a job's identity holds for one model, as `NAME.KEY` entries: the engine, the model's
    fingerprint (its files, or a served model's name) and every engine option among its
    `kwargs` that changes the records (dtype, server, served model, tokenizer, ...),
    credentials removed from URLs."""
    return {f"{name}.engine": role.engine,
            f"{name}.fingerprint": fingerprint(role.model, role.engine),
            **{f"{name}.{k}": v for k, v in record_options(kwargs).items()}}


def record_options(kwargs: dict) -> dict:
    """The engine options among `kwargs` that change the records, URL credentials removed."""
    return redact({k: v for k, v in sorted(kwargs.items()) if k not in SPEED_OPTIONS})


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
