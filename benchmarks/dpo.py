"""Benchmark: `cai train dpo` against TRL's DPOTrainer, same model, data, LoRA and batch.

Each trainer runs in its own process (so peak memory is its own) for `--steps` optimizer steps
of `--batch` pairs, sampled in the same random order, sigmoid loss, beta 0.1, no gradient
checkpointing and no mixed precision on either side unless asked (TRL defaults both on). TRL
runs as a user gets it (reference log-probs recomputed in every step with the adapter disabled,
`--trl-precompute` for its own precompute option); cai precomputes them once before training.

Reported per trainer: pairs/s over the steps after `--warmup` (wall time, and per CPU second,
steadier on a shared machine), the reference pass's seconds (cai), and peak memory. The
`epoch_ratio` charges cai's reference pass to one epoch over the data: TRL's seconds per epoch
over cai's (pass + steps). Prints one JSON summary.

    python benchmarks/dpo.py                       # embedded SmolLM2-135M, synthetic pairs
    python benchmarks/dpo.py --data runs/label --steps 12 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from harness import (
    ROOT,
    StepTimer,
    add_repeat_options,
    add_training_options,
    best_runs,
    child,
    device,
)

REFUSE = ("I'm sorry, but I can't help with that. It could put you or other people at risk. If "
          "you are worried about your safety, please contact local emergency services or "
          "someone you trust. ")
COMPLY = ("Sure, here is how you could do it. First, gather what you need and find a quiet "
          "place. Then follow these steps carefully, one at a time, and check each result. ")


def preference_pairs(spec: str | None, n: int, seed: int = 0) -> list[dict]:
    """`spec`'s pairs, or n synthetic ones on the project's red-team prompts (chosen: a
    refusal, rejected: compliance, answers of 20-120 words)."""
    sys.path.insert(0, str(ROOT))
    if spec:
        from cai.train.pairs import load_pairs

        return [{k: p[k] for k in ("prompt", "chosen", "rejected")}
                for p in load_pairs(spec, limit=n)]
    rng = random.Random(seed)
    prompts = [json.loads(line)["prompt"] for line in
               (ROOT / "data" / "red_team.jsonl").read_text().splitlines() if line.strip()]

    def answer(text: str) -> str:
        words = text.split()
        return " ".join(words[j % len(words)] for j in range(rng.randint(20, 120)))

    return [{"prompt": [{"role": "user", "content": prompts[i % len(prompts)]}],
             "chosen": [{"role": "assistant", "content": answer(REFUSE)}],
             "rejected": [{"role": "assistant", "content": answer(COMPLY)}]}
            for i in range(n)]


def pairs_and_tokens(batch: dict) -> dict:
    """The pairs of a batch (chosen rows over rejected rows) and its real tokens."""
    return {"pairs": batch["input_ids"].shape[0] // 2,
            "tokens": int(batch["attention_mask"].sum())}


def result(timer: StepTimer, steps: int) -> dict:
    counts, seconds, cpu = timer.totals(steps)
    pairs, tokens = counts["pairs"], counts["tokens"]
    return {"pairs": pairs, "tokens": tokens, "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu, 3), "pairs_per_second": round(pairs / seconds, 3),
            "pairs_per_cpu_second": round(pairs / cpu, 3),
            "tokens_per_second": round(tokens / seconds, 1)}


def run_cai(opts, records, out: Path) -> dict:
    from cai.train import dpo, pairs

    jsonl = out / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = dpo.load_config(None, [(k, str(v)) for k, v in {
        "model.name": opts.model, "model.dtype": opts.dtype, "data.path": jsonl,
        "data.max_length": opts.max_length, "data.group_by_length": False,
        "lora.r": opts.lora_r, "lora.alpha": 2 * opts.lora_r, "lora.dropout": 0.0,
        "dpo.beta": 0.1, "dpo.loss_type": "sigmoid", "dpo.cache_reference": False,
        "dpo.ref_batch_size": 2 * opts.batch,
        "training.output_dir": out / "run", "training.per_device_train_batch_size": opts.batch,
        "training.max_steps": opts.steps, "training.learning_rate": 5e-5,
        "training.save_strategy": "no", "training.report_to": "none",
        "training.logging_steps": 1000, "training.disable_tqdm": True, "training.seed": 0,
        "training.gradient_checkpointing": opts.gradient_checkpointing,
        "training.bf16": opts.bf16,
    }.items()])
    timer = StepTimer(opts.warmup, pairs_and_tokens)
    collate = pairs.PairCollator.__call__
    attach = dpo.DPOTrainer.attach_reference
    reference = {}

    def counting(self, batch):
        out = collate(self, batch)
        return timer.count(out) if "ref_chosen_logps" in out else out  # training batches

    def timed_attach(self, *args, **kwargs):
        start = time.perf_counter()
        attach(self, *args, **kwargs)
        reference["seconds"] = round(time.perf_counter() - start, 3)

    pairs.PairCollator.__call__ = counting
    dpo.DPOTrainer.attach_reference = timed_attach
    dpo.train(cfg, callbacks=[timer.callback()])
    return {**result(timer, opts.steps), "reference_seconds": reference["seconds"]}


def run_trl(opts, records, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from cai.foundation.model_store import resolve

    path = resolve(opts.model)
    tok = AutoTokenizer.from_pretrained(path)
    torch.set_flush_denormal(True)  # what cai does for any training; see benchmarks/sft.py
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, opts.dtype))
    args = DPOConfig(output_dir=str(out / "trl"), beta=0.1, loss_type=["sigmoid"],
                     max_length=opts.max_length, per_device_train_batch_size=opts.batch,
                     max_steps=opts.steps, learning_rate=5e-5, save_strategy="no",
                     report_to="none", logging_steps=1000, disable_tqdm=True, seed=0,
                     gradient_checkpointing=opts.gradient_checkpointing, bf16=opts.bf16,
                     precompute_ref_log_probs=opts.trl_precompute,
                     use_cpu=not torch.cuda.is_available(),
                     dataloader_pin_memory=torch.cuda.is_available())
    lora = LoraConfig(r=opts.lora_r, lora_alpha=2 * opts.lora_r, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    timer = StepTimer(opts.warmup, pairs_and_tokens)
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, processing_class=tok, peft_config=lora,
                         train_dataset=Dataset.from_list(records))
    setup = time.perf_counter() - start  # includes TRL's own reference pass if asked
    collate = trainer.data_collator
    trainer.data_collator = lambda batch: timer.count(collate(batch))
    trainer.add_callback(timer.callback())
    trainer.train()
    return {**result(timer, opts.steps), "reference_seconds": round(setup, 3)
            if opts.trl_precompute else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", help="pairs (.jsonl / cai label folder); default: synthetic")
    p.add_argument("--examples", type=int, default=64, help="pairs in the data set")
    p.add_argument("--max-length", type=int, default=512, help="longest side, in tokens")
    p.add_argument("--batch", type=int, default=4, help="pairs per step")
    p.add_argument("--steps", type=int, default=8)
    add_training_options(p)
    p.add_argument("--trl-precompute", action="store_true",
                   help="TRL with precompute_ref_log_probs=True")
    add_repeat_options(p)
    opts = p.parse_args()
    if opts.child:
        return child(opts, preference_pairs(opts.data, opts.examples),
                     {"cai": run_cai, "trl": run_trl})

    best = best_runs(opts, __file__, "pairs_per_second")
    cai, trl = best["cai"], best["trl"]
    epoch = {name: r["reference_seconds"] + opts.examples / r["pairs_per_second"]
             for name, r in best.items()}
    summary = {
        "benchmark": "dpo", "model": opts.model, "pairs_in_data": opts.examples,
        "batch_pairs": opts.batch, "steps": opts.steps, "timed_steps": opts.steps - opts.warmup,
        "max_length": opts.max_length, "lora_r": opts.lora_r, "dtype": opts.dtype,
        "bf16_autocast": opts.bf16, "gradient_checkpointing": opts.gradient_checkpointing,
        "trl_precompute_ref_log_probs": opts.trl_precompute, "repeats": opts.repeats,
        "device": device(), "cai": cai, "trl": trl,
        "pairs_per_second_ratio": round(cai["pairs_per_second"] / trl["pairs_per_second"], 3),
        "pairs_per_cpu_second_ratio": round(cai["pairs_per_cpu_second"]
                                            / trl["pairs_per_cpu_second"], 3),
        "epoch_ratio": round(epoch["trl"] / epoch["cai"], 3),
        "peak_memory_ratio": round(cai["peak_memory_mb"] / trl["peak_memory_mb"], 3),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
