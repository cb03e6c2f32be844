"""`cai revise` end to end on the tiny model: records, resume after SIGKILL, bad input."""

import json
import signal
import subprocess
import sys
import time

import pytest

from cai.critique import revision_flag, strip_boilerplate
from conftest import ROOT, make_tiny_model, read_records, run_cai, run_cai_process

FAST = ["--max-new-tokens", "8", "--rounds", "2", "--dtype", "float32", "--batch-size", "4"]


def test_revise_end_to_end(tiny_model, prompts_file, tmp_path):
    out = tmp_path / "out"
    result = run_cai("revise", "--prompts", prompts_file, "--out", out, "--model", tiny_model,
                     "--limit", 5, "--chunk-size", 2, *FAST)
    assert result.returncode == 0, result.stderr
    rows = read_records(out / "data.jsonl")
    assert [r["id"] for r in rows] == ["p0", "p1", "p2", "p3", "p4"]
    default_ids = {p.id for p in __import__("cai.constitution").constitution.load().critique_revision}
    for r in rows:
        assert set(r) >= {"id", "prompt", "initial_response", "rounds", "response", "messages",
                          "model", "constitution", "category"}
        assert r["constitution"] == "default" and r["model"] == str(tiny_model)
        assert len(r["rounds"]) == 2
        assert all(rd["principle_id"] in default_ids for rd in r["rounds"])
        assert r["rounds"][0]["principle_id"] != r["rounds"][1]["principle_id"]
        assert r["messages"] == [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": r["response"]}]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["total"] == 5
    assert manifest["totals"]["written"] == 5
    assert manifest["totals"]["generated_tokens"] > 0 and manifest["totals"]["generation_seconds"] > 0
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
    assert changed.returncode == 2 and "different rounds" in changed.stderr


def test_kill_minus_nine_then_resume(tiny_model, tmp_path):
    prompts = tmp_path / "many.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"k{i:02d}", "prompt": f"Prompt {i}?"}) + "\n"
                               for i in range(10)))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "cai.cli", "revise", "--prompts", str(prompts), "--out", str(out),
            "--model", str(tiny_model), "--chunk-size", "1", "--max-new-tokens", "8",
            "--rounds", "2", "--few-shot", "0", "--dtype", "float32", "--temperature", "1.0"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = out / "data.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not data.exists() or data.read_text().count("\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = data.read_text().count("\n")
    assert 3 <= before < 10, "the job should have been killed midway"
    with open(data, "a") as f:  # as if the kill had hit in the middle of a write
        f.write('{"id": "k99", "prompt": "torn')
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = read_records(data)  # every line parses: the torn one is gone
    ids = [r["id"] for r in rows]
    assert sorted(ids) == [f"k{i:02d}" for i in range(10)] and len(ids) == len(set(ids))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["runs"]) == 1  # the killed run never finished
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
    assert result.stderr.strip() == f"cai: error: {path}:2: not valid JSON (Expecting value at column 23)"


def test_bad_options_are_one_line_errors(tmp_path, prompts_file):
    cases = [
        (["--principles", "harmful-contnt"], "no critique_revision principle 'harmful-contnt'"),
        (["--rounds", "two"], "'rounds': expected an integer, got 'two'"),
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
