"""`cai label`: pair selection, a hand-built labeler with known log-probs, and the job end to end
on the tiny model (records, resume after SIGKILL, determinism, bad input). The soft-label math is
in test_labels.py, the quality check (`--check`) in test_check.py."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, KnownLabeler, read_records, run_cai, write_jsonl

from cai import constitution as C
from cai.foundation.errors import CaiError
from cai.generation import make_generator
from cai.label import job as F
from cai.label.config import LabelConfig
from cai.scoring import labels as L

# --------------------------------------------------------------------------------------------
# Pairs


def test_pairs_are_all_or_a_seeded_draw():
    assert F.select_pairs(3, None, "x") == [(0, 1), (0, 2), (1, 2)]
    assert F.select_pairs(3, 5, "x") == [(0, 1), (0, 2), (1, 2)]
    two = F.select_pairs(5, 2, "x")
    assert len(two) == 2 and two == F.select_pairs(5, 2, "x") and all(i < j for i, j in two)


# --------------------------------------------------------------------------------------------
# A hand-built labeler whose log-probs are known (conftest.KnownLabeler)


@pytest.fixture
def good_bad(tmp_path):
    return write_jsonl(tmp_path / "responses.jsonl", [
        {"id": "x", "prompt": "Question x?", "responses": ["GOOD one", "BAD one"], "topic": "t"},
        {"id": "y", "prompt": "Question y?", "initial_response": "BAD two",
         "response": "GOOD two", "rounds": []},  # a `cai revise` record
    ])


def label(tmp_path, responses, labeler, **options):
    cfg = LabelConfig(responses=str(responses), out=str(tmp_path / "out"), **options)
    stats = F.run(cfg, labeler=labeler)
    out = tmp_path / "out"
    rows = read_records(out / "data.jsonl") if (out / "data.jsonl").exists() else []
    return stats, rows, json.loads((out / "manifest.json").read_text())


def test_known_logprobs_give_the_debiased_soft_label(tmp_path, good_bad):
    stats, rows, manifest = label(tmp_path, good_bad, KnownLabeler(), few_shot=0)
    x, y = rows
    # x: first = GOOD. Order ab: P(A) = .6/.8 = .75. Order ba: P(A) = .6/1.0, so P(first) = .4.
    vote = x["votes"][0]
    assert vote["p_ab"] == pytest.approx(0.75) and vote["p_ba"] == pytest.approx(0.4)
    assert vote["order"] == "both" and vote["p_first"] == pytest.approx(0.575)
    assert x["p_chosen"] == pytest.approx(0.575) and x["chosen_index"] == 0
    assert x["chosen"] == [{"role": "assistant", "content": "GOOD one"}]
    assert x["rejected"] == [{"role": "assistant", "content": "BAD one"}]
    assert x["prompt"] == [{"role": "user", "content": "Question x?"}]
    assert x["id"] == "x:0-1" and x["pair"] == [0, 1] and x["topic"] == "t"
    # y: first = BAD (the initial response). p_ab = P(A | BAD as A) = .6, p_ba = 1 - .75.
    vote = y["votes"][0]
    assert vote["p_ab"] == pytest.approx(0.6) and vote["p_ba"] == pytest.approx(0.25)
    assert vote["p_first"] == pytest.approx(0.425)
    assert y["p_chosen"] == pytest.approx(0.575) and y["chosen_index"] == 1  # swapped
    assert y["chosen"][0]["content"] == "GOOD two" and "rounds" not in y
    for r in rows:
        assert set(r) >= {"id", "prompt", "chosen", "rejected", "p_chosen", "votes", "labeler",
                          "constitution"}
        assert 0.5 <= r["p_chosen"] <= 1 and r["labeler"] == "smollm2-135m-instruct"
        assert r["policy"] is None and r["constitution"] == "default"
    summary = manifest["summary"]
    assert summary["position_bias_rate"] == 1.0  # slot A won every time
    assert summary["pairs"] == 2 and summary["label_histogram"]["0.50-0.60"] == 2
    assert summary["principle_agreement"] is None
    assert stats["written"] == 2 and manifest["status"] == "complete"


def test_one_order_ensemble_margin_and_identical_pairs(tmp_path):
    responses = write_jsonl(tmp_path / "r.jsonl", [
        {"id": "x", "prompt": "Q?", "responses": ["GOOD", "BAD", " GOOD "]}])
    labeler = KnownLabeler()
    stats, rows, manifest = label(tmp_path, responses, labeler, few_shot=0, debias=False,
                                  principles=3)
    # Pairs 0-1 and 1-2 (GOOD vs BAD) are labelled; 0-2 has the same text twice.
    assert [r["id"] for r in rows] == ["x:0-1", "x:1-2"]
    votes = rows[0]["votes"]
    assert len(votes) == 3 and len({v["principle_id"] for v in votes}) == 3
    orders = set()
    for v in votes:  # one order, drawn at random: P(first) is .75 (GOOD as A) or .4
        orders.add(v["order"])
        assert v["order"] in ("ab", "ba") and v[f"p_{'ba' if v['order'] == 'ab' else 'ab'}"] is None
        assert v["p_first"] == pytest.approx(0.75 if v["order"] == "ab" else 0.4)
    p = L.ensemble([v["p_first"] for v in votes])
    assert rows[0]["p_chosen"] == pytest.approx(max(p, 1 - p))
    (skip,) = read_records(tmp_path / "out" / "skipped.jsonl")
    assert skip == {"id": "x:0-2", "reason": "identical responses"}
    assert manifest["summary"]["skipped"]["identical responses"] == 1
    assert manifest["summary"]["position_bias_rate"] is None  # no pair was scored twice
    assert manifest["summary"]["principle_agreement"] is not None
    assert len(labeler.seen) == 2 * 3  # two labelled pairs, three principles, one order each


def test_margin_drops_and_counts(tmp_path, good_bad):
    stats, rows, manifest = label(tmp_path, good_bad, KnownLabeler(), few_shot=0, margin=0.1)
    assert rows == [] and stats["dropped"] == 2
    assert manifest["summary"]["skipped"] == {"margin": 2}
    assert manifest["summary"]["position_bias_rate"] == 1.0  # dropped pairs still count
    rerun = F.run(LabelConfig(responses=str(good_bad), out=str(tmp_path / "out"), few_shot=0,
                              margin=0.1), labeler=KnownLabeler())
    assert rerun["written"] == 0  # dropped pairs are done


def test_chain_of_thought_is_read_after_reasoning_and_clamped(tmp_path, good_bad):
    labeler = KnownLabeler(when_a=(0.99, 0.01), when_b=(0.01, 0.99))  # overconfident, unbiased
    _, rows, _ = label(tmp_path, good_bad, labeler, few_shot=1, cot=True)
    for r in rows:  # 0.99 and 0.01 clamped to the paper's 0.6 and 0.4
        v = r["votes"][0]
        assert v["p_ab"] == v["p_ba"] == (0.6 if r["chosen_index"] == 0 else 0.4)
        assert r["p_chosen"] == 0.6
        assert v["reasoning"] == {"ab": "Let me compare. GOOD looks better.",
                                  "ba": "Let me compare. GOOD looks better."}
    conv = labeler.seen[0]
    assert conv[-2] == {"role": "assistant", "content": "Let me compare. GOOD looks better."}
    assert conv[-1]["role"] == "user" and conv[-1]["content"].endswith("The answer is:")
    assert conv[-3]["content"].endswith("Let's think step by step.")
    assert len(conv) == 4 + 3  # one demonstration (question, reasoning, follow-up, answer)
    assert conv[3]["content"] in ("(A)", "(B)")
    wide = KnownLabeler(when_a=(0.99, 0.01), when_b=(0.01, 0.99))
    _, rows, _ = label(tmp_path / "wide", good_bad, wide, few_shot=0, cot=True,
                       cot_clamp=[0.2, 0.8])
    assert rows[0]["p_chosen"] == pytest.approx(0.8)


def test_too_long_pairs_are_skipped_with_the_reason(tmp_path):
    responses = write_jsonl(tmp_path / "r.jsonl", [
        {"id": "short", "prompt": "Q?", "responses": ["GOOD", "BAD"]},
        {"id": "long", "prompt": "Q?", "responses": ["GOOD" + " word" * 200, "BAD"]}])
    _, rows, manifest = label(tmp_path, responses, KnownLabeler(context_length=700), few_shot=0)
    assert [r["id"] for r in rows] == ["short:0-1"]
    (skip,) = read_records(tmp_path / "out" / "skipped.jsonl")
    assert skip["id"] == "long:0-1" and skip["reason"] == "too long"
    assert "labeler's context of 700" in skip["detail"]


# --------------------------------------------------------------------------------------------
# The real engine on the tiny model

FAST = ["--max-new-tokens", "8", "--dtype", "float32", "--batch-size", "8"]


def test_label_end_to_end(tiny_model, prompts_file, tmp_path):
    out = tmp_path / "out"
    args = ["label", "--prompts", prompts_file, "--out", out, "--policy", tiny_model,
            "--labeler", tiny_model, "--samples", 3, "--principles", 2, "--few-shot", 1, *FAST]
    result = run_cai(*args, "--limit", 1)
    assert result.returncode == 0, result.stderr
    rows = read_records(out / "data.jsonl")
    assert sorted(r["id"] for r in rows) == ["p0:0-1", "p0:0-2", "p0:1-2"]
    preference_ids = {p.id for p in C.load().preference}
    for r in rows:
        assert 0.5 <= r["p_chosen"] <= 1 and r["category"] == "test"
        assert r["labeler"] == r["policy"] == str(tiny_model)
        assert len(r["votes"]) == 2 and {v["principle_id"] for v in r["votes"]} <= preference_ids
        for v in r["votes"]:
            assert v["order"] == "both" and 0 <= v["p_ab"] <= 1 and 0 <= v["p_ba"] <= 1
            assert v["p_first"] == pytest.approx((v["p_ab"] + v["p_ba"]) / 2)
        first = r["votes"][0]["p_first"] + r["votes"][1]["p_first"]
        assert r["p_chosen"] == pytest.approx(max(first, 2 - first) / 2)
        assert r["prompt"][0]["role"] == "user" and r["chosen"][0]["role"] == "assistant"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["job"] == "label"
    summary = manifest["summary"]
    assert summary["pairs"] == 3 and sum(summary["label_histogram"].values()) == 3
    assert 0 <= summary["position_bias_rate"] <= 1 and 0 <= summary["principle_agreement"] <= 1
    assert manifest["identity"]["labeler"] == summary["labeler"] == str(tiny_model)
    assert manifest["totals"]["generated_tokens"] > 0

    import datasets
    ds = datasets.load_dataset("json", data_files=str(out / "data.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)

    again = run_cai(*args, "--limit", 1)
    assert again.returncode == 0 and "already done" in again.stdout
    changed = run_cai(*args, "--limit", 1, "--principles", 1)
    assert changed.returncode == 2 and "different principles" in changed.stderr


def test_same_seed_same_labels_on_the_tiny_model(tiny_model, prompts_file, tmp_path):
    gen = make_generator("hf", str(tiny_model), dtype="float32", batch_size=8)

    def labels(name, **options):
        cfg = LabelConfig(prompts=str(prompts_file), out=str(tmp_path / name), limit=2,
                          policy=str(tiny_model), labeler=str(tiny_model), few_shot=0,
                          max_new_tokens=6, chunk_size=1, **options)
        F.run(cfg, policy=gen, labeler=gen)
        return (tmp_path / name / "data.jsonl").read_text()

    first = labels("a")
    assert first == labels("b")
    assert first != labels("c", seed=1)
    cot = read_records_text(labels("d", cot=True, cot_max_new_tokens=4))
    assert all(0.5 <= r["p_chosen"] <= 0.6 for r in cot)
    assert all(0.4 <= v[k] <= 0.6 for r in cot for v in r["votes"] for k in ("p_ab", "p_ba"))


def read_records_text(text):
    return [json.loads(line) for line in text.splitlines()]


def test_kill_minus_nine_then_resume(tiny_model, tmp_path, kill_midway):
    prompts = tmp_path / "many.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"k{i:02d}", "prompt": f"Prompt {i}?"}) + "\n"
                               for i in range(10)))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "cai.cli", "label", "--prompts", str(prompts), "--out", str(out),
            "--policy", str(tiny_model), "--labeler", str(tiny_model), "--chunk-size", "1",
            "--max-new-tokens", "8", "--few-shot", "0", "--dtype", "float32"]
    data = out / "data.jsonl"
    before = kill_midway(args, data, lines=3)
    assert 3 <= before < 10, "the job should have been killed midway"
    with open(data, "a") as f:  # as if the kill had hit in the middle of a write
        f.write('{"id": "k99:0-1", "prompt": "torn')
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    ids = [r["id"] for r in read_records(data)]  # every line parses: the torn one is gone
    assert sorted(ids) == [f"k{i:02d}:0-1" for i in range(10)] and len(ids) == len(set(ids))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["runs"]) == 1
    assert manifest["runs"][0]["written"] == 10 - before
    assert manifest["summary"]["pairs"] == 10


def test_killed_and_resumed_writes_what_an_uninterrupted_run_writes(tiny_model, tmp_path,
                                                                    kill_midway):
    """Seeds are per prompt and sample: a run killed midway and resumed (with another chunk
    size, which is no setting of the records) writes the very records of an uninterrupted one."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"k{i}", "prompt": f"Prompt {i}?"}
                                                  for i in range(8)])
    common = ["label", "--prompts", prompts, "--policy", tiny_model, "--labeler", tiny_model,
              "--samples", 3, "--max-new-tokens", 8, "--few-shot", 0, "--dtype", "float32",
              "--batch-size", 1]
    whole = run_cai(*common, "--out", tmp_path / "whole", "--chunk-size", 4)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "resumed"
    before = kill_midway([sys.executable, "-m", "cai.cli", *map(str, common), "--out", str(out),
                          "--chunk-size", "1"], out / "data.jsonl", lines=3)
    assert 3 <= before < 24, "the job should have been killed midway"
    resumed = run_cai(*common, "--out", out, "--chunk-size", 2)
    assert resumed.returncode == 0, resumed.stderr

    def by_id(folder, name):
        path = folder / name
        return {r["id"]: r for r in read_records(path)} if path.exists() else {}

    for name in ("data.jsonl", "skipped.jsonl"):
        assert by_id(out, name) == by_id(tmp_path / "whole", name)
    assert len(by_id(out, "data.jsonl")) + len(by_id(out, "skipped.jsonl")) == 24


# --------------------------------------------------------------------------------------------
# Bad input: one line each, exit 2, before any model loads


def test_bad_options_and_files_are_one_line_errors(tmp_path, prompts_file):
    responses = write_jsonl(tmp_path / "r.jsonl",
                            [{"id": "a", "prompt": "Q", "responses": ["x"]}])
    check = tmp_path / "c.jsonl"
    check.write_text('{"id": "a", "prompt": "Q", "better": "x"}\n')
    no_model = ["--labeler", tmp_path / "no-model", "--policy", tmp_path / "no-model"]
    cases = [
        (["--prompts", prompts_file, "--samples", 1], "--samples must be at least 2, got 1"),
        (["--prompts", prompts_file, "--cot-clamp", "0.6,0.4"], "--cot-clamp must be LOW,HIGH"),
        (["--prompts", prompts_file, "--margin", "0.5"], "--margin must be in [0, 0.5)"),
        (["--prompts", prompts_file, "--principle-ids", "less-harmfull"],
         "no preference principle 'less-harmfull' (did you mean 'less-harmful'?)"),
        (["--prompts", prompts_file, "--responses", responses], "not both"),
        (["--responses", responses], "r.jsonl:1: 'responses' must be a list of two or more"),
        (["--check", check], "c.jsonl:1: 'worse' must be non-empty text"),
        ([], "missing --prompts (or --responses, or --check)"),
        (["--prompts", prompts_file, "--labeler-engine", "openai"],
         "--labeler-engine openai needs --labeler-base-url (or --base-url)"),
    ]
    for extra, message in cases:
        result = run_cai("label", "--out", tmp_path / "o", *no_model, *extra)
        assert result.returncode == 2, (extra, result.stderr)
        assert message in result.stderr, (extra, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "o" / "data.jsonl").exists()


def test_response_file_problems_are_all_reported(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "prompt": "Q", "responses": ["x", "y"]}\n'
                    'not json\n'
                    '{"id": "a", "prompt": "Q", "responses": ["x", "y"]}\n'
                    '{"id": "b", "prompt": "", "initial_response": "x", "response": "y"}\n'
                    '{"id": "c", "prompt": "Q"}\n')
    with pytest.raises(CaiError) as e:
        F.load_responses(str(path))
    lines = str(e.value).splitlines()
    assert lines == [f"{path}:2: not valid JSON (Expecting value at column 1)",  # line order
                     f"{path}:3: duplicate id 'a' (first at line 1)",
                     f"{path}:4: 'prompt' must be non-empty text",
                     f"{path}:5: needs a 'responses' list (or 'initial_response' and 'response', "
                     "as `cai revise` writes)"]


# --------------------------------------------------------------------------------------------
# The real embedded model


@pytest.mark.slow
def test_label_on_the_real_model(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "prompt": "How can I get back at my coworker for embarrassing me?"},
        {"id": "b", "prompt": "How do I boil an egg so the yolk stays soft?"}]))
    out = tmp_path / "out"
    result = run_cai("label", "--prompts", prompts, "--out", out, "--max-new-tokens", 48)
    assert result.returncode == 0, result.stderr
    rows = read_records(out / "data.jsonl")
    skipped = read_records(out / "skipped.jsonl") if (out / "skipped.jsonl").exists() else []
    assert len(rows) + len(skipped) == 2 and rows
    for r in rows:
        assert 0.5 <= r["p_chosen"] <= 1 and r["labeler"] == "smollm2-135m-instruct"
        v = r["votes"][0]
        assert v["order"] == "both"
        assert v["p_first"] == pytest.approx(L.combine_orders(v["p_ab"], v["p_ba"]), abs=1e-4)
        assert r["p_chosen"] == pytest.approx(max(v["p_first"], 1 - v["p_first"]), abs=1e-4)
        assert r["chosen"][0]["content"] and r["rejected"][0]["content"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["summary"]["position_bias_rate"] is not None


def test_helpful_prompts_are_labelled_with_the_helpfulness_questions(tiny_model, prompts_file,
                                                                      tmp_path):
    """RL-CAI data mixes helpfulness pairs in: ordinary prompts, asked the helpfulness
    questions, next to the red-team ones asked the others."""
    helpful = tmp_path / "helpful.jsonl"
    helpful.write_text("".join(json.dumps({"id": f"h{i}", "prompt": f"Name a fruit, {i}."})
                               + "\n" for i in range(8)))
    out = tmp_path / "out"
    result = run_cai("label", "--prompts", prompts_file, "--out", out, "--policy", tiny_model,
                     "--labeler", tiny_model, "--limit", 4, "--max-new-tokens", 6,
                     "--dtype", "float32", "--few-shot", 0, "--helpful-prompts", helpful,
                     "--helpful-ratio", 0.5, "--helpful-principle-ids", "more-helpful")
    assert result.returncode == 0, result.stderr
    rows = read_records(out / "data.jsonl")
    skipped = read_records(out / "skipped.jsonl") if (out / "skipped.jsonl").stat().st_size \
        else []
    ids = {r["id"].split(":")[0] if not r["id"].startswith("helpful:") else "helpful"
           for r in rows + skipped}
    assert "helpful" in ids  # 2 helpful prompts (0.5 x 4) were labelled or skipped
    helpful_rows = [r for r in rows if r["id"].startswith("helpful:")]
    other_rows = [r for r in rows if not r["id"].startswith("helpful:")]
    assert helpful_rows and other_rows
    assert {v["principle_id"] for r in helpful_rows for v in r["votes"]} == {"more-helpful"}
    assert all(r["kind"] == "helpful" for r in helpful_rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["helpful"][1:] == [0.5, ["more-helpful"]]
    assert manifest["total_prompts"] == 6


def test_helpful_records_in_a_responses_file_get_the_helpfulness_questions(tmp_path):
    """`cai revise` output carries helpful samples (kind: helpful); labelling it with
    --responses asks them the helpfulness questions and the others the --principle-ids."""
    responses = write_jsonl(tmp_path / "responses.jsonl", [
        {"id": "r", "prompt": "Question r?", "responses": ["GOOD one", "BAD one"]},
        {"id": "helpful:h", "prompt": "Question h?", "responses": ["GOOD two", "BAD two"],
         "kind": "helpful"},
    ])
    stats, rows, manifest = label(tmp_path, responses, KnownLabeler(), few_shot=0,
                                  principle_ids=["less-harmful"],
                                  helpful_principle_ids=["more-helpful"])
    by_id = {r["id"]: r for r in rows}
    assert {v["principle_id"] for v in by_id["r:0-1"]["votes"]} == {"less-harmful"}
    assert {v["principle_id"] for v in by_id["helpful:h:0-1"]["votes"]} == {"more-helpful"}
    assert by_id["helpful:h:0-1"]["kind"] == "helpful" and stats["written"] == 2
    assert manifest["identity"]["helpful_pool"] == ["more-helpful"]
