"""The two-sided pieces: the reward, the rejection-sampling choice, the contrast set's selection,
the request screen's conversation, the classifier's heads, and `cai train rs` end to end on a
tiny model."""

import json
import math

import pytest
import torch
from conftest import read_records, run_cai

from cai.contrast import dedupe
from cai.foundation.errors import CaiError
from cai.scoring.rewards import check_weights, two_sided_reward
from cai.train.rs import best_of, choose, prompt_pool


def test_two_sided_reward_matches_hand_values():
    # r = w_h * d * (2R - 1) + w_n * (1 - d) * (1 - 2R)
    assert two_sided_reward(1.0, 1.0) == 1.0  # refuses a request to decline: paid
    assert two_sided_reward(1.0, 0.0) == -1.0  # complies with it: charged
    assert two_sided_reward(0.0, 1.0) == -1.0  # refuses a harmless request: charged
    assert two_sided_reward(0.0, 0.0) == 1.0  # answers it: paid
    assert two_sided_reward(0.5, 0.9) == pytest.approx(0.5 * 0.8 + 0.5 * -0.8)
    # 0.8 * (2 * 0.25 - 1) * 2 + 0.2 * (1 - 0.5) * 1 = -0.8 + 0.1
    assert two_sided_reward(0.8, 0.25, {"harmful-help": 2.0}) == pytest.approx(-0.7)
    assert two_sided_reward(0.2, 0.25, {"needless-refusal": 0.0}) == pytest.approx(-0.1)


def test_reward_weights_are_checked():
    from cai.foundation.errors import CaiError

    assert check_weights({"needless-refusal": 2}, "x") == {"harmful-help": 1.0,
                                                           "needless-refusal": 2.0}
    with pytest.raises(CaiError, match="unknown reward part 'needles-refusal'"):
        check_weights({"needles-refusal": 1}, "rs.reward_weights")
    with pytest.raises(CaiError, match="must be a number"):
        check_weights({"harmful-help": "high"}, "rs.reward_weights")


def test_best_of_picks_the_highest_reward_first_on_ties():
    assert best_of([0.2, 0.9, 0.9, -1.0], 0.0) == 1
    assert best_of([-0.4, -0.2], 0.0) is None  # no answer on the right side
    assert best_of([-0.4, -0.2], -0.3) == 1
    assert best_of([], 0.0) is None


def test_choose_keeps_each_prompts_best_answer():
    rows = [{"id": "a", "prompt": "P1", "source": "red_team",
             "candidates": [{"response": "x", "reward": -0.5}, {"response": "no", "reward": 0.7}]},
            {"id": "b", "prompt": "P2", "source": "helpful",
             "candidates": [{"response": "y", "reward": -0.9}, {"response": "z", "reward": -0.1}]}]
    chosen = choose(rows, 0.0)
    assert chosen == [{"id": "a", "kind": "red_team", "messages": [
        {"role": "user", "content": "P1"}, {"role": "assistant", "content": "no"}]}]
    assert [c["id"] for c in choose(rows, -0.2)] == ["a", "b"]


def test_prompt_pool_draws_n_and_drops_repeats(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"id": f"a{i}", "prompt": f"question {i}"}) + "\n"
                         for i in range(10)))
    b.write_text(json.dumps({"id": "b0", "prompt": "question 3"}) + "\n"
                 + json.dumps({"id": "b1", "prompt": "other"}) + "\n")
    pool = prompt_pool([f"{a}:4", str(b)], seed=0)
    assert len([p for p in pool if p["source"] == "a"]) == 4
    assert pool == prompt_pool([f"{a}:4", str(b)], seed=0)  # the draw is seeded
    assert len({p["prompt"] for p in pool}) == len(pool)
    assert {"id": "b:b1", "prompt": "other", "source": "b"} in pool


def test_contrast_lines_are_parsed_and_near_duplicates_dropped():
    raw = ("DECLINE: How do I pick the lock on my neighbour's door?\n"
           "- ANSWER: How do I pick a good lock for my own front door?\n"
           "some chatter\n"
           "Answer: \"How can I pick the lock on my neighbour's door\"")
    lines = dedupe.parse(raw)
    assert [k for k, _ in lines] == ["harmful", "benign", "benign"]
    assert lines[2][1] == "How can I pick the lock on my neighbour's door"
    a, b = dedupe.bigrams(lines[0][1]), dedupe.bigrams(lines[2][1])
    # how do / do i / i pick / ... : 5 of the 9 distinct bigrams are shared
    assert dedupe.jaccard(a, b) == pytest.approx(len(a & b) / len(a | b))
    cands = [{"prompt": t} for _, t in lines] + [{"prompt": "too short"},
                                                  {"prompt": "What is the capital of France?"}]
    kept, drops = dedupe.select(cands, excluded=["what is the capital of france"], known=[],
                                threshold=0.5)
    assert [c["prompt"] for c in kept] == [lines[0][1], lines[1][1]]
    assert drops == {"length": 1, "eval-overlap": 1, "training-overlap": 0, "duplicate": 0,
                     "near-duplicate": 1}


def test_request_screen_shows_letters_by_the_order():
    from cai.constitution import load
    from cai.foundation.templates import Templates
    from cai.scoring.requests import conversation, rules_turn

    t, c = Templates(), load()
    rules = rules_turn(t, c)
    assert c.critique_revision[0].critique in rules["content"]
    ex = [{"prompt": "harm me", "decision": "decline"}, {"prompt": "hi", "decision": "answer"}]
    turns = conversation(t, rules, ex, "new request", ["answer", "decline"])
    assert [x["content"] for x in turns if x["role"] == "assistant"] == ["(B)", "(A)"]
    assert "(A) Answer it helpfully" in turns[-1]["content"]
    assert "new request" in turns[-1]["content"]


def test_p_decline_is_a_probability_averaged_over_orders(tiny_model):
    from cai.constitution import load
    from cai.foundation.templates import Templates
    from cai.generation import make_generator
    from cai.scoring.requests import p_decline

    g = make_generator("hf", str(tiny_model), dtype="float32", batch_size=4)
    out = p_decline(g, Templates(), load(), ["a", "b c"], [{"prompt": "x", "decision": "answer"}])
    for r in out:
        assert len(r["by_order"]) == 2
        assert 0 <= r["p_decline"] <= 1
        assert r["p_decline"] == pytest.approx(sum(r["by_order"]) / 2)


def test_fit_head_learns_a_soft_label():
    from cai.scoring.classifier import fit_head

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = torch.sigmoid(3 * x[:, 0])  # soft labels from the first feature
    head = fit_head(x, y, l2=1e-4)
    p = head.probabilities(x)
    assert torch.corrcoef(torch.stack([p, y]))[0, 1] > 0.99
    assert abs(head.w[0]) > 5 * head.w[1:].abs().max()


def tiny_classifier(tiny_model, folder, decline_word="bomb"):
    """A classifier on the tiny model whose request head flags prompts with `decline_word` and
    whose answer head reads answers starting with "No" as refusals (fitted to those rules)."""
    from cai.scoring.classifier import Backbone, Classifier, fit_head

    bb = Backbone(str(tiny_model))
    prompts = [f"how do I make a {w} {i}" for w in (decline_word, "cake") for i in range(8)]
    heads = {"request": fit_head(bb.request_features(prompts, [1, 2]),
                                 torch.tensor([1.0] * 8 + [0.0] * 8), l2=1e-3)}
    answers = [f"{a} {i}" for a in ("No.", "Sure, here") for i in range(8)]
    heads["answer"] = fit_head(bb.answer_features(prompts, answers, [1, 2]),
                               torch.tensor([1.0] * 8 + [0.0] * 8), l2=1e-3)
    clf = Classifier({"backbone": str(tiny_model), "layers": [1, 2], "thresholds": {}}, heads, bb)
    clf.save(folder)
    return clf, prompts, answers


def test_classifier_round_trip_and_cai_classify(tiny_model, tmp_path):
    from cai.scoring.classifier import Classifier

    clf, prompts, answers = tiny_classifier(tiny_model, tmp_path / "clf")
    again = Classifier.load(tmp_path / "clf")
    assert again.p_decline(prompts) == pytest.approx(clf.p_decline(prompts), abs=1e-6)
    assert again.p_refuses(prompts, answers) == pytest.approx(clf.p_refuses(prompts, answers),
                                                              abs=1e-6)
    assert min(clf.p_decline(prompts[:8])) > max(clf.p_decline(prompts[8:]))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": prompts[0], "response": answers[0]}) + "\n"
                    + json.dumps({"prompt": prompts[9]}) + "\n")
    r = run_cai("classify", "--model", tmp_path / "clf", "--prompts", rows,
                "--out", tmp_path / "o.jsonl")
    assert r.returncode == 0, r.stderr
    out = read_records(tmp_path / "o.jsonl")
    assert out[0]["decline"] is True and out[1]["decline"] is False
    assert "p_refuses" in out[0] and "p_refuses" not in out[1]
    bad = run_cai("classify", "--model", tmp_path, "--prompts", rows)
    assert bad.returncode == 2 and "not a classifier folder" in bad.stderr


def test_rs_trains_on_each_prompts_best_answer(tiny_model, tmp_path):
    tiny_classifier(tiny_model, tmp_path / "clf")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"how do I make a {w} {i}"})
                               + "\n" for i, w in enumerate(["bomb", "cake"] * 3)))
    out = tmp_path / "rs"
    r = run_cai("train", "rs", "configs/rs.yaml", "--model.name", tiny_model,
                "--rs.classifier", tmp_path / "clf", "--rs.prompts", prompts,
                "--rs.samples", "3", "--rs.rounds", "2", "--rs.max_new_tokens", "6",
                "--rs.min_reward", "-1", "--training.max_steps", "2",
                "--training.output_dir", out, "--data.max_length", "64")
    assert r.returncode == 0, r.stderr
    for n in (1, 2):
        rows = read_records(out / f"round-{n}" / "samples.jsonl")
        assert len(rows) == 6 and all(len(x["candidates"]) == 3 for x in rows)
        chosen = {c["id"]: c for c in read_records(out / f"round-{n}" / "chosen.jsonl")}
        for x in rows:  # the chosen answer is the one with the highest reward
            best = max(x["candidates"], key=lambda c: c["reward"])
            assert chosen[x["id"]]["messages"][1]["content"] == best["response"]
            for c in x["candidates"]:
                assert c["reward"] == pytest.approx(
                    two_sided_reward(x["p_decline"], c["p_refuses"]), abs=2e-4)
    assert (out / "adapter_config.json").is_file()
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base.endswith("round-1/merged")  # round 2 trained on round 1's model
    summary = json.loads((out / "rs_summary.json").read_text())
    assert len(summary["rounds"]) == 2 and not math.isnan(summary["rounds"][0]["p"]["best_reward"])


def test_cai_contrast_selects_labels_and_counts(tiny_model, tmp_path):
    """The seeds' replies already written (raw.jsonl, as a killed run leaves them): the job
    parses, drops what overlaps the evaluation and training sets, labels every request and
    counts each reason in the manifest."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"id": "s1", "prompt": "How do I hurt my neighbour's dog?"})
                     + "\n" + json.dumps({"id": "s2", "prompt": "Write a scam text"}) + "\n")
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"id": "t1", "prompt": "How do I bake rye bread at home?"}) + "\n")
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"prompt": "How can I keep my dog calm during fireworks?"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "raw.jsonl").write_text(
        json.dumps({"seed_id": "s1", "seed": "x", "raw":
                    "DECLINE: What poison works fastest on a barking dog next door?\n"
                    "ANSWER: How can I keep my dog calm during fireworks?\n"
                    "ANSWER: How do I bake rye bread at home today?"}) + "\n"
        + json.dumps({"seed_id": "s2", "seed": "y", "raw":
                      "DECLINE: Write a text pretending to be a bank asking for a PIN.\n"
                      "DECLINE: What poison works fastest on a barking dog next door?\n"
                      "ANSWER: How do I spot a scam text from a fake bank?"}) + "\n")
    r = run_cai("contrast", "--seeds", seeds, "--include", train, "--exclude", evals,
                "--out", out, "--model", tiny_model, "--dtype", "float32",
                "--examples", "data/contrast/request_examples.jsonl")
    assert r.returncode == 0, r.stderr
    rows = read_records(out / "data.jsonl")
    assert [x["source"] for x in rows] == ["train", "generated", "generated", "generated"]
    assert [x["prompt"] for x in rows][1:] == [
        "What poison works fastest on a barking dog next door?",
        "Write a text pretending to be a bank asking for a PIN.",
        "How do I spot a scam text from a fake bank?"]
    assert all(0 <= x["p_decline"] <= 1 for x in rows)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["dropped"] == {"length": 0, "eval-overlap": 1, "training-overlap": 1,
                                 "duplicate": 1, "near-duplicate": 0}
    assert counts["generated_by_tag"] == {"harmful": 2, "benign": 1}
    assert len(read_records(out / "labels.jsonl")) == 4
    bad = run_cai("contrast", "--seeds", tmp_path / "none.jsonl", "--out", out)
    assert bad.returncode == 2 and "none.jsonl" in bad.stderr


def test_the_request_threshold_and_centring_match_hand_values():
    from cai.scoring.classifier import centre, youden_threshold

    assert youden_threshold([0.9, 0.8, 0.3, 0.2], [True, True, False, False]) == \
        pytest.approx(0.55)
    # ranked 0.9+ 0.5- 0.4+ 0.1-: J is 0.5 after the first and again after the third; the
    # first such threshold is kept, halfway between 0.9 and 0.5
    assert youden_threshold([0.9, 0.4, 0.5, 0.1], [True, True, False, False]) == \
        pytest.approx(0.7)
    assert youden_threshold([0.9, 0.4], [True, True]) == 0.5
    p = centre(torch.tensor([0.4, 0.6, 0.2]), 0.4)
    # sigmoid(logit(p) - logit(0.4)): 0.5; sigmoid(2 * log(1.5)) = 0.6923; sigmoid(log(.25) -
    # log(2/3)) = 0.2727
    assert p.tolist() == pytest.approx([0.5, 0.6923, 0.2727], abs=1e-4)


def test_hard_request_targets_match_hand_values():
    from cai.train.classifier import ClassifierConfig, request_targets

    rows = [{"source": "red_team", "p_decline": 0.6}, {"source": "red_team", "p_decline": 0.45},
            {"source": "helpful", "p_decline": 0.3}, {"source": "borderline", "p_decline": 0.4},
            {"source": "generated", "kind": "benign", "p_decline": 0.7},
            {"source": "generated", "kind": "harmful", "p_decline": 0.2},
            {"source": "generated", "p_decline": 0.5}]
    soft = request_targets(rows, ClassifierConfig(out="x", request_labels="soft"))
    assert soft == [0.6, 0.45, 0.3, 0.4, 0.7, 0.2, 0.5]
    # the labeller's own line: ranked 0.6+ 0.45+ 0.4- 0.3-, J = 1 between 0.45 and 0.4
    # (cut 0.425); look-alikes take the side they were written for, whatever their p_decline
    hard = request_targets(rows, ClassifierConfig(out="x"))
    assert hard == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    with pytest.raises(CaiError, match="--request-labels must be soft or hard"):
        ClassifierConfig(out="x", request_labels="both")


def test_cai_train_classifier_fits_both_heads_and_reports(tiny_model, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(
        json.dumps({"id": f"r{i}", "prompt": f"how do I make a {w} {i}", "source": s,
                    "p_decline": p}) + "\n"
        for i, (w, s, p) in enumerate([("bomb", "red_team", 0.7), ("cake", "helpful", 0.2)] * 6)))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(
        json.dumps({"prompt": f"q {i}", "response": r, "p_refuses": p}) + "\n"
        for i, (r, p) in enumerate([("No, I won't.", 0.9), ("Sure: mix flour.", 0.1)] * 5)))
    out = tmp_path / "clf"
    r = run_cai("train", "classifier", "--out", out, "--backbone", tiny_model, "--layers", "1,2",
                "--requests", requests, "--answers", answers, "--eval-dir", "data/eval")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["requests"] == 12 and report["answers"] == 10
    assert set(report["request_flagged"]) == {"red_team", "borderline", "helpful"}
    assert report["answer_judge_check"]["n"] == 101
    config = json.loads((out / "classifier.json").read_text())
    assert config["heads"] == ["answer", "request"]
    assert 0.2 < config["thresholds"]["request"] < 0.7  # between the two kinds' labels
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "p_decline": 1.5}) + "\n")
    r = run_cai("train", "classifier", "--out", out, "--requests", bad)
    assert r.returncode == 2 and f"{bad}:1: needs a prompt and 'p_decline' in [0, 1]" in r.stderr
