"""`cai train sft` on the tiny model: equivalences (accumulation, resume, DDP), QLoRA, export."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cai
from safetensors.torch import load_file

from cai.foundation.errors import CaiError
from cai.train import sft

WORDS = ("the a cat dog runs jumps over under quickly slowly red blue green house tree river "
         "safe help sorry cannot will would please thanks").split()


def write_revise_folder(folder: Path, seed: int, n: int = 32, kind=lambda i: None) -> Path:
    """A `cai revise`-shaped output folder of `n` short random conversations; `kind(i)` gives
    row i's `kind` (a revision says "sorry cannot help"), None for no kind."""
    rng = random.Random(seed)
    with open(folder / "data.jsonl", "w") as f:
        for i in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
            a = "sorry cannot help" if kind(i) == "revision" else \
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 24)))
            row = {"id": f"r{i}", "prompt": q, "response": a, "rounds": [],
                   "messages": [{"role": "user", "content": q},
                                {"role": "assistant", "content": a}]}
            f.write(json.dumps({**row, **({"kind": kind(i)} if kind(i) else {})}) + "\n")
    return folder


@pytest.fixture(scope="module")
def conversations(tmp_path_factory) -> Path:
    """A `cai revise`-shaped output folder with 32 short conversations."""
    return write_revise_folder(tmp_path_factory.mktemp("revise"), seed=0)


def config(tiny_model, data, out, **options):
    """A resolved sft config for the tiny model; options are `section.key=value` strings."""
    base = {"model.name": tiny_model, "data.path": data, "data.max_length": 128,
            "data.eval_fraction": 0, "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0,
            "training.output_dir": out, "training.report_to": "none",
            "training.logging_steps": 1, "training.disable_tqdm": True,
            "training.save_strategy": "no", "training.learning_rate": 1e-3,
            "training.seed": 0}
    base.update({k.replace("__", "."): v for k, v in options.items()})
    return sft.load_config(None, [(k, str(v)) for k, v in base.items()])


def losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def adapter(out: Path) -> dict:
    return load_file(out / "adapter_model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), k


def test_accumulation_1x8_equals_8x1(tiny_model, conversations, tmp_path):
    runs = {}
    for name, bs, ga in (("1x8", 8, 1), ("8x1", 1, 8)):
        out = tmp_path / name
        sft.train(config(tiny_model, conversations, out, data__packing=False, training__max_steps=3,
                         training__per_device_train_batch_size=bs,
                         training__gradient_accumulation_steps=ga))
        runs[name] = (losses(out), adapter(out))
    assert len(runs["1x8"][0]) == 3
    assert runs["1x8"][0] == pytest.approx(runs["8x1"][0], abs=1e-5)
    assert_same_weights(runs["1x8"][1], runs["8x1"][1], atol=1e-6)
    # and training moved the adapter: B starts at zero
    assert any(v.abs().max() > 0 for k, v in runs["1x8"][1].items() if "lora_B" in k)


def test_resume_equals_uninterrupted(tiny_model, conversations, tmp_path):
    """Dropout on, packing on, several epochs: data order, optimizer, scheduler and RNG must all
    come back from the checkpoint for the losses to match."""
    opts = dict(data__packing=True, data__max_length=128, lora__dropout=0.1,
                training__per_device_train_batch_size=4, training__max_steps=6,
                training__save_strategy="steps", training__save_steps=3,
                training__lr_scheduler_type="cosine", training__warmup_steps=2)
    whole = tmp_path / "whole"
    sft.train(config(tiny_model, conversations, whole, **opts))
    state = json.loads((whole / "trainer_state.json").read_text())
    assert state["epoch"] > 1  # the run crosses an epoch boundary

    # an interrupted run: its folder holds only what a kill after step 3 leaves behind
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-3", resumed / "checkpoint-3")
    with pytest.raises(CaiError, match="pass --resume"):
        sft.train(config(tiny_model, conversations, resumed, **opts))
    sft.train(config(tiny_model, conversations, resumed, **opts), resume=True)
    assert losses(resumed) == pytest.approx(losses(whole), abs=1e-6, rel=0)
    assert_same_weights(adapter(resumed), adapter(whole), atol=1e-6)


def test_resume_without_checkpoint_is_an_error(tiny_model, conversations, tmp_path):
    with pytest.raises(CaiError, match="no checkpoint"):
        sft.train(config(tiny_model, conversations, tmp_path / "none"), resume=True)


def test_qlora_trains_and_merges_into_unquantized_base(tiny_model, conversations, tmp_path):
    bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs the qlora extra")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cai.train.common import model_and_tokenizer
    from cai.train.export import export

    out = tmp_path / "qlora"
    cfg = config(tiny_model, conversations, out, quantization__load_in_4bit=True,
                 data__limit=4, training__num_train_epochs=8, training__learning_rate=1e-2,
                 training__per_device_train_batch_size=4)
    model, _ = model_and_tokenizer(cfg)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 14  # 2 layers x 7
    del model
    sft.train(cfg)
    history = losses(out)
    assert len(history) == 8 and history[-1] < history[0] - 0.1  # same 4 examples each step
    weights = adapter(out)
    assert all(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)  # all trained

    merged = export(out, tmp_path / "merged", merge=True)
    config_json = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config_json
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        want = PeftModel.from_pretrained(base, out).eval()(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()(ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter is in there


def test_qlora_without_bitsandbytes_is_a_clear_error(tiny_model, monkeypatch):
    from cai.train.loading import load_for_training

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(CaiError, match=r"needs bitsandbytes: pip install 'cai\[qlora\]'"):
        load_for_training(tiny_model, load_in_4bit=True)


def test_models_to_train_use_no_hub_kernels(tiny_model):
    """transformers (with the `kernels` package) turns hub kernels on by default and fetches
    them for the model's device whenever train/eval mode changes: on a GPU with no network,
    DPO's reference pass and PPO's sampling failed there (docs/gpu.md). Trained models opt out."""
    from transformers import AutoModelForCausalLM

    from cai.train.loading import load_for_training

    assert AutoModelForCausalLM.from_pretrained(tiny_model).use_kernels  # the default is on
    model = load_for_training(tiny_model)
    assert model.use_kernels is False
    model.eval(), model.train()  # a mode change keeps it off
    assert model.use_kernels is False
    assert load_for_training(tiny_model, num_labels=1).use_kernels is False


def _kl_to_base(out: Path, tiny_model, conversations) -> float:
    """Mean KL(base || trained) per assistant token of the training data."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.train import data as sft_data
    from cai.train.losses import token_kl

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                      out).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    cfg = config(tiny_model, conversations, out)
    rows, _ = sft_data.build(cfg.data, tokenizer, True, lambda *_: None)
    total = count = 0.0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            keep = torch.tensor([row["labels"]])[:, 1:] != -100   # (1, T-1)
            logits = model(ids).logits[:, :-1]                      # (1, T-1, V)
            with model.disable_adapter():
                ref = model(ids).logits[:, :-1]
            total += token_kl(logits, ref)[keep].sum().item()
            count += keep.sum().item()
    return total / count


def test_kl_coef_keeps_the_model_near_its_base(tiny_model, conversations, tmp_path):
    """sft.kl_coef adds KL(base || model) at the trained tokens: the trained model ends nearer
    its base on the same data than without it, and the logs show the term."""
    kl = {}
    for coef in (0, 5):
        out = tmp_path / f"kl{coef}"
        sft.train(config(tiny_model, conversations, out, training__max_steps=8,
                         training__learning_rate=1e-2, sft__kl_coef=coef))
        kl[coef] = _kl_to_base(out, tiny_model, conversations)
        state = json.loads((out / "trainer_state.json").read_text())
        logged = [h["kl"] for h in state["log_history"] if "kl" in h]
        assert (len(logged) == 8) is bool(coef)
        if coef:
            assert logged[0] == pytest.approx(0.0, abs=1e-6)  # step 1: the adapter is zero
            assert max(logged) > 0
    assert kl[0] > 0.01 and kl[5] < kl[0] / 2
    with pytest.raises(CaiError, match="sft.kl_coef needs LoRA"):
        sft.train(config(tiny_model, conversations, tmp_path / "full", lora__enabled=False,
                         sft__kl_coef=1, training__max_steps=1))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """A `cai revise`-shaped folder: 8 revisions that all say one thing, 24 helpful rows."""
    return write_revise_folder(tmp_path_factory.mktemp("mixed"), seed=1,
                               kind=lambda i: "revision" if i < 8 else "helpful")


def _answer_nll(model, tokenizer, rows) -> float:
    """Mean NLL per assistant token of these rows' conversations under `model`."""
    from cai.train.data import tokenize_conversation
    from cai.train.losses import token_logps

    total = count = 0.0
    with torch.no_grad():
        for row in rows:
            ids, labels = tokenize_conversation(tokenizer, row["messages"])
            logits = model(torch.tensor([ids])).logits[:, :-1]
            targets = torch.tensor([labels])[:, 1:]
            total -= token_logps(logits, targets)[targets != -100].sum().item()
            count += (targets != -100).sum().item()
    return total / count


def test_kl_only_kinds_imitates_revisions_and_keeps_helpful_rows_at_the_base(tiny_model, mixed,
                                                                              tmp_path):
    """With sft.kl_only_kinds [helpful], the helpful rows leave the NLL: the first step's loss
    is the revisions' NLL summed over all target tokens (the KL is 0 while the adapter is),
    and after training the helpful answers' NLL has moved far less than when imitated, while
    the revisions are learned either way."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.train.data import tokenize_conversation

    rows = [json.loads(line) for line in (mixed / "data.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    revisions = [r for r in rows if r["kind"] == "revision"]
    helpful = [r for r in rows if r["kind"] == "helpful"]
    n_revision = sum(len([x for x in tokenize_conversation(tokenizer, r["messages"])[1][1:]
                          if x != -100]) for r in revisions)
    n_all = sum(len([x for x in tokenize_conversation(tokenizer, r["messages"])[1][1:]
                     if x != -100]) for r in rows)
    expected_first = _answer_nll(base, tokenizer, revisions) * n_revision / n_all
    nll = {}
    for name, extra in (("imitated", {}), ("anchored", {"sft__kl_only_kinds": "helpful"})):
        out = tmp_path / name
        sft.train(config(tiny_model, mixed, out, data__packing=False, training__max_steps=12,
                         training__per_device_train_batch_size=32,
                         training__learning_rate=1e-2, sft__kl_coef=1, **extra))
        if name == "anchored":
            assert losses(out)[0] == pytest.approx(expected_first, rel=1e-3)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                          out).eval()
        nll[name] = (_answer_nll(model, tokenizer, revisions),
                     _answer_nll(model, tokenizer, helpful))
    base_nll = (_answer_nll(base, tokenizer, revisions), _answer_nll(base, tokenizer, helpful))
    for name in nll:  # the revisions are learned (the base: about ln V, 10.8)
        assert nll[name][0] < base_nll[0] - 0.5
    moved = {name: abs(nll[name][1] - base_nll[1]) for name in nll}
    assert moved["anchored"] < moved["imitated"] / 3


def test_kl_only_kinds_errors(tiny_model, mixed, conversations, tmp_path):
    with pytest.raises(CaiError, match="sft.kl_only_kinds needs sft.kl_coef"):
        sft.train(config(tiny_model, mixed, tmp_path / "a", sft__kl_only_kinds="helpful"))
    with pytest.raises(CaiError, match="no row of kind helpful"):
        sft.train(config(tiny_model, conversations, tmp_path / "b", sft__kl_coef=1,
                         sft__kl_only_kinds="helpful"))
    with pytest.raises(CaiError, match="every row is of kind"):
        sft.train(config(tiny_model, mixed, tmp_path / "c", sft__kl_coef=1,
                         sft__kl_only_kinds="helpful,revision"))


def test_kl_direction_reverse_is_the_term_the_trainer_adds(tiny_model, mixed, tmp_path):
    """sft.kl_direction picks the KL the trainer adds: on one batch, with an adapter moved off
    zero, the loss is NLL + c * KL(base || model) (forward) or NLL + c * KL(model || base)
    (reverse), each computed here by hand; a bad value is a one-line error."""
    from cai.train import common
    from cai.train import data as sft_data
    from cai.train.losses import IGNORE_INDEX, token_kl

    cfg = config(tiny_model, mixed, tmp_path / "out", data__packing=False, sft__kl_coef=2)
    model, tokenizer = common.model_and_tokenizer(cfg)
    with torch.no_grad():  # peaked distributions, and an adapter off zero: the KLs differ
        model.get_output_embeddings().weight.mul_(30)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    rows, _ = sft_data.build(cfg.data, tokenizer, True, lambda *_: None)
    batch = sft_data.Collator(tokenizer.pad_token_id)(rows[:4])
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, :-1]
        with model.disable_adapter():
            ref = model(input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"]).logits[:, :-1]
    logp = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    n = keep.sum()
    nll = -(logp[keep]).sum() / n
    want = {"forward": nll + 2 * token_kl(logits, ref)[keep].sum() / n,
            "reverse": nll + 2 * token_kl(logits, ref, reverse=True)[keep].sum() / n}
    assert abs(want["forward"] - want["reverse"]) > 0.1
    model.eval()
    for direction, expected in want.items():
        trainer = sft.SFTTrainer(model=model, args=common.training_arguments(cfg),
                                 processing_class=tokenizer, kl_coef=2,
                                 kl_reverse=direction == "reverse")
        inputs = {k: v for k, v in batch.items()}
        with torch.no_grad():
            loss = trainer.compute_loss(model, inputs, num_items_in_batch=n)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-4), direction
    with pytest.raises(CaiError, match="sft.kl_direction must be forward or reverse"):
        sft.train(config(tiny_model, mixed, tmp_path / "bad", sft__kl_coef=1,
                         sft__kl_direction="backward"))


def test_full_fine_tuning(tiny_model, conversations, tmp_path):
    out = tmp_path / "full"
    sft.train(config(tiny_model, conversations, out, lora__enabled=False, training__max_steps=2))
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    before, after = load_file(Path(tiny_model) / "model.safetensors"), \
        load_file(out / "model.safetensors")
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"],
                           after["model.layers.0.mlp.up_proj.weight"])


def test_gradient_checkpointing_gives_the_same_update(tiny_model, conversations, tmp_path):
    runs = []
    for gc in (False, True):
        out = tmp_path / f"gc-{gc}"
        sft.train(config(tiny_model, conversations, out, training__max_steps=2,
                         training__gradient_checkpointing=gc))
        runs.append((losses(out), adapter(out)))
    assert runs[0][0] == pytest.approx(runs[1][0], abs=1e-6)
    assert_same_weights(runs[0][1], runs[1][1], atol=1e-6)


def test_cli_train_export_and_revise_loads_it(tiny_model, conversations, tmp_path, prompts_file):
    out, merged = tmp_path / "sft", tmp_path / "merged"
    r = run_cai("train", "sft", ROOT / "configs" / "sft.yaml", "--model.name", tiny_model,
                "--data.path", conversations, "--training.output_dir", out,
                "--training.max_steps", 2, "--training.save_steps", 1,
                "--training.learning_rate", 1e-2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mean train loss" in r.stdout and "eval loss" in r.stdout
    for name in ("adapter_model.safetensors", "adapter_config.json", "cai_config.yaml",
                 "chat_template.jinja", "checkpoint-2/optimizer.pt", "checkpoint-2/scheduler.pt",
                 "checkpoint-2/rng_state.pth", "checkpoint-2/trainer_state.json"):
        assert (out / name).exists(), name
    assert list((out / "runs").rglob("events.out.tfevents.*"))  # tensorboard logs
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"

    r = run_cai("export", "--adapter", out, "--out", merged, "--merge")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (merged / "model.safetensors").is_file() and (merged / "chat_template.jinja").is_file()
    r = run_cai("export", "--adapter", out, "--out", merged, "--merge")
    assert r.returncode == 2 and "not empty" in r.stderr

    rev = tmp_path / "rev"
    r = run_cai("revise", "--model", merged, "--prompts", prompts_file, "--limit", 1,
                "--rounds", 1, "--max-new-tokens", 4, "--out", rev, "--dtype", "float32")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((rev / "data.jsonl").read_text().splitlines()) == 1


def test_cli_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  path: x.jsonl\n  pakcing: true\ntraining:\n  output_dir: o\n")
    r = run_cai("train", "sft", bad)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"cai: error: {bad}:3: unknown key 'data.pakcing' (did you mean 'data.packing'?)"]


def test_ddp_two_processes_match_one_on_the_same_global_batch(tiny_model, conversations,
                                                             tmp_path):
    """2 processes x 2 examples each == 1 process x 2 examples x 2 accumulation steps.

    With the random sampler, rank r takes micro-batch r of each step from the same seeded
    permutation that one process walks through micro-batch by micro-batch, so each optimizer
    step sees the same examples. (Length grouping forms its groups from batch x accumulation,
    which differs between the two runs.)"""
    opts = ["--model.name", tiny_model, "--data.path", conversations, "--data.max_length", "128",
            "--data.eval_fraction", "0", "--data.packing", "false",
            "--training.train_sampling_strategy", "random",
            "--lora.dropout", "0",
            "--training.report_to", "none", "--training.logging_steps", "1",
            "--training.save_strategy", "no", "--training.max_steps", "3",
            "--training.learning_rate", "1e-3", "--training.disable_tqdm", "true",
            "--training.per_device_train_batch_size", "2"]
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2",
           "-m", "cai.cli", "train", "sft",
           str(ROOT / "configs" / "sft.yaml"), *map(str, opts), "--training.output_dir", str(ddp),
           "--training.gradient_accumulation_steps", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("mean train loss") == 1  # printed by rank 0 only
    state = json.loads((ddp / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2 and state["global_step"] == 3

    single = tmp_path / "single"
    pairs = [(k[2:], str(v)) for k, v in zip(opts[::2], opts[1::2])]
    pairs += [("training.output_dir", str(single)), ("training.gradient_accumulation_steps", "2")]
    sft.train(sft.load_config(ROOT / "configs" / "sft.yaml", pairs))
    assert losses(ddp) == pytest.approx(losses(single), abs=1e-5)
    assert_same_weights(adapter(ddp), adapter(single), atol=1e-5)
