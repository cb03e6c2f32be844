"""The real embedded SmolLM2-135M-Instruct (minutes on a CPU): `pytest -m slow`."""

import json

import pytest
from conftest import feedback_model_installed, read_records, run_cai

pytestmark = pytest.mark.slow


def test_revise_on_the_real_model(tmp_path):
    out = tmp_path / "out"
    result = run_cai("revise", "--prompts", "data/red_team.jsonl", "--limit", 2, "--rounds", 2,
                     "--max-new-tokens", 96, "--out", out)
    assert result.returncode == 0, result.stderr
    rows = read_records(out / "data.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert len(r["initial_response"].split()) > 5  # a real model writes real text
        assert all(rd["critique"] and rd["revision"] for rd in r["rounds"])
        taken = [rd["revision"] for rd in r["rounds"] if rd.get("gate", {}).get("accepted")]
        assert r["response"] == (taken[-1] if taken else r["initial_response"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["generated_tokens"] > 100
    summary = manifest["summary"]
    assert summary["accepted"] + summary["rejected"] + summary["unchanged"] + \
        summary["empty"] + summary["copied"] == summary["revisions"] == 4


@pytest.mark.skipif(not feedback_model_installed(),
                    reason="needs the feedback model: CAI_FEEDBACK_MODEL=1 bash scripts/setup.sh")
def test_revise_round_with_a_separate_feedback_model(tmp_path):
    """The 135M policy answers; the 1.5B feedback model critiques, revises and gates."""
    out = tmp_path / "out"
    result = run_cai("revise", "--prompts", "data/red_team.jsonl", "--limit", 2, "--rounds", 1,
                     "--max-new-tokens", 96, "--few-shot", 1, "--out", out,
                     "--feedback", "qwen2.5-coder-1.5b-instruct")
    assert result.returncode == 0, result.stderr
    rows = read_records(out / "data.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert r["model"] == "smollm2-135m-instruct"
        assert r["feedback_model"] == "qwen2.5-coder-1.5b-instruct"
        (step,) = r["rounds"]
        assert len(step["critique"].split()) > 5 and len(step["revision"].split()) > 5
        if step["flag"] is None:
            assert 0 < step["gate"]["p_revision"] < 1
            assert r["response"] == (step["revision"] if step["gate"]["accepted"]
                                     else r["initial_response"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["feedback_model"] == "qwen2.5-coder-1.5b-instruct"
