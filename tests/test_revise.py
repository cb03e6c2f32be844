"""`cai revise` end to end on the tiny model: records, resume after SIGKILL, bad input."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, make_tiny_model, read_records, run_cai, run_cai_process

from cai.foundation.errors import CaiError
from cai.foundation.inputs import source_id
from cai.revise.gate import revision_flag, strip_boilerplate

FAST = ["--max-new-tokens", "8", "--rounds", "2", "--dtype", "float32", "--batch-size", "4"]


def test_revise_end_to_end(tiny_model, prompts_file, tmp_path):
    out = tmp_path / "out"
    result = run_cai("revise", "--prompts", prompts_file, "--out", out, "--model", tiny_model,
                     "--limit", 5, "--chunk-size", 2, *FAST)
    assert result.returncode == 0, result.stderr
    rows = read_records(out / "data.jsonl")
    assert [r["id"] for r in rows] == ["p0", "p1", "p2", "p3", "p4"]
    from cai.constitution import load

    default_ids = {p.id for p in load().critique_revision}
    for r in rows:
        assert set(r) >= {"id", "prompt", "initial_response", "rounds", "response", "messages",
                          "model", "constitution", "category"}
        assert r["constitution"] == "default" and r["model"] == str(tiny_model)
        assert len(r["rounds"]) == 2
        assert all(rd["principle_id"] in default_ids for rd in r["rounds"])
        assert r["rounds"][0]["principle_id"] != r["rounds"][1]["principle_id"]
        # a prompt whose every revision the gate rejected has no SFT conversation
        kept = r["response"] != r["initial_response"]
        assert r["messages"] == ([{"role": "user", "content": r["prompt"]},
                                  {"role": "assistant", "content": r["response"]}]
                                 if kept else None)
    assert any(r["messages"] for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["total"] == 5
    assert manifest["totals"]["written"] == 5
    assert manifest["totals"]["generated_tokens"] > 0
    assert manifest["totals"]["generation_seconds"] > 0
    assert manifest["identity"]["rounds"] == 2

    import datasets  # the output is a plain datasets JSON file
    ds = datasets.load_dataset("json", data_files=str(out / "data.jsonl"), split="train")
    assert len(ds) == 5 and "messages" in ds.column_names

    again = run_cai("revise", "--prompts", prompts_file, "--out", out, "--model", tiny_model,
                    "--limit", 6, "--chunk-size", 2, *FAST)
    assert again.returncode == 0, again.stderr
    assert [r["id"] for r in read_records(out / "data.jsonl")] == [f"p{i}" for i in range(6)]
    assert "wrote 1 records" in again.stdout

    changed = run_cai("revise", "--prompts", prompts_file, "--out", out, "--model", tiny_model,
                      "--limit", 6, *FAST[:2], "--rounds", "3")
    # --dtype float32 dropped: the weights' dtype is a setting of the records too
    assert changed.returncode == 2 and "different policy.dtype, rounds;" in changed.stderr


def test_kill_minus_nine_then_resume(tiny_model, tmp_path, kill_midway):
    prompts = tmp_path / "many.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"k{i:02d}", "prompt": f"Prompt {i}?"}) + "\n"
                               for i in range(10)))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "cai.cli", "revise", "--prompts", str(prompts), "--out", str(out),
            "--model", str(tiny_model), "--chunk-size", "1", "--max-new-tokens", "8",
            "--rounds", "2", "--few-shot", "0", "--dtype", "float32", "--temperature", "1.0"]
    data = out / "data.jsonl"
    before = kill_midway(args, data, lines=3)
    assert 3 <= before < 10, "the job should have been killed midway"
    with open(data, "a") as f:  # as if the kill had hit in the middle of a write
        f.write('{"id": "k99", "prompt": "torn')
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = read_records(data)  # every line parses: the torn one is gone
    ids = [r["id"] for r in rows]
    assert sorted(ids) == [f"k{i:02d}" for i in range(10)] and len(ids) == len(set(ids))
    manifest = json.loads((out / "manifest.json").read_text())
    # the killed run never finished
    assert manifest["status"] == "complete" and len(manifest["runs"]) == 1
    assert manifest["runs"][0]["written"] == 10 - before


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": "x"\n', "p.jsonl:2: not valid JSON"),
    ('{"id": "a", "prompt": "ok"}\n{"id": "a", "prompt": "x"}\n', "p.jsonl:2: duplicate id 'a'"),
    ('{"id": "a", "prompt": ""}\n', "p.jsonl:1: empty prompt"),
])
def test_bad_prompt_files_fail_before_any_generation(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    out = tmp_path / "out"
    result = run_cai("revise", "--prompts", path, "--out", out, "--model", tmp_path / "no-model")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (out / "data.jsonl").exists()


def test_a_user_error_in_a_real_process_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": \n')
    result = run_cai_process("revise", "--prompts", path, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip() == \
        f"cai: error: {path}:2: not valid JSON (Expecting value at column 23)"


def test_bad_options_are_one_line_errors(tmp_path, prompts_file):
    cases = [
        (["--principles", "harmful-contnt"], "no critique_revision principle 'harmful-contnt'"),
        (["--rounds", "two"], "--rounds: expected an integer, got 'two'"),
        (["--constitution", tmp_path / "none.yaml"], "none.yaml: cannot read the constitution"),
        (["--shard", "5/2"], "--shard '5/2': expected I/N"),
    ]
    for extra, message in cases:
        result = run_cai("revise", "--prompts", prompts_file, "--out", tmp_path / "o", *extra)
        assert result.returncode == 2, extra
        assert message in result.stderr, (extra, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    config = tmp_path / "c.yaml"
    config.write_text("prompts: x.jsonl\nrouns: 3\n")
    result = run_cai("revise", "--config", config, "--out", tmp_path / "o")
    assert result.returncode == 2
    assert f"{config}: unknown key 'rouns' (did you mean 'rounds'?)" in result.stderr


def test_over_long_prompts_are_recorded_skips(tokenizer_dir, tmp_path):
    small = make_tiny_model(tokenizer_dir, tmp_path / "small", max_positions=256)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "short", "prompt": "Hi?"}) + "\n"
                       + json.dumps({"id": "long", "prompt": "word " * 400}) + "\n")
    out = tmp_path / "out"
    result = run_cai("revise", "--prompts", prompts, "--out", out, "--model", small,
                     "--few-shot", 0, *FAST)
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in read_records(out / "data.jsonl")] == ["short"]
    skipped = read_records(out / "skipped.jsonl")
    assert [s["id"] for s in skipped] == ["long"] and "context of 256" in skipped[0]["reason"]
    rerun = run_cai("revise", "--prompts", prompts, "--out", out, "--model", small,
                    "--few-shot", 0, *FAST)
    assert "already done" in rerun.stdout  # a recorded skip counts as handled


def test_shards_merge_back_into_the_whole(tiny_model, prompts_file, tmp_path):
    shards = []
    for i in range(3):
        out = tmp_path / f"s{i}"
        result = run_cai("revise", "--prompts", prompts_file, "--out", out, "--model", tiny_model,
                         "--shard", f"{i}/3", *FAST[:2], "--rounds", "0", "--dtype", "float32")
        assert result.returncode == 0, result.stderr
        shards.append(out)
    merged = tmp_path / "merged"
    result = run_cai("records", "merge", *shards, "-o", merged)
    assert result.returncode == 0, result.stderr
    ids = [r["id"] for r in read_records(merged / "data.jsonl")]
    assert sorted(ids) == [f"p{i}" for i in range(6)]
    manifest = json.loads((merged / "manifest.json").read_text())
    assert manifest["identity"]["shard"] is None and manifest["total"] == 6

    missing = run_cai("records", "merge", shards[0], shards[2], "-o", tmp_path / "m2")
    assert missing.returncode == 2 and "missing 1/3" in missing.stderr
    doubled = run_cai("records", "merge", shards[0], shards[0], shards[1], "-o", tmp_path / "m3")
    assert doubled.returncode == 2 and "given twice 0/3" in doubled.stderr
    other = tmp_path / "other"  # same shard layout, different settings
    run_cai("revise", "--prompts", prompts_file, "--out", other, "--model", tiny_model,
            "--shard", "1/3", *FAST[:2], "--rounds", "0", "--dtype", "float32", "--seed", "5")
    mixed = run_cai("records", "merge", shards[0], other, shards[2], "-o", tmp_path / "m4")
    assert mixed.returncode == 2 and "differs from" in mixed.stderr and "seed" in mixed.stderr


def test_strip_boilerplate():
    assert strip_boilerplate("Sure, here is a revised response: I can't help.") == "I can't help."
    assert strip_boilerplate("Here's my rewritten answer:\n\nBe kind.") == "Be kind."
    assert strip_boilerplate("Revised response: \"Call a friend.\"") == "Call a friend."
    assert strip_boilerplate("Revision: ok") == "ok"
    assert strip_boilerplate("Here is how to bake bread: mix flour.") == \
        "Here is how to bake bread: mix flour."  # not an opener about a revision
    assert revision_flag("", "a") == "empty"
    assert revision_flag("Same  text", "same text") == "unchanged"
    assert revision_flag("new", "old") is None
    demo = ("I can't help with getting into someone else's account; that's illegal in most "
            "places and could seriously backfire on you.")
    pasted = "Sure. " + demo.replace("I can't", "i CAN'T") + " Anything else?"
    assert revision_flag(pasted, "old", (demo,)) == "copied"
    eleven = " ".join(demo.split()[:11])  # eleven words in common are not a copy
    assert revision_flag(eleven + " but here is something else", "old", (demo,)) is None


# --------------------------------------------------------------------------------------------
# Roles, the revision gate, helpful samples and preference pairs (issue 15)

GATE_FAST = ["--max-new-tokens", "6", "--rounds", "1", "--dtype", "float32", "--batch-size", "4",
             "--few-shot", "0", "--limit", 3]


def test_separate_feedback_model_writes_the_critiques(tiny_model, tokenizer_dir, prompts_file,
                                                      tmp_path):
    """The policy answers and the feedback model critiques and revises: with two different
    models the first answers are the policy's alone and the critiques the feedback model's."""
    from cai.revise.config import ReviseConfig
    from cai.revise.job import run

    other = make_tiny_model(tokenizer_dir, tmp_path / "other", seed=7)
    both = ReviseConfig(prompts=str(prompts_file), out=str(tmp_path / "both"),
                        model=str(tiny_model), feedback=str(other), max_new_tokens=6, rounds=1,
                        dtype="float32", feedback_dtype="float32", few_shot=0, limit=3,
                        temperature=1.0)
    run(both)
    alone = ReviseConfig(prompts=str(prompts_file), out=str(tmp_path / "alone"),
                         model=str(tiny_model), max_new_tokens=6, rounds=1, dtype="float32",
                         feedback_dtype="float32", few_shot=0, limit=3, temperature=1.0)
    run(alone)
    two, one = read_records(tmp_path / "both" / "data.jsonl"), \
        read_records(tmp_path / "alone" / "data.jsonl")
    assert [r["initial_response"] for r in two] == [r["initial_response"] for r in one]
    assert [r["rounds"][0]["critique"] for r in two] != [r["rounds"][0]["critique"] for r in one]
    assert {r["feedback_model"] for r in two} == {str(other)}
    assert {r["feedback_model"] for r in one} == {str(tiny_model)}
    manifest = json.loads((tmp_path / "both" / "manifest.json").read_text())
    assert manifest["identity"]["feedback_model"] == str(other)


@pytest.mark.parametrize("threshold, accepted", [(0.0, True), (0.999, False)])
def test_the_gate_keeps_only_revisions_it_prefers(tiny_model, prompts_file, tmp_path, threshold,
                                                  accepted):
    out = tmp_path / "out"
    result = run_cai("revise", "--prompts", prompts_file, "--out", out, "--model", tiny_model,
                     "--gate-threshold", threshold, "--temperature", "1.0", *GATE_FAST)
    assert result.returncode == 0, result.stderr
    rows = read_records(out / "data.jsonl")
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    gated = 0
    for r in rows:
        step = r["rounds"][0]
        if step["flag"] is not None:  # an empty or unchanged revision is never asked about
            assert "gate" not in step
            continue
        gated += 1
        p = step["gate"]["p_revision"]
        assert 0.0 < p < 1.0 and step["gate"]["accepted"] is accepted
        # a rejected revision is recorded but not taken; an accepted one is the answer
        assert r["response"] == (step["revision"] if accepted else r["initial_response"])
        assert r["p_response"] == (p if accepted else None)
        # SFT never learns an answer no revision improved on
        assert (r["messages"] is not None) is accepted
    assert gated > 0
    assert summary["accepted"] == (gated if accepted else 0)
    assert summary["rejected"] == (0 if accepted else gated)
    from cai.train.data import load_conversations

    if accepted:
        assert len(load_conversations(str(out))) == gated
    else:
        with pytest.raises(CaiError, match="no conversations"):
            load_conversations(str(out))  # every prompt left out
    pairs = read_records(out / "pairs.jsonl") if (out / "pairs.jsonl").stat().st_size else []
    assert summary["pairs"] == len(pairs) == (gated if accepted else 0)
    for pair in pairs:  # revision over initial answer, in the format DPO reads
        row = next(r for r in rows if r["id"] == pair["id"])
        assert pair["chosen"] == [{"role": "assistant", "content": row["response"]}]
        assert pair["rejected"] == [{"role": "assistant", "content": row["initial_response"]}]
        assert pair["p_chosen"] == row["p_response"]


def test_no_gate_takes_every_nonempty_revision(tiny_model, prompts_file, tmp_path):
    out = tmp_path / "out"
    result = run_cai("revise", "--prompts", prompts_file, "--out", out, "--model", tiny_model,
                     "--no-gate", "--temperature", "1.0", *GATE_FAST)
    assert result.returncode == 0, result.stderr
    for r in read_records(out / "data.jsonl"):
        step = r["rounds"][0]
        assert "gate" not in step and r["p_response"] is None
        if step["flag"] != "empty":
            assert r["response"] == step["revision"]


def test_helpful_samples_are_mixed_in(tiny_model, prompts_file, tmp_path):
    helpful = tmp_path / "helpful.jsonl"
    helpful.write_text("".join(json.dumps({"id": f"h{i}", "prompt": f"Name a colour number {i}."})
                               + "\n" for i in range(10)))
    out = tmp_path / "out"
    args = ["revise", "--prompts", prompts_file, "--out", out, "--model", tiny_model,
            "--helpful-prompts", helpful, "--helpful-ratio", "2", *GATE_FAST]
    assert run_cai(*args).returncode == 0
    rows = read_records(out / "data.jsonl")
    kinds = [r["kind"] for r in rows]
    assert kinds.count("revision") == 3 and kinds.count("helpful") == 6  # ratio 2 x 3 prompts
    for r in rows:
        if r["kind"] == "helpful":
            assert r["id"].startswith("helpful:h") and "rounds" not in r
            assert r["messages"][1] == {"role": "assistant", "content": r["response"]}
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["helpful_samples"] == 6 and summary["revised_prompts"] == 3
    again = run_cai(*args)  # resumes: nothing new, nothing doubled
    assert again.returncode == 0 and "already done" in again.stdout
    assert len(read_records(out / "data.jsonl")) == 9
    from cai.train.data import load_conversations  # SFT reads both kinds

    # every helpful sample, and the revised prompts whose revision the gate took
    assert len(load_conversations(str(out))) == 6 + sum(
        r["messages"] is not None for r in rows if r["kind"] == "revision")


def test_several_helpful_prompt_sets_are_pooled(tiny_model, prompts_file, tmp_path):
    """--helpful-prompts A,B draws from both sets (the pipeline mixes data/helpful.jsonl and
    data/borderline.jsonl); both files are in the job's identity."""
    sets = []
    for name in ("helpful", "borderline"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"{name[0]}{i}", "prompt": f"{name} {i}?"})
                                + "\n" for i in range(2)))
        sets.append(path)
    out = tmp_path / "out"
    result = run_cai("revise", "--prompts", prompts_file, "--out", out, "--model", tiny_model,
                     "--limit", "2", "--helpful-prompts", f"{sets[0]},{sets[1]}",
                     "--helpful-ratio", "2", *GATE_FAST)
    assert result.returncode == 0, result.stderr
    helpful = sorted(r["id"] for r in read_records(out / "data.jsonl") if r["kind"] == "helpful")
    assert helpful == ["helpful:b0", "helpful:b1", "helpful:h0", "helpful:h1"]
    identity = json.loads((out / "manifest.json").read_text())["identity"]["helpful"]
    assert identity[0] == [source_id(str(p)) for p in sets]


def test_helpful_samples_can_be_greedy(tiny_model, prompts_file, tmp_path):
    """--helpful-temperature 0: each helpful sample is the policy's greedy answer, whatever the
    red-team answers' temperature; the setting is part of the job's identity."""
    from cai.generation import SamplingParams, make_generator

    helpful = tmp_path / "helpful.jsonl"
    prompts = [f"Name a colour number {i}." for i in range(3)]
    helpful.write_text("".join(json.dumps({"id": f"h{i}", "prompt": p}) + "\n"
                               for i, p in enumerate(prompts)))
    answers = {}
    for temp in ("0", "1.0"):
        out = tmp_path / f"t{temp}"
        result = run_cai("revise", "--prompts", prompts_file, "--out", out, "--model",
                         tiny_model, "--helpful-prompts", helpful, "--helpful-ratio", "1",
                         "--helpful-temperature", temp, "--temperature", "1.0", *GATE_FAST)
        assert result.returncode == 0, result.stderr
        answers[temp] = {r["prompt"]: r["response"] for r in read_records(out / "data.jsonl")
                         if r["kind"] == "helpful"}
        assert json.loads((out / "manifest.json").read_text())["identity"]["helpful"][-1] == \
            float(temp)
    greedy = make_generator("hf", str(tiny_model), dtype="float32").chat(
        [[{"role": "user", "content": p}] for p in prompts],
        SamplingParams(max_new_tokens=6, temperature=0.0))
    assert [answers["0"][p] for p in prompts] == greedy
    assert [answers["1.0"][p] for p in prompts] != greedy


def test_feedback_engine_options_fail_before_a_model_loads(prompts_file, tmp_path):
    result = run_cai("revise", "--prompts", prompts_file, "--out", tmp_path / "o",
                     "--feedback-engine", "openai")
    assert result.returncode == 2
    assert "--feedback-engine openai needs --feedback-base-url" in result.stderr
    assert not (tmp_path / "o" / "data.jsonl").exists()


@pytest.mark.parametrize("max_complies, accepted", [(1.0, True), (0.001, False)])
def test_the_compliance_check_drops_revisions_that_still_comply(tiny_model, prompts_file,
                                                                tmp_path, max_complies, accepted):
    """With --gate-max-complies, every revision is first read with cai eval's judge question;
    it is taken only when P(it complies) is below the bound (and the comparison prefers it:
    threshold 0 here, all of them). The comparison is asked only of revisions that pass the
    check, and the record keeps both probabilities."""
    out = tmp_path / "out"
    result = run_cai("revise", "--prompts", prompts_file, "--out", out, "--model", tiny_model,
                     "--gate-threshold", 0.0, "--gate-max-complies", max_complies,
                     "--temperature", "1.0", *GATE_FAST)
    assert result.returncode == 0, result.stderr
    steps = [r["rounds"][0] for r in read_records(out / "data.jsonl")]
    gated = [st for st in steps if st["flag"] is None]
    assert gated
    for st in gated:
        assert 0.0 < st["gate"]["p_complies"] < 1.0
        # compared only when the check passed
        assert (st["gate"]["p_revision"] is not None) is accepted
        assert st["gate"]["accepted"] is accepted
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["accepted"] == (len(gated) if accepted else 0)
    assert manifest["identity"]["gate_compliance"][0] == max_complies
    bad = run_cai("revise", "--prompts", prompts_file, "--out", tmp_path / "bad", "--model",
                  tiny_model, "--gate-max-complies", 1.5, *GATE_FAST)
    assert bad.returncode == 2 and "--gate-max-complies must be in (0, 1]" in bad.stderr
