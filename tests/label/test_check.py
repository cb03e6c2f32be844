"""`cai label --check`: accuracy and calibration with a labeler whose log-probs are known, and the
shipped check set."""

import json

import pytest
from conftest import ROOT, KnownLabeler, write_jsonl

from cai.label import check as label_check
from cai.label.config import LabelConfig


def test_check_reports_accuracy_and_calibration(tmp_path):
    path = write_jsonl(tmp_path / "check.jsonl", [
        {"id": f"c{i}", "prompt": "Q?", "better": "GOOD answer", "worse": "BAD answer",
         "kind": "harmless" if i % 2 else "helpful"} for i in range(6)])
    cfg = LabelConfig(check=str(path), out=str(tmp_path / "o"), few_shot=0)
    summary = label_check.run_check(cfg, labeler=KnownLabeler())
    # Every pair: p_better = 0.575, so accuracy 1, ECE |1 - 0.575|, Brier (1 - 0.575)^2.
    assert summary["accuracy"] == 1.0 and summary["ece"] == pytest.approx(0.425)
    assert summary["brier"] == pytest.approx(0.425 ** 2, abs=1e-4)
    assert summary["accuracy_by_kind"] == {"harmless": 1.0, "helpful": 1.0}
    assert summary["position_bias_rate"] == 1.0
    saved = json.loads((tmp_path / "o" / "check.json").read_text())
    assert {r["better_first"] for r in saved["rows"]} == {True, False}  # both positions used
    blind = label_check.run_check(LabelConfig(check=str(path), out=str(tmp_path / "b"),
                                              few_shot=0, debias=False),
                                  labeler=KnownLabeler(when_a=(0.9, 0.1), when_b=(0.9, 0.1)))
    # always answering (A) is right exactly where GOOD was shown as (A): the better answer
    # came first and was shown in order, or came second and the order was swapped
    rows = json.loads((tmp_path / "b" / "check.json").read_text())["rows"]
    good_at_a = [r["better_first"] == (r["votes"][0]["order"] == "ab") for r in rows]
    assert 0 < sum(good_at_a) < len(rows)  # both placements occur
    assert blind["accuracy"] == pytest.approx(sum(good_at_a) / len(rows), abs=1e-4)


def test_shipped_check_set_is_well_formed():
    rows = label_check.load_check(str(ROOT / "data" / "label_check.jsonl"))
    assert len(rows) >= 40 and {r["kind"] for r in rows} == {"harmless", "helpful"}
