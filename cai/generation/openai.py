"""Any OpenAI-compatible server: `vllm serve`, llama.cpp's server, `transformers serve`, APIs.

Requests run concurrently (at most `concurrency` in flight) through the official `openai`
client, which retries 429s, 5xx answers, timeouts and dropped connections with exponential
backoff. Other 4xx answers are the user's to fix and stop the job with the server's message.
Each attempt waits at most `timeout` seconds and a request with its retries at most `deadline`,
so a server that stops answering stops the job in minutes, naming the server, not in an hour.

The API key goes only where the user sent it: the variable named by `api_key_env` (the
`--api-key-env` option), or `OPENAI_API_KEY` for the official host api.openai.com. Any other
server gets a placeholder, so a key in the environment never leaks to a local or plain-http
server. URLs are shown without their `user:password@` part.

`choice_logprobs` needs the server to score a prompt: it sends the conversation, rendered with
the model's chat template locally, plus the choice as token ids to the completions endpoint with
`echo` and `logprobs`, and sums the choice tokens' log-probs (vLLM does this; `transformers serve`
ignores logprobs, which is reported as such).
"""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import urlsplit

from cai.foundation.errors import CaiError
from cai.foundation.manifest import redact
from cai.generation.base import (
    Conversation,
    GenerationStats,
    SamplingParams,
    choice_requests,
    encode_chat,
)

OFFICIAL_HOST = "api.openai.com"


def api_key(base_url: str, api_key_env: str | None) -> str:
    """The key to send to `base_url`: from the variable the user named, or OPENAI_API_KEY for
    the official host only; else a placeholder (servers that need none ignore it)."""
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise CaiError(f"--api-key-env {api_key_env}: that environment variable is not set")
        return key
    if urlsplit(base_url).hostname == OFFICIAL_HOST:
        return os.environ.get("OPENAI_API_KEY") or "not-needed"
    return "not-needed"


def _client_errors():
    import openai

    return openai


class ServerRefused(CaiError):
    """The server answered a request with a 4xx status that retrying cannot fix."""


class OpenAIGenerator:
    def __init__(self, model: str | None = None, base_url: str = "http://127.0.0.1:8000/v1",
                 api_key_env: str | None = None, concurrency: int = 16,
                 max_retries: int = 5, timeout: float = 300.0, deadline: float = 900.0,
                 tokenizer: str | None = None, served_model: str | None = None,
                 context_length: int | None = None):
        try:
            import openai
        except ImportError:
            raise CaiError("the openai engine needs the openai client: pip install 'cai[serve]'") \
                from None
        if not model:
            raise CaiError("the openai engine needs --model (the name the server knows)")
        self.name = str(model)
        self.served_model = served_model or self.name
        self.base_url = redact(base_url)  # for messages
        self.concurrency = max(1, int(concurrency))
        if not 0 < timeout <= deadline:
            raise CaiError(f"openai engine: need 0 < timeout ({timeout}) <= deadline "
                           f"({deadline}), in seconds")
        self.timeout, self.deadline, self.max_retries = timeout, deadline, max_retries
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key(base_url, api_key_env),
                                         max_retries=max_retries, timeout=timeout)
        self.tokenizer_name = tokenizer
        self._tokenizer = None
        self.context_length = context_length
        self.stats = GenerationStats()
        self.loop = asyncio.new_event_loop()

    # ----------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        """The model's tokenizer, for rendering prompts locally (choice_logprobs, token counts)."""
        if self._tokenizer is None:
            from cai.foundation.model_store import load_tokenizer

            try:
                self._tokenizer = load_tokenizer(self.tokenizer_name or self.name)
            except CaiError as e:
                raise CaiError(f"the openai engine needs the model's tokenizer locally for this "
                               f"(set engine option 'tokenizer'): {e}") from None
        return self._tokenizer

    def _run(self, coroutines):
        async def bounded():
            gate = asyncio.Semaphore(self.concurrency)

            async def one(c):
                async with gate:  # the deadline counts from when the request is sent
                    try:
                        return await asyncio.wait_for(c, self.deadline)
                    except asyncio.TimeoutError:
                        raise CaiError(
                            f"server {self.base_url} stopped answering: no reply to a request "
                            f"within {self.deadline:g} s ({self.max_retries} retries of "
                            f"{self.timeout:g} s each); records so far are saved: check the "
                            "server and rerun the same command to resume") from None

            return await asyncio.gather(*(one(c) for c in coroutines))

        try:
            return self.loop.run_until_complete(bounded())
        except CaiError:
            raise
        except Exception as e:
            raise self._explain(e) from None

    def _explain(self, e: Exception) -> CaiError:
        openai = _client_errors()
        if isinstance(e, (openai.APIConnectionError, openai.APITimeoutError)):
            return CaiError(f"server {self.base_url} did not answer ({type(e).__name__}) after "
                            "retries; records so far are saved: restart the server and rerun the "
                            "same command to resume")
        if isinstance(e, openai.APIStatusError):
            body = e.body if isinstance(e.body, dict) else {}
            error = body.get("error", body)
            detail = error.get("message") if isinstance(error, dict) else None
            detail = detail or body.get("detail") or e.message or ""
            first = str(detail).splitlines()[0] if detail else ""
            return ServerRefused(f"server {self.base_url} refused the request (HTTP "
                                 f"{e.status_code}): {first}")
        return CaiError(f"server {self.base_url}: {type(e).__name__}: {e}")

    # ----------------------------------------------------------------------------------------

    def chat(self, conversations: list[Conversation], params: SamplingParams) -> list[str]:
        start = time.perf_counter()

        async def one(i, conv):
            seed = params.seed_for(i)
            extra = {"seed": seed} if seed is not None else {}
            reply = await self.client.chat.completions.create(
                model=self.served_model, messages=conv, max_tokens=params.max_new_tokens,
                temperature=params.temperature, top_p=params.top_p, **extra)
            if reply.usage:
                self.stats.generated_tokens += reply.usage.completion_tokens
            return (reply.choices[0].message.content or "").strip()

        out = self._run([one(i, c) for i, c in enumerate(conversations)])
        self.stats.generation_seconds += time.perf_counter() - start
        self.stats.calls += 1
        return list(out)

    def prompt_tokens(self, conversations: list[Conversation]) -> list[int] | None:
        if self.context_length is None:
            return None
        return [len(encode_chat(self.tokenizer, c)) for c in conversations]

    def choice_logprobs(self, conversations: list[Conversation],
                        choices: list[str]) -> list[list[float]]:
        start = time.perf_counter()
        prompts, choice_ids = choice_requests(self.tokenizer, conversations, choices)

        async def one(prompt, ids):
            reply = await self.client.completions.create(
                model=self.served_model, prompt=prompt + ids, max_tokens=1, temperature=0,
                echo=True, logprobs=0)
            lp = reply.choices[0].logprobs
            values = getattr(lp, "token_logprobs", None) if lp is not None else None
            if not values or len(values) < len(prompt) + len(ids):
                raise CaiError(f"server {self.base_url} returned no prompt log-probs for "
                               "completions with echo=True; choice_logprobs needs a server that "
                               "does (vllm serve, llama.cpp server), not transformers serve")
            return sum(values[len(prompt):len(prompt) + len(ids)])

        try:
            flat = self._run([one(p, ids) for p in prompts for ids in choice_ids])
        except ServerRefused as e:
            raise CaiError(f"{e}; choice_logprobs needs completions with echo and logprobs on "
                           "token-id prompts (vllm serve does this; transformers serve does not)") \
                from None
        self.stats.generation_seconds += time.perf_counter() - start
        k = len(choices)
        return [list(flat[i * k:(i + 1) * k]) for i in range(len(prompts))]

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.client.close())
        finally:
            self.loop.close()
