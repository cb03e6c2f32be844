"""`cai train rm` + `cai score` on the tiny model: learning, saved model, scoring, export."""

import json

import pytest
import torch
from conftest import ROOT, TOPICS, read_records, refusal_pairs, run_cai, write_jsonl

from cai.train import common, rm


@pytest.mark.parametrize("name", ["rm.yaml", "rm-qlora-7b.yaml"])
def test_shipped_configs_load(name):
    cfg = rm.load_config(ROOT / "configs" / name, [])
    assert cfg.options.soft_labels and cfg.lora.enabled
    assert common.training_arguments(cfg).learning_rate == cfg.training["learning_rate"]


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """A reward model trained for 10 steps on refusal-vs-compliance pairs (16 topics), with
    its held-out pairs (8 other topics) and the run's metrics."""
    folder = tmp_path_factory.mktemp("rm")
    data = write_jsonl(folder / "label" / "data.jsonl", refusal_pairs(TOPICS[:16]))
    held_out = write_jsonl(folder / "held_out.jsonl", refusal_pairs(TOPICS[16:], seed=1))
    out = folder / "rm"
    r = run_cai("train", "rm", ROOT / "configs" / "rm.yaml", "--model.name", tiny_model,
                "--data.path", data.parent, "--data.eval_path", held_out,
                "--data.max_length", 128, "--lora.r", 8, "--lora.alpha", 16,
                "--training.output_dir", out, "--training.max_steps", 10,
                "--training.per_device_train_batch_size", 8,
                "--training.gradient_accumulation_steps", 1, "--training.learning_rate", 5e-3,
                "--training.logging_steps", 1, "--training.eval_strategy", "no",
                "--training.save_strategy", "no", "--training.report_to", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((out / "all_results.json").read_text())
    return out, held_out, metrics, r.stdout


def test_rm_learns_to_prefer_refusals_on_held_out_pairs(trained):
    out, _, metrics, stdout = trained
    assert "eval accuracy" in stdout and "ECE" in stdout
    assert metrics["eval_accuracy"] > 0.9
    assert metrics["eval_label_agreement"] > 0.9
    for key in ("eval_ece", "eval_brier", "eval_label_abs_error"):
        assert 0 <= metrics[key] < 1, key
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in logged if "loss" in h]
    assert len(steps) == 10 and steps[-1]["loss"] < steps[0]["loss"]
    assert all("rewards/accuracies" in h and "labels/abs_error" in h for h in steps)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]


def test_saved_model_scores_like_the_trainer_and_padding_does_not_matter(trained):
    out, held_out, metrics, _ = trained
    model = rm.load_reward_model(out)
    rows = read_records(held_out)
    chosen = model.score([r["prompt"] + r["chosen"] for r in rows], batch_size=8)
    rejected = model.score([r["prompt"] + r["rejected"] for r in rows], batch_size=8)
    margins = torch.tensor(chosen) - torch.tensor(rejected)
    accuracy = ((margins > 0).float() + 0.5 * (margins == 0).float()).mean().item()
    assert accuracy == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    assert margins.mean().item() == pytest.approx(metrics["eval_margin"], abs=1e-4)
    # one at a time (no padding) gives the same scores as a padded batch
    alone = [model.score([r["prompt"] + r["chosen"]])[0] for r in rows[:3]]
    assert alone == pytest.approx(chosen[:3], abs=1e-5)
    assert len({round(s, 4) for s in chosen}) > 1  # scores depend on the text


def test_a_long_prompt_costs_the_prompt_start_not_the_answer(trained):
    """Past max_length (128 here) the reward model reads the end of the conversation: two
    answers after the same long prompt get different scores, each equal to the score of the
    conversation's last 128 tokens. (Before: the first 128 tokens, the same for both.)"""
    out, held_out, _, _ = trained
    model = rm.load_reward_model(out)
    assert model.max_length == 128
    row = read_records(held_out)[0]
    prompt = [{"role": "user", "content": "Please read this first. " * 60
               + row["prompt"][0]["content"]}]
    long = model.score([prompt + row["chosen"], prompt + row["rejected"]])
    assert long[0] != pytest.approx(long[1], abs=1e-4)
    ids = rm.pairs.whole_ids(model.tokenizer, prompt + row["chosen"])
    assert len(ids) > 128
    tail = model.model(input_ids=torch.tensor([ids[-128:]])).logits[0, 0].item()
    assert long[0] == pytest.approx(tail, abs=1e-4)


def test_cai_score_cli(trained, tmp_path):
    out, held_out, _, _ = trained
    rows = read_records(held_out)
    single = write_jsonl(tmp_path / "single.jsonl", [
        {"id": "refuse", "prompt": rows[0]["prompt"][0]["content"],
         "response": rows[0]["chosen"][0]["content"]},
        {"id": "comply", "prompt": rows[0]["prompt"], "response": rows[0]["rejected"]},
        {"id": "messages", "messages": rows[0]["prompt"] + rows[0]["chosen"]}])
    r = run_cai("score", "--model", out, "--data", single)
    assert r.returncode == 0, r.stderr[-2000:]
    scores = {row["id"]: row["score"] for row in map(json.loads, r.stdout.splitlines())}
    assert scores["refuse"] > scores["comply"]
    assert scores["messages"] == pytest.approx(scores["refuse"], abs=1e-5)  # same conversation

    target = tmp_path / "scores.jsonl"
    r = run_cai("score", "--model", out, "--data", held_out, "--out", target)
    assert r.returncode == 0 and f"wrote {len(rows)} scores" in r.stdout
    scored = read_records(target)
    assert [s["id"] for s in scored] == [row["id"] for row in rows]
    assert sum(s["score_chosen"] > s["score_rejected"] for s in scored) / len(scored) > 0.9

    # pairs: the ranking accuracy, by kind; better/worse (data/label_check.jsonl) = chosen/rejected
    right = sum(s["score_chosen"] > s["score_rejected"] for s in scored) / len(scored)
    assert f"chosen ranked first in {right:.2f} of {len(rows)} pairs" in r.stdout
    check = write_jsonl(tmp_path / "check.jsonl", [
        {"id": "a", "prompt": rows[0]["prompt"][0]["content"], "kind": "harmless",
         "better": rows[0]["chosen"][0]["content"], "worse": rows[0]["rejected"][0]["content"]},
        {"id": "b", "prompt": rows[0]["prompt"][0]["content"], "kind": "helpful",
         "better": rows[0]["rejected"][0]["content"], "worse": rows[0]["chosen"][0]["content"]}])
    r = run_cai("score", "--model", out, "--data", check)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = map(json.loads, r.stdout.splitlines())
    assert a["score_chosen"] == pytest.approx(b["score_rejected"]) and a["kind"] == "harmless"
    assert a["score_chosen"] > a["score_rejected"]  # the refusal, as in the held-out pairs
    assert r.stderr.strip().splitlines()[-1] == "cai score: chosen ranked first in 0.50 of 2 " \
                                                "pairs (harmless 1.00 of 1, helpful 0.00 of 1)"

    r = run_cai("score", "--model", tmp_path, "--data", single)
    assert r.returncode == 2
    assert r.stderr.strip() == f"cai: error: {tmp_path}: not a reward model folder (no " \
                               "adapter_config.json or config.json)"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": 1, "text": "hi"}])
    r = run_cai("score", "--model", out, "--data", bad)
    assert r.returncode == 2 and f"{bad}:1: needs prompt and response" in r.stderr


def test_export_merges_the_reward_model(trained, tmp_path):
    out, held_out, _, _ = trained
    merged = tmp_path / "merged"
    r = run_cai("export", "--adapter", out, "--out", merged, "--merge")
    assert r.returncode == 0, r.stderr[-2000:]
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["num_labels"] == 1 if "num_labels" in config else len(config["id2label"]) == 1
    rows = read_records(held_out)[:4]
    convs = [r["prompt"] + r["chosen"] for r in rows]
    assert rm.load_reward_model(merged).score(convs) == pytest.approx(
        rm.load_reward_model(out).score(convs), abs=1e-4)


def test_prefix_pairs_cut_both_answers_to_the_same_first_tokens(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{**r, "where": f"data.jsonl:{i + 1}"}
            for i, r in enumerate(refusal_pairs(TOPICS[:4]))]
    cut = rm.prefix_pairs(rows, tokenizer, copies=3, seed=0)
    assert cut == rm.prefix_pairs(rows, tokenizer, copies=3, seed=0)  # seeded
    assert 0 < len(cut) <= 3 * len(rows) and cut != rm.prefix_pairs(rows, tokenizer, 3, seed=1)
    by_where = {r["where"]: r for r in rows}
    ks = set()
    for pair in cut:
        where, k = pair["where"].rsplit(" (first ", 1)
        k = int(k.split()[0])
        ks.add(k)
        whole = by_where[where]
        assert pair["prompt"] == whole["prompt"] and pair["p_chosen"] == whole["p_chosen"]
        for side in ("chosen", "rejected"):
            text = pair[side][-1]["content"]
            assert pair[side][-1]["role"] == "assistant"
            assert whole[side][-1]["content"].startswith(text) and text
            ids = tokenizer(whole[side][-1]["content"], add_special_tokens=False)["input_ids"]
            assert text == tokenizer.decode(ids[:k], skip_special_tokens=True).strip()
            assert k < len(ids)
        assert pair["chosen"] != pair["rejected"]
    assert len(ks) > 3  # the cut points vary


def test_a_reward_model_trained_on_prefixes_ranks_unfinished_answers(tiny_model, tmp_path):
    """With rm.prefix_pairs the cut copies are trained on (the log counts them) and the model
    ranks held-out answers cut after 4 tokens, what PPO's reward-model critic reads. (Whether
    the copies help that ranking on a real model is measured in docs/training.md: not here.)"""
    data = write_jsonl(tmp_path / "data.jsonl", refusal_pairs(TOPICS[:16]))
    held_out = read_records(write_jsonl(tmp_path / "held.jsonl",
                                        refusal_pairs(TOPICS[16:], seed=1)))
    out = tmp_path / "rm"
    r = run_cai("train", "rm", ROOT / "configs" / "rm.yaml", "--model.name", tiny_model,
                "--data.path", data, "--data.eval_fraction", 0, "--data.max_length", 128,
                "--rm.prefix_pairs", 2, "--lora.r", 8, "--lora.alpha", 16,
                "--training.output_dir", out, "--training.max_steps", 12,
                "--training.per_device_train_batch_size", 8,
                "--training.gradient_accumulation_steps", 1, "--training.learning_rate", 5e-3,
                "--training.eval_strategy", "no", "--training.save_strategy", "no",
                "--training.report_to", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    n = len(read_records(data))
    kept = int(r.stdout.split("train: ")[1].split()[0])
    assert 2 * n < kept <= 3 * n  # the whole pairs and up to two cut copies each
    model = rm.load_reward_model(out)

    def first(messages, k=4):
        ids = model.tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
        return [{"role": "assistant", "content": model.tokenizer.decode(ids[:k]).strip()}]

    chosen = model.score([p["prompt"] + first(p["chosen"]) for p in held_out])
    rejected = model.score([p["prompt"] + first(p["rejected"]) for p in held_out])
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(held_out) > 0.9
