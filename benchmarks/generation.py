"""Throughput of the SL-CAI job on the embedded model, per generation engine.

The same job (N red-team prompts, R critique-revision rounds, T new tokens at most) runs as
  naive   - a loop calling `model.generate` on one prompt at a time (float32, as loaded)
  hf      - cai's hf engine (length-sorted bf16 batches, KV cache reused between a chunk's
            calls; one chunk = one batch, cai's default)
  hf_fresh - the same without the KV reuse (`reuse_prefix=False`), to measure what it brings
  openai  - cai's openai engine against `transformers serve --continuous-batching`
  vllm    - cai's vllm engine (where vLLM is installed)
  raw_vllm - vLLM's own `LLM.chat` on the same conversations (where vLLM is installed)
each in its own process (so peak memory is its own), and prints one JSON summary with
generated tokens/s, wall time, peak RSS and the ratios against the naive loop.

The naive loop is slow (about 15 tokens/s here), so by default it runs on the first
`--naive-prompts` prompts of the same job; its tokens/s is per-sequence speed and does not
depend on how many prompts it gets. The JSON says how many prompts each variant ran.

    python benchmarks/generation.py                       # naive, hf, openai
    python benchmarks/generation.py --variants hf,hf_fresh   # what the KV reuse brings
    python benchmarks/generation.py --variants hf,vllm,raw_vllm
    python benchmarks/generation.py --sweep               # hf batch size x dtype
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai.foundation.model_store import load_causal_lm, load_tokenizer, resolve  # noqa: E402
from cai.generation import SamplingParams, make_generator  # noqa: E402
from cai.generation.base import GenerationStats, encode_chat  # noqa: E402
from cai.revise.config import ReviseConfig  # noqa: E402
from cai.revise.job import run  # noqa: E402


class NaiveGenerator:
    """The obvious baseline: `model.generate` on one conversation at a time."""

    name = "naive"

    def __init__(self, model=None):
        self.tokenizer = load_tokenizer(model)
        self.model = load_causal_lm(model, dtype="float32")
        self.context_length = self.model.config.max_position_embeddings
        self.stats = GenerationStats()

    def prompt_tokens(self, conversations):
        return [len(encode_chat(self.tokenizer, c)) for c in conversations]

    @torch.inference_mode()
    def chat(self, conversations, params: SamplingParams):
        start, out = time.perf_counter(), []
        for conv in conversations:
            ids = torch.tensor([encode_chat(self.tokenizer, conv)])
            gen = self.model.generate(ids, max_new_tokens=params.max_new_tokens, do_sample=True,
                                      temperature=params.temperature, top_p=params.top_p)
            new = gen[0, ids.shape[1]:]
            self.stats.generated_tokens += len(new)
            out.append(self.tokenizer.decode(new, skip_special_tokens=True).strip())
        self.stats.generation_seconds += time.perf_counter() - start
        return out

    def close(self):
        pass


def job(args, prompts: int, out: Path, generator=None, chunk_size=None, **engine) -> dict:
    cfg = ReviseConfig(prompts=str(ROOT / "data" / "red_team.jsonl"), out=str(out), limit=prompts,
                       rounds=args.rounds, max_new_tokens=args.max_new_tokens,
                       chunk_size=chunk_size or prompts, seed=0, **engine)
    start = time.perf_counter()
    stats = run(cfg, generator=generator)
    wall = time.perf_counter() - start
    return {"prompts": prompts, "generated_tokens": stats["generated_tokens"],
            "engine_seconds": stats["generation_seconds"], "wall_seconds": round(wall, 2),
            "tokens_per_second": round(stats["generated_tokens"] / wall, 2)}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_variant(args, variant: str) -> dict:
    """One variant, in this process."""
    out = Path(tempfile.mkdtemp(prefix=f"bench-{variant}-"))
    if variant == "naive":
        start = time.perf_counter()
        gen = NaiveGenerator()
        load = time.perf_counter() - start
        result = job(args, args.naive_prompts, out, generator=gen)
    elif variant in ("hf", "hf_fresh"):
        start = time.perf_counter()
        gen = make_generator("hf", None, dtype=args.dtype, batch_size=args.batch_size,
                             reuse_prefix=variant == "hf")
        load = time.perf_counter() - start
        result = job(args, args.prompts, out, generator=gen, chunk_size=args.batch_size)
        result["reused_prompt_tokens"] = gen.prefix.reused_tokens
        result["prompt_tokens"] = gen.prefix.prompt_tokens
    elif variant == "openai":
        port = free_port()
        exe = Path(sys.executable).parent / "transformers"
        start = time.perf_counter()
        server = subprocess.Popen([str(exe), "serve", str(resolve()), "--host", "127.0.0.1",
                                   "--port", str(port), "--dtype", args.dtype,
                                   "--continuous-batching"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    if server.poll() is not None:
                        raise RuntimeError("transformers serve exited at start") from None
                    time.sleep(0.5)
            load = time.perf_counter() - start
            result = job(args, args.prompts, out, engine="openai",
                         base_url=f"http://127.0.0.1:{port}/v1", model=str(resolve()),
                         concurrency=args.prompts)
            status = Path(f"/proc/{server.pid}/status").read_text()
            peak_line = next(x for x in status.splitlines() if x.startswith("VmHWM"))
            server_peak = int(peak_line.split()[1])
            result["server_peak_rss_mb"] = round(server_peak / 1024, 1)
        finally:
            server.kill()
            server.wait()
    elif variant == "vllm":
        start = time.perf_counter()
        gen = make_generator("vllm", None, dtype=args.dtype)
        load = time.perf_counter() - start
        result = job(args, args.prompts, out, generator=gen)
        gen.close()
    elif variant == "raw_vllm":
        result, load = raw_vllm(args)
    else:
        raise SystemExit(f"unknown variant {variant}")
    result.update(variant=variant, load_seconds=round(load, 2), peak_rss_mb=peak_rss_mb())
    return result


def raw_vllm(args):
    """vLLM by hand on the conversations cai's job sends, read back from the hf-format records."""
    import vllm

    from cai.constitution import load, sample_principles
    from cai.foundation.inputs import load_prompts
    from cai.foundation.templates import Templates
    from cai.revise.job import Conversations

    start = time.perf_counter()
    from cai.generation.vllm import CPU_DEFAULTS

    cpu = not torch.cuda.is_available()
    llm = vllm.LLM(model=str(resolve()), dtype=args.dtype, gpu_memory_utilization=0.3
                   if cpu else 0.9, seed=0, **(CPU_DEFAULTS if cpu else {}))
    load_s = time.perf_counter() - start
    items = load_prompts(str(ROOT / "data" / "red_team.jsonl"))[:args.prompts]
    c = load()
    convs = Conversations(c, Templates(), 2, 0)
    sp = vllm.SamplingParams(max_tokens=args.max_new_tokens, temperature=0.7, top_p=0.95, seed=0)
    tokens, t0 = 0, time.perf_counter()

    def chat(conversations):
        nonlocal tokens
        outs = llm.chat(conversations, sp, use_tqdm=False)
        tokens += sum(len(o.outputs[0].token_ids) for o in outs)
        return [o.outputs[0].text.strip() for o in outs]

    latest = chat([[{"role": "user", "content": it["prompt"]}] for it in items])
    drawn = [sample_principles(c.critique_revision, it["id"], args.rounds, 0) for it in items]
    for r in range(args.rounds):
        ps = [d[r] for d in drawn]
        crit = chat([convs.critique(it["id"], p, it["prompt"], a)
                     for it, p, a in zip(items, ps, latest)])
        latest = chat([convs.revision(it["id"], p, it["prompt"], a, k)
                       for it, p, a, k in zip(items, ps, latest, crit)])
    wall = time.perf_counter() - t0
    return {"prompts": len(items), "generated_tokens": tokens, "wall_seconds": round(wall, 2),
            "tokens_per_second": round(tokens / wall, 2)}, load_s


def sweep(args) -> dict:
    """Plain chat throughput of the hf engine over batch size and dtype (one process)."""
    from cai.foundation.inputs import load_prompts

    items = load_prompts(str(ROOT / "data" / "red_team.jsonl"))[:args.prompts]
    convs = [[{"role": "user", "content": it["prompt"]}] for it in items]
    rows = []
    for dtype in ("float32", "bfloat16"):
        gen = make_generator("hf", None, dtype=dtype, batch_size=1)
        for batch in args.sweep_batches:
            gen.batch_size = batch
            gen.stats = GenerationStats()
            gen.chat(convs, SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7,
                                           seed=0))
            rows.append({"dtype": dtype, "batch_size": batch,
                         "tokens_per_second": round(gen.stats.generated_tokens
                                                    / gen.stats.generation_seconds, 2)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"sweep": rows, "prompts": len(items), "max_new_tokens": args.max_new_tokens,
            "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="naive,hf,openai")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--naive-prompts", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--sweep-batches", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 4, 8, 16, 32])
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant and exit
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "generation.json"))
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args, args.variant)))
        return
    if args.sweep:
        summary = sweep(args)
    else:
        results = {}
        for variant in args.variants.split(","):
            cmd = [sys.executable, __file__, "--variant", variant, "--prompts", str(args.prompts),
                   "--naive-prompts", str(args.naive_prompts), "--rounds", str(args.rounds),
                   "--max-new-tokens", str(args.max_new_tokens), "--dtype", args.dtype,
                   "--batch-size", str(args.batch_size)]
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "TQDM_DISABLE": "1"})
            found = [line for line in proc.stdout.splitlines() if line.startswith('{"prompts"')]
            if found:  # vLLM's worker shutdown can set a non-zero exit code after the result
                results[variant] = {**json.loads(found[-1]), "exit_code": proc.returncode}
            else:
                results[variant] = {"error": proc.stderr.strip().splitlines()[-8:],
                                    "exit_code": proc.returncode}
            print(json.dumps({variant: results[variant]}), file=sys.stderr, flush=True)
        tps = {k: v.get("tokens_per_second") for k, v in results.items()}
        ratios = {}
        for name in ("hf", "hf_fresh", "openai", "vllm"):
            if tps.get(name) and tps.get("naive"):
                ratios[f"{name}_vs_naive"] = round(tps[name] / tps["naive"], 2)
        if tps.get("hf") and tps.get("hf_fresh"):
            ratios["hf_vs_hf_fresh"] = round(tps["hf"] / tps["hf_fresh"], 3)
        if tps.get("vllm") and tps.get("raw_vllm"):
            ratios["cai_vllm_vs_raw_vllm"] = round(tps["vllm"] / tps["raw_vllm"], 3)
        summary = {"job": {"prompts": args.prompts, "rounds": args.rounds,
                           "max_new_tokens": args.max_new_tokens, "dtype": args.dtype,
                           "hf_batch_size": args.batch_size},
                   "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                               "cuda": torch.cuda.is_available()},
                   "results": results, "ratios": ratios}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        args.output = args.output.replace("generation.json", "generation_sweep.json")
    Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
