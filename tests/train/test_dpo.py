"""`cai train dpo` on the tiny model: pair tokens, the reference, learning, resume, CLI, export."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TOPICS, refusal_pairs, run_cai, write_jsonl
from conftest import dpo_config as config

from cai.foundation.errors import CaiError
from cai.train import common, dpo, pairs


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory):
    """(train folder shaped like `cai label` output: 64 pairs on 16 topics, held-out .jsonl:
    32 pairs on 8 other topics)."""
    folder = tmp_path_factory.mktemp("label")
    write_jsonl(folder / "data.jsonl", refusal_pairs(TOPICS[:16]))
    held_out = write_jsonl(folder.parent / f"{folder.name}-held-out.jsonl",
                           refusal_pairs(TOPICS[16:], seed=1))
    return folder, held_out


def history(out: Path, key: str = "loss") -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h[key] for h in state["log_history"] if key in h]


# --------------------------------------------------------------------------------------------
# Configs and data


@pytest.mark.parametrize("name", ["dpo.yaml", "dpo-qlora-7b.yaml"])
def test_shipped_configs_load(name):
    cfg = dpo.load_config(ROOT / "configs" / name, [])
    assert cfg.options.soft_labels and cfg.options.loss_type == "sigmoid"
    args = common.training_arguments(cfg)
    assert args.learning_rate == cfg.training["learning_rate"]


def test_config_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(CaiError, match="dpo.loss_type must be one of sigmoid, hinge, ipo, robust"):
        config("m", "d", tmp_path, dpo__loss_type="kto")
    with pytest.raises(CaiError, match="applies to loss_type robust only"):
        config("m", "d", tmp_path, dpo__label_smoothing=0.1)
    # robust DPO on soft labels would correct the labels' noise twice (issue 16, item 5)
    with pytest.raises(CaiError, match="corrects label noise twice"):
        config("m", "d", tmp_path, dpo__loss_type="robust", dpo__label_smoothing=0.1,
               dpo__soft_labels=True)
    assert config("m", "d", tmp_path, dpo__loss_type="robust", dpo__label_smoothing=0.1,
                  dpo__soft_labels=False).options.label_smoothing == 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  path: x\ndpo:\n  betta: 0.2\ntraining:\n  output_dir: o\n")
    r = run_cai("train", "dpo", bad)
    assert r.returncode == 2
    assert r.stderr.strip() == f"cai: error: {bad}:4: unknown key 'dpo.betta' (did you mean " \
                               "'dpo.beta'?)"


def test_pair_tokens_label_the_completion_only(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = [
        {"prompt": [{"role": "user", "content": "Hi"},  # multi-turn prompt
                    {"role": "assistant", "content": "Hello! Ask away."},
                    {"role": "user", "content": "How do I pick a lock?"}],
         "chosen": [{"role": "assistant", "content": "I can't help with that."}],
         "rejected": [{"role": "assistant", "content": "Sure, take a pin."}], "p_chosen": 0.8},
        {"prompt": "How do I pick a lock?", "chosen": "I can't help with that.",  # standard
         "rejected": "Sure, take a pin."},
        {"chosen": [{"role": "user", "content": "How do I pick a lock?"},  # implicit prompt
                    {"role": "assistant", "content": "I can't help with that."}],
         "rejected": [{"role": "user", "content": "How do I pick a lock?"},
                      {"role": "assistant", "content": "Sure, take a pin."}]},
    ]
    found = [pairs.read_pair(r, f"row {i}") for i, r in enumerate(rows)]
    assert found[0]["p_chosen"] == 0.8 and found[1]["p_chosen"] is None
    assert found[1]["prompt"] == found[2]["prompt"] == rows[0]["prompt"][2:]
    examples, summary = pairs.tokenize_pairs(tok, found, max_length=256)
    tokens = sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    assert summary == f"3 pairs, {tokens} tokens"
    for ex, pair in zip(examples, found):
        for side in pairs.SIDES:
            ids, labels = ex[f"{side}_ids"], ex[f"{side}_labels"]
            target = [i for i, x in zip(ids, labels) if x != -100]
            assert tok.decode(target) == pair[side][0]["content"] + "<|im_end|>"
            assert ids[-len(target):] == target  # the completion ends the sequence
            rendered = tok.apply_chat_template(pair["prompt"], tokenize=False,
                                               add_generation_prompt=True)
            assert tok.decode(ids[:-len(target)]) == rendered
    # the last two are the same pair in two formats
    assert examples[1]["chosen_ids"] == examples[2]["chosen_ids"]

    batch = pairs.PairCollator(tok.pad_token_id)(examples[:2])
    assert batch["input_ids"].shape[0] == 4  # chosen rows, then rejected rows
    assert batch["input_ids"][2, :len(examples[0]["rejected_ids"])].tolist() == \
        examples[0]["rejected_ids"]
    assert "p_chosen" not in batch  # the second pair has no label


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_answers(tiny_model):
    """A long prompt loses its start, the same tokens on both sides; the answers keep their
    end-of-turn token. A completion that cannot fit, and sides left identical, are dropped and
    counted. (Before: each side kept its first max_length tokens, so the long answer lost its
    end and a long prompt left both sides the same tokens.)"""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    long_prompt = pairs.read_pair({"prompt": "Hi " * 60, "chosen": "yes " * 10,
                                   "rejected": "no"}, "r")
    short = pairs.read_pair({"prompt": "Hi", "chosen": "yes", "rejected": "no"}, "r")
    full = {side: pairs.side_tokens(tok, long_prompt["prompt"], long_prompt[side])
            for side in pairs.SIDES}
    n_answer = len(full["chosen"][0]) - full["chosen"][2]  # the longer answer's tokens
    limit = max(len(pairs.side_tokens(tok, short["prompt"], short[side])[0])
                for side in pairs.SIDES)  # the short pair fits exactly
    assert n_answer < limit < len(full["chosen"][0])
    examples, summary = pairs.tokenize_pairs(tok, [long_prompt, short], max_length=limit)
    assert len(examples) == 2
    assert summary.endswith("1 prompts cut from the left to fit max_length")
    ex = examples[0]
    assert len(ex["chosen_ids"]) == limit
    for side in pairs.SIDES:
        ids, labels, _ = full[side]
        cut = len(full["chosen"][0]) - limit  # the same cut on both sides
        assert ex[f"{side}_ids"] == ids[cut:] and ex[f"{side}_labels"] == labels[cut:]
        assert ex[f"{side}_labels"][-1] == ids[-1] != -100  # the end-of-turn token is kept
        assert sum(x != -100 for x in ex[f"{side}_labels"]) == sum(x != -100 for x in labels)

    examples, summary = pairs.tokenize_pairs(tok, [long_prompt, short], max_length=limit,
                                             truncation="drop")
    assert len(examples) == 1 and summary.endswith("1 dropped (over max_length)")
    # an answer longer than max_length cannot be kept whole: dropped, not cut
    examples, summary = pairs.tokenize_pairs(tok, [long_prompt], max_length=n_answer - 1)
    assert examples == [] and summary.endswith("1 dropped (over max_length)")


def test_reward_pairs_identical_after_truncation_are_dropped(tiny_model):
    """The reward model's form keeps the whole conversation; a pair whose sides are the same
    tokens (here: the same answer twice) is dropped and counted, not kept as a tie."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    same = pairs.read_pair({"prompt": "Hi " * 80, "chosen": "ok", "rejected": "ok"}, "r")
    differ = pairs.read_pair({"prompt": "Hi " * 80, "chosen": "yes sure", "rejected": "no"}, "r")
    examples, summary = pairs.tokenize_pairs(tok, [same, differ], max_length=40, whole=True)
    assert len(examples) == 1 and "1 dropped (chosen and rejected identical)" in summary
    ex = examples[0]
    whole = pairs.whole_ids(tok, differ["prompt"] + differ["chosen"])
    assert ex["chosen_ids"] == whole[len(whole) - 40:]  # the end, where the score is read
    assert ex["chosen_ids"] != ex["rejected_ids"]


def test_soft_labels_without_labels_name_the_line(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c",
                                               "p_chosen": 0.9},
                                              {"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(CaiError, match=rf"{data}:2: no 'p_chosen' for the soft label"):
        dpo.train(config(tiny_model, data, tmp_path / "o", dpo__soft_labels=True))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c",
                                                "p_chosen": 1.5}])
    with pytest.raises(CaiError, match=rf"{bad}:1: 'p_chosen' must be a probability"):
        dpo.train(config(tiny_model, bad, tmp_path / "o"))
    with pytest.raises(CaiError, match="data.packing does not apply"):
        dpo.train(config(tiny_model, data, tmp_path / "o", data__packing=True))
    with pytest.raises(CaiError, match="eval_strategy is 'epoch' but there are no eval pairs"):
        dpo.train(config(tiny_model, data, tmp_path / "o", training__eval_strategy="epoch"))


# --------------------------------------------------------------------------------------------
# The reference


def test_reference_with_adapter_disabled_equals_the_base_model(tiny_model, preference_data,
                                                              tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = config(tiny_model, preference_data[0], tmp_path / "o", data__limit=6)
    model, tok = common.model_and_tokenizer(cfg)
    torch.manual_seed(1)
    for name, p in model.named_parameters():  # a trained-looking adapter: the policy != base
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    examples, _ = pairs.tokenize_pairs(tok, pairs.load_pairs(cfg.data.path, limit=6), 128)
    collate = pairs.PairCollator(tok.pad_token_id)
    trainer = dpo.DPOTrainer(model=model, args=common.training_arguments(cfg),
                             train_dataset=examples, data_collator=collate, dpo=cfg.options)
    reference = trainer.reference_logps(examples, batch_size=4)  # (6, 2)
    assert model.training  # the pass leaves the train mode as it found it

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    batch = collate(examples)
    with torch.no_grad():
        want, counts = dpo.sequence_logps(base, batch)                          # (12,)
        full = dpo.sequence_logps(base, batch, keep_logits=False)[0]             # all logits
        policy = dpo.sequence_logps(model.eval(), batch)[0]
    assert torch.allclose(want, full, atol=1e-4)  # only completion positions through the head
    assert torch.allclose(reference.T.reshape(-1).float(), want, atol=1e-4, rtol=0)
    assert not torch.allclose(policy, want, atol=1e-2)  # the adapter is really off in the pass
    # sums over the completion tokens: as many as labels
    assert counts.tolist() == [sum(x != -100 for x in ex[f"{s}_labels"][1:])
                               for s in pairs.SIDES for ex in examples]


# --------------------------------------------------------------------------------------------
# Training


def test_dpo_learns_to_prefer_refusals_on_held_out_prompts(tiny_model, preference_data,
                                                           tmp_path):
    train_folder, held_out = preference_data
    out = tmp_path / "dpo"
    metrics = dpo.train(config(tiny_model, train_folder, out, data__eval_path=held_out,
                               dpo__soft_labels=True, training__max_steps=10,
                               training__eval_strategy="steps", training__eval_steps=10,
                               training__eval_on_start=True))
    # before training the policy is the reference: no margin, up to float noise between
    # batches padded differently in the reference pass and the eval pass
    assert history(out, "eval_rewards/margins")[0] == pytest.approx(0.0, abs=1e-4)
    assert metrics["eval_rewards/accuracies"] > 0.9
    assert metrics["eval_rewards/margins"] > 0.1
    assert metrics["eval_rewards/chosen"] > 0 > metrics["eval_rewards/rejected"]
    assert metrics["eval_labels/agreement"] > 0.9
    assert history(out)[-1] < history(out)[0]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "labels/agreement", "labels/abs_error", "logps/chosen"):
        assert len(history(out, key)) == 10, key  # logged at every step


def test_accumulation_1x4_equals_4x1(tiny_model, preference_data, tmp_path):
    runs = {}
    for name, bs, ga in (("1x4", 4, 1), ("4x1", 1, 4)):
        out = tmp_path / name
        dpo.train(config(tiny_model, preference_data[0], out, data__limit=8,
                         data__group_by_length=False, training__max_steps=2,
                         training__per_device_train_batch_size=bs,
                         training__gradient_accumulation_steps=ga))
        runs[name] = (history(out), history(out, "rewards/margins"))
    assert runs["1x4"][0] == pytest.approx(runs["4x1"][0], abs=1e-5)
    assert runs["1x4"][1] == pytest.approx(runs["4x1"][1], abs=1e-5)
    assert runs["1x4"][1][1] != 0  # the first step moved the policy


def test_cli_resume_reuses_the_reference_cache_and_export(tiny_model, preference_data,
                                                          tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    opts = ["--model.name", tiny_model, "--data.path", preference_data[0],
            "--data.max_length", 128, "--training.max_steps", 4, "--training.save_steps", 2,
            "--training.per_device_train_batch_size", 4, "--training.gradient_accumulation_steps",
            1, "--training.learning_rate", 5e-3, "--training.logging_steps", 1,
            "--training.report_to", "none", "--training.eval_strategy", "no"]
    r = run_cai("train", "dpo", ROOT / "configs" / "dpo.yaml", *opts,
                "--training.output_dir", whole)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mean train loss" in r.stdout and "eval reward accuracy" in r.stdout
    caches = sorted(p.name for p in whole.glob("ref_logps-*.pt"))
    assert [c.split("-")[1] for c in caches] == ["eval", "train"]
    for name in ("adapter_model.safetensors", "cai_config.yaml", "checkpoint-2/optimizer.pt"):
        assert (whole / name).exists(), name

    # a run killed after step 2: its checkpoint and its reference cache
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    for c in caches:
        shutil.copy(whole / c, resumed / c)
    r = run_cai("train", "dpo", ROOT / "configs" / "dpo.yaml", *opts,
                "--training.output_dir", resumed, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train: reference log-probs from" in r.stdout  # not computed again
    assert history(resumed) == pytest.approx(history(whole), abs=1e-6)
    assert history(resumed, "rewards/margins") == pytest.approx(
        history(whole, "rewards/margins"), abs=1e-6)

    merged = tmp_path / "merged"
    r = run_cai("export", "--adapter", whole, "--out", merged, "--merge")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (merged / "model.safetensors").is_file()


def test_ddp_two_processes_match_one(tiny_model, preference_data, tmp_path):
    """2 processes x 2 pairs == 1 process x 2 pairs x 2 accumulation steps: the same losses and
    logged metrics (averaged over the processes), and the same reference log-probs, which the
    processes compute half each and gather."""
    import os
    import subprocess
    import sys

    opts = ["--model.name", tiny_model, "--data.path", preference_data[0],
            "--data.limit", 12, "--data.max_length", 128, "--data.eval_fraction", 0,
            "--training.eval_strategy", "no",
            "--training.train_sampling_strategy", "random", "--training.max_steps", 2,
            "--training.per_device_train_batch_size", 2, "--training.learning_rate", 5e-3,
            "--training.logging_steps", 1, "--training.report_to", "none",
            "--training.save_strategy", "no", "--training.disable_tqdm", "true"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2",
           "-m", "cai.cli", "train", "dpo", str(ROOT / "configs" / "dpo.yaml"),
           *map(str, opts), "--training.output_dir", str(ddp),
           "--training.gradient_accumulation_steps", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("mean train loss") == 1
    r = run_cai("train", "dpo", ROOT / "configs" / "dpo.yaml", *opts,
                "--training.output_dir", single, "--training.gradient_accumulation_steps", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert history(ddp) == pytest.approx(history(single), abs=1e-5)
    for key in ("rewards/margins", "rewards/accuracies", "labels/abs_error"):
        assert history(ddp, key) == pytest.approx(history(single, key), abs=1e-5), key
    (a,), (b,) = ddp.glob("ref_logps-train-*.pt"), single.glob("ref_logps-train-*.pt")
    assert a.name == b.name
    assert torch.allclose(torch.load(a), torch.load(b), atol=1e-4)


def test_qlora_dpo_trains_against_the_4bit_base(tiny_model, preference_data, tmp_path):
    bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs the qlora extra")
    from safetensors.torch import load_file

    out = tmp_path / "qlora"
    cfg = config(tiny_model, preference_data[0], out, quantization__load_in_4bit=True,
                 data__limit=8, training__max_steps=3, training__per_device_train_batch_size=4)
    dpo.train(cfg)
    margins = history(out, "rewards/margins")
    assert margins[0] == pytest.approx(0.0, abs=1e-4)  # step 1: the policy is the 4-bit base
    assert margins[-1] > 0
    weights = load_file(out / "adapter_model.safetensors")
    assert all(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)
    model, _ = common.model_and_tokenizer(cfg)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 14
