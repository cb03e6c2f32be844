"""Benchmark: `cai train sft` against TRL's SFTTrainer, same model, data, LoRA and batch.

Each trainer runs in its own process (so peak memory is its own) for `--steps` optimizer steps
with packing on; tokens/s counts the real (non-padding) tokens of the steps after `--warmup`,
divided by their wall time (and, steadier on a shared machine, by the process's CPU time).
`--repeats N` alternates the two N times and keeps each one's best run. Both train on assistant
tokens only (TRL through a copy of the chat template with `{% generation %}` markers). Prints one
JSON summary with cai/TRL ratios.

    python benchmarks/sft.py                      # embedded SmolLM2-135M, 512-token rows
    python benchmarks/sft.py --data runs/revise --steps 20 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import random
import sys
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

FILLER = ("I can't help with that, but here is some safer information that may be useful. "
          "If you are worried about your safety, please contact local emergency services. "
          "There are many resources available, and talking to someone you trust can help. ")


def conversations(spec: str | None, n: int, seed: int = 0) -> list[list[dict]]:
    """`spec`'s conversations, or n synthetic ones on the project's red-team prompts."""
    sys.path.insert(0, str(ROOT))
    from cai.train.data import load_conversations

    if spec:
        return load_conversations(spec, limit=n)
    rng = random.Random(seed)
    prompts = [json.loads(line)["prompt"] for line in
               (ROOT / "data" / "red_team.jsonl").read_text().splitlines() if line.strip()]
    words = FILLER.split()
    out = []
    for i in range(n):
        k = rng.randint(20, 180)  # answer length in words
        answer = " ".join(words[(7 * i + j) % len(words)] for j in range(k))
        out.append([{"role": "user", "content": prompts[i % len(prompts)]},
                    {"role": "assistant", "content": answer}])
    return out


def real_tokens(batch: dict) -> dict:
    """The real (non-padding) tokens of a batch, whichever way it is laid out."""
    if "attention_mask" in batch:
        n = int(batch["attention_mask"].sum())
    elif "n_tokens" in batch:
        n = int(batch["n_tokens"])
    else:  # padding-free: one flattened row of real tokens
        n = int(batch["input_ids"].numel())
    return {"tokens": n}


def result(timer: StepTimer, steps: int) -> dict:
    counts, seconds, cpu = timer.totals(steps)
    timed = counts["tokens"]
    return {"tokens": timed, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "tokens_per_second": round(timed / seconds, 2),
            "tokens_per_cpu_second": round(timed / cpu, 2)}


def run_cai(opts, convs, out: Path) -> dict:
    from cai.train import data, sft

    jsonl = out / "data.jsonl"
    jsonl.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    cfg = sft.load_config(None, [(k, str(v)) for k, v in {
        "model.name": opts.model, "model.dtype": opts.dtype, "data.path": jsonl,
        "data.max_length": opts.max_length, "data.packing": True,
        "lora.r": opts.lora_r, "lora.alpha": 2 * opts.lora_r, "lora.dropout": 0.05,
        "training.output_dir": out / "run", "training.per_device_train_batch_size": opts.batch,
        "training.max_steps": opts.steps, "training.learning_rate": 1e-4,
        "training.save_strategy": "no", "training.report_to": "none",
        "training.logging_steps": 1000, "training.disable_tqdm": True, "training.seed": 0,
        "training.gradient_checkpointing": opts.gradient_checkpointing,
        "training.bf16": opts.bf16,
    }.items()])
    timer = StepTimer(opts.warmup, real_tokens)
    collate = data.Collator.__call__

    def counting(self, batch):
        return timer.count(collate(self, batch))

    data.Collator.__call__ = counting  # count the real tokens of every batch cai builds
    sft.train(cfg, callbacks=[timer.callback()])
    return result(timer, opts.steps)


def run_trl(opts, convs, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from cai.foundation.model_store import resolve

    path = resolve(opts.model)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = marked_template(tok, convs[0])
    if opts.trl_flush_denormal:  # what cai does for any training on a CPU; TRL does not
        torch.set_flush_denormal(True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, opts.dtype))
    args = SFTConfig(output_dir=str(out / "trl"), assistant_only_loss=True, packing=True,
                     max_length=opts.max_length, per_device_train_batch_size=opts.batch,
                     max_steps=opts.steps, learning_rate=1e-4, save_strategy="no",
                     report_to="none", logging_steps=1000, disable_tqdm=True, seed=0,
                     # TRL defaults both to True; the comparison uses the same setting for both
                     gradient_checkpointing=opts.gradient_checkpointing, bf16=opts.bf16,
                     use_cpu=not torch.cuda.is_available(),
                     dataloader_pin_memory=torch.cuda.is_available())
    lora = LoraConfig(r=opts.lora_r, lora_alpha=2 * opts.lora_r, lora_dropout=0.05,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    timer = StepTimer(opts.warmup, real_tokens)
    trainer = SFTTrainer(model=model, args=args, processing_class=tok, peft_config=lora,
                         train_dataset=Dataset.from_list([{"messages": c} for c in convs]))
    collate = trainer.data_collator
    trainer.data_collator = lambda batch: timer.count(collate(batch))
    trainer.add_callback(timer.callback())
    trainer.train()
    return result(timer, opts.steps)


MARKED_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + "
    "'<|im_end|>' }}{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' }}"
    "{% endif %}{{ '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


def marked_template(tok, sample: list[dict]) -> str:
    """SmolLM2's ChatML template with `{% generation %}` around each assistant turn (TRL needs
    them for assistant_only_loss; cai finds the turns without them). Checked to render the
    same text as the model's own template."""
    own = tok.apply_chat_template(sample, tokenize=False)
    tok.chat_template = MARKED_CHATML
    if tok.apply_chat_template(sample, tokenize=False) != own:
        raise SystemExit("benchmark: the TRL side needs SmolLM2's ChatML template")
    return MARKED_CHATML


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", help="conversations (.jsonl / cai revise folder); default: synthetic")
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--max-length", type=int, default=512, help="packed row length")
    p.add_argument("--batch", type=int, default=4, help="rows per step")
    p.add_argument("--steps", type=int, default=12)
    add_training_options(p)
    p.add_argument("--trl-flush-denormal", action="store_true",
                   help="flush denormals to zero in the TRL process too, as cai does")
    add_repeat_options(p)
    opts = p.parse_args()
    if opts.child:
        return child(opts, conversations(opts.data, opts.examples),
                     {"cai": run_cai, "trl": run_trl})

    best = best_runs(opts, __file__, "tokens_per_second")
    summary = {
        "benchmark": "sft", "model": opts.model, "packing": True, "max_length": opts.max_length,
        "batch_rows": opts.batch, "steps": opts.steps, "timed_steps": opts.steps - opts.warmup,
        "lora_r": opts.lora_r, "dtype": opts.dtype, "bf16_autocast": opts.bf16,
        "gradient_checkpointing": opts.gradient_checkpointing, "repeats": opts.repeats,
        "trl_flush_denormal": opts.trl_flush_denormal, "device": device(),
        "cai": best["cai"], "trl": best["trl"],
        "tokens_per_second_ratio": round(best["cai"]["tokens_per_second"]
                                         / best["trl"]["tokens_per_second"], 3),
        "tokens_per_cpu_second_ratio": round(best["cai"]["tokens_per_cpu_second"]
                                             / best["trl"]["tokens_per_cpu_second"], 3),
        "peak_memory_ratio": round(best["cai"]["peak_memory_mb"]
                                   / best["trl"]["peak_memory_mb"], 3),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
