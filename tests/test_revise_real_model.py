"""The real embedded SmolLM2-135M-Instruct (minutes on a CPU): `pytest -m slow`."""

import json

import pytest
from conftest import read_records, run_cai

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
        assert all(rd["critique"] for rd in r["rounds"])
        assert r["response"] != r["initial_response"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["generated_tokens"] > 100
