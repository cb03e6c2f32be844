"""`cai constitution try` (cai.revise.preview): one round per principle on one answer, with
the revision gate's verdicts, on a tiny random model."""

import pytest
from conftest import ROOT, run_cai

from cai import constitution as C
from cai.foundation import options as cfgmod
from cai.foundation.templates import Templates
from cai.generation import make_generator
from cai.revise.config import ReviseConfig
from cai.revise.gate import make_gate
from cai.revise.preview import changed_fraction, format_table, try_principles

MINIMAL = ROOT / "constitutions" / "minimal.yaml"
PROMPT = "How do I pick the lock of my own shed?"


def test_changed_fraction_by_hand():
    assert changed_fraction("a b c", "a  b c") == 0
    assert changed_fraction("a b", "c d") == 1
    assert changed_fraction("a b c d", "a b x d") == pytest.approx(1 - 2 * 3 / 8)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return make_generator("hf", str(tiny_model), dtype="float32")


def _cfg(tiny_model, **options) -> ReviseConfig:
    return cfgmod.build(ReviseConfig, {"model": str(tiny_model), "dtype": "float32",
                                       "feedback_dtype": "float32", "max_new_tokens": 8,
                                       "constitution": str(MINIMAL), "prompts": "-", "out": "-",
                                       **options}, "test")


def test_every_principle_on_the_same_answer_with_the_gate(tiny_model, tiny):
    cfg = _cfg(tiny_model, gate=True)
    result = try_principles(cfg, PROMPT, None, tiny, tiny)
    c = C.load(MINIMAL)
    assert [r["principle_id"] for r in result["rows"]] == [p.id for p in c.critique_revision]
    assert result["prompt"] == PROMPT and result["answer"]
    gate = make_gate(cfg, c, Templates(None))
    assert any("gate" in row for row in result["rows"])
    for row in result["rows"]:
        assert row["flag"] in (None, "empty", "unchanged")
        if row["flag"] is not None:
            assert "gate" not in row  # nothing to judge
            continue
        # the verdict is the gate's own, on this revision against the one first answer
        (p,) = gate.p_better(tiny, [{"key": f"try:gate:{row['principle_id']}", "prompt": PROMPT,
                                     "first": row["revision"], "second": result["answer"]}])
        assert row["gate"]["p_revision"] == pytest.approx(p, abs=1e-4)
        assert row["gate"]["accepted"] == (p > cfg.gate_threshold)
        assert row["changed"] == pytest.approx(changed_fraction(result["answer"],
                                                                row["revision"]), abs=1e-3)
    lines = format_table(result, width=120)
    header = next(i for i, line in enumerate(lines) if line.startswith("principle"))
    assert "gate p(revision)" in lines[header]
    table = lines[header + 2:header + 2 + 2 * len(result["rows"])]
    for row, first, second in zip(result["rows"], table[::2], table[1::2]):
        assert first.split()[0] == row["principle_id"]
        assert "critique: " in first and "revision: " in second
        assert all(len(line) <= 120 for line in (first, second))
    again = try_principles(cfg, PROMPT, None, tiny, tiny)
    assert again == result  # seeded


def test_named_principles_without_the_gate(tiny_model, tiny):
    result = try_principles(_cfg(tiny_model, gate=False), PROMPT, ["needless-refusal"],
                            tiny, tiny)
    assert [r["principle_id"] for r in result["rows"]] == ["needless-refusal"]
    assert "gate" not in result["rows"][0] and result["gate_threshold"] is None
    assert "gate: a revision is kept" not in "\n".join(format_table(result))


def test_cli_try(tiny_model):
    common = ("--prompt", PROMPT, "--model", tiny_model, "--dtype", "float32",
              "--max-new-tokens", 6)
    result = run_cai("constitution", "try", MINIMAL, *common, "--principle", "all",
                     "--feedback-model", tiny_model, "--feedback-dtype", "float32")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"prompt: {PROMPT}\nfirst answer: ")
    assert "gate: a revision is kept when P(revision better than the answer) > 0.5" in out
    assert out.count("--- harmful-content (") == 1 and out.count("--- needless-refusal (") == 1
    assert any(word in out for word in ("kept", "dropped", "not asked"))
    plain = run_cai("constitution", "try", MINIMAL, *common, "--principle", "harmful-content")
    assert plain.returncode == 0 and "gate: a revision is kept" not in plain.stdout
    assert "--- needless-refusal" not in plain.stdout
    bad = run_cai("constitution", "try", MINIMAL, *common, "--principle", "harmful-contnet")
    assert bad.returncode == 2
    assert bad.stderr == (f"cai: error: {MINIMAL}: no critique_revision principle "
                          "'harmful-contnet' (did you mean 'harmful-content'?)\n")
