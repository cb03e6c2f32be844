"""Smoke runs on the real embedded SmolLM2-135M with answers cut to 1-8 tokens, the lengths at
which a real model writes the odd outputs (empty, unchanged, one word) that once crashed
`cai revise`: every run exits 0 with every id written once (`pytest -m slow`)."""

import json

import jsonschema
import pytest
from conftest import read_records, run_cai

from cai.foundation.record_schemas import JUDGMENT, LABEL, LABEL_SKIP, REVISE

pytestmark = pytest.mark.slow


def _ids_once(out, expected: int) -> None:
    rows = read_records(out / "data.jsonl")
    skipped = out / "skipped.jsonl"
    ids = [r["id"] for r in rows] + \
        ([r["id"] for r in read_records(skipped)] if skipped.is_file() else [])
    assert len(ids) == len(set(ids)) == expected
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("gate", [True, False], ids=["gate", "no-gate"])
@pytest.mark.parametrize("rounds", [1, 4])
@pytest.mark.parametrize("tokens", [1, 4, 8])
def test_revise_with_tiny_answers(tmp_path, tokens, rounds, gate):
    out = tmp_path / "out"
    result = run_cai("revise", "--prompts", "data/red_team.jsonl", "--limit", 32,
                     "--rounds", rounds, "--max-new-tokens", tokens, "--few-shot", 1,
                     "--gate" if gate else "--no-gate", "--out", out)
    assert result.returncode == 0, result.stderr
    _ids_once(out, 32)
    for r in read_records(out / "data.jsonl"):
        jsonschema.validate(r, REVISE)


@pytest.mark.parametrize("tokens", [1, 4, 8])
def test_label_with_tiny_answers(tmp_path, tokens):
    out = tmp_path / "out"
    result = run_cai("label", "--prompts", "data/red_team.jsonl", "--limit", 16,
                     "--samples", 3, "--max-new-tokens", tokens, "--out", out)
    assert result.returncode == 0, result.stderr
    _ids_once(out, 16 * 3)
    for r in read_records(out / "data.jsonl"):
        jsonschema.validate(r, LABEL)
    if (out / "skipped.jsonl").is_file():
        for s in read_records(out / "skipped.jsonl"):
            jsonschema.validate(s, LABEL_SKIP)


@pytest.mark.parametrize("tokens", [1, 4, 8])
def test_eval_with_tiny_answers(tmp_path, tokens):
    out = tmp_path / "out"
    result = run_cai("eval", "--model", "base=smollm2-135m-instruct", "--limit", 8,
                     "--max-new-tokens", tokens, "--no-ability", "--compare", "none",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    judgments = [r for r in read_records(out / "judgments.jsonl") if r["kind"] == "classify"]
    sets = json.loads((out / "metrics.json").read_text())["sets"]
    assert len({r["id"] for r in judgments}) == len(judgments) >= 8 * len(sets)
    for r in judgments:
        jsonschema.validate(r, JUDGMENT)
    assert (out / "report.html").is_file()
