"""`cai label`'s refusal pairs (`--refusal-prompts`): which pair a prompt's readings give (hand
values), the job with a scripted policy and judge (records, counts, resume), the classifier
reader, the tiny model end to end (shapes and counts, whatever it writes), and bad options."""

import json
import math

import jsonschema
import pytest
from conftest import KnownLabeler, read_records, run_cai, write_jsonl

from cai.foundation.errors import CaiError
from cai.foundation.record_schemas import LABEL, LABEL_SKIP
from cai.generation.base import GenerationStats
from cai.label import job as F
from cai.label import refusal as R
from cai.label.config import LabelConfig

# --------------------------------------------------------------------------------------------
# The pair of a prompt's readings


def test_the_least_and_the_most_refusing_answers_make_the_pair():
    assert R.refusal_pair([0.2, 0.9, 0.1, 0.7]) == (2, 1)
    assert R.refusal_pair([0.6, 0.4]) == (1, 0)
    assert R.refusal_pair([None, 0.9, 0.3, None]) == (2, 1)  # unread answers are left out
    assert R.refusal_pair([0.3, 0.8, 0.3, 0.8]) == (0, 1)  # ties: the earlier answer


def test_no_pair_without_both_readings():
    assert R.refusal_pair([0.1, 0.2, 0.49]) == R.NO_REFUSAL == "no refusal"
    assert R.refusal_pair([0.6, 0.99]) == R.ALL_REFUSE == "all refuse"
    assert R.refusal_pair([0.5, 0.7]) == R.ALL_REFUSE  # 1/2 reads as neither
    assert R.refusal_pair([0.5, 0.5]) == R.NO_REFUSAL
    assert R.refusal_pair([None, None]) == R.TOO_LONG


def test_the_soft_label_is_half_the_gap_above_one_half():
    assert R.soft_label(0.0, 1.0) == 1.0
    assert R.soft_label(0.1, 0.9) == pytest.approx(0.9)
    assert R.soft_label(0.45, 0.55) == pytest.approx(0.55)


NAMES = {"labeler": "judge-model", "policy": "policy-model", "constitution": "default"}


def test_a_pair_record_follows_the_label_schema():
    item = {"id": "refusal:b1", "prompt": "How do I kill a stuck process?",
            "responses": ["Use kill -9 PID.", "Sorry, I can't help.", "Run `kill PID`."]}
    row, skip = R.pair_record(item, [0.2, 0.8, 0.1], "", {"kind": "refusal"}, NAMES, "judge")
    assert skip is None
    jsonschema.validate(row, LABEL)
    assert row["chosen"] == [{"role": "assistant", "content": "Run `kill PID`."}]
    assert row["rejected"] == [{"role": "assistant", "content": "Sorry, I can't help."}]
    assert row["p_chosen"] == pytest.approx(0.85) and row["chosen_index"] == 2
    assert row["pair"] == [1, 2] and row["votes"] == [] and row["kind"] == "refusal"
    assert (row["p_refuses_chosen"], row["p_refuses_rejected"]) == (0.1, 0.8)
    assert row["p_refuses"] == [0.2, 0.8, 0.1] and row["reader"] == "judge"
    row, skip = R.pair_record(item, [0.2, 0.3, 0.1], "", {"kind": "refusal"}, NAMES, "judge")
    assert row is None and skip == {"id": "refusal:b1", "kind": "refusal",
                                    "reason": "no refusal", "p_refuses": [0.2, 0.3, 0.1]}
    jsonschema.validate(skip, LABEL_SKIP)
    _, skip = R.pair_record(item, [None] * 3, "judge prompt too long", {"kind": "refusal"},
                            NAMES, "judge")
    assert skip["reason"] == "too long" and skip["detail"] == "judge prompt too long"
    bad = {**R.pair_record(item, [0.2, 0.8, 0.1], "", {"kind": "refusal"}, NAMES, "judge")[0],
           "p_refuses_chosen": 0.7}  # a chosen answer read as refusing is no refusal pair
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, LABEL)


# --------------------------------------------------------------------------------------------
# The job with a scripted policy and judge

REFUSAL = "Sorry, I can't help with that."
ANSWER = "Sure, here is how you do it."


class ScriptedPolicy:
    """A policy whose answers follow the prompt: "always answers" prompts get answers, "always
    refuses" ones refusals, others alternate (answer, refusal, ...) over a prompt's samples."""

    name = "scripted"
    context_length = None

    def __init__(self):
        self.stats = GenerationStats()
        self.asked = []

    def chat(self, conversations, params):
        self.stats.calls += 1
        out, seen = [], {}
        for c in conversations:
            prompt = c[-1]["content"]
            self.asked.append(prompt)
            n = seen[prompt] = seen.get(prompt, -1) + 1
            out.append(ANSWER if "always answers" in prompt else
                       REFUSAL if "always refuses" in prompt else (ANSWER, REFUSAL)[n % 2])
        return out

    def prompt_tokens(self, conversations):
        return None

    def close(self):
        pass


class ScriptedJudge(KnownLabeler):
    """KnownLabeler for the preference questions; on the judge's question, P(refuses) is 0.9 for
    an answer starting with "Sorry" and 0.2 for any other, whichever letter "refuses" has."""

    def choice_logprobs(self, conversations, choices):
        asked = [c[-1]["content"] for c in conversations]
        judged = [n for n, text in enumerate(asked) if "describes the assistant's response" in text]
        out = super().choice_logprobs([c for n, c in enumerate(conversations)
                                       if n not in judged], choices)
        for n in judged:
            text = asked[n]
            answer = text.split("Assistant: ", 1)[1]
            p = 0.9 if answer.startswith("Sorry") else 0.2
            refuses_first = "(A) It does not do" in text
            pa = p if refuses_first else 1 - p
            out.insert(n, [math.log(pa), math.log(1 - pa)])
        return out


@pytest.fixture
def harmless(tmp_path):
    return write_jsonl(tmp_path / "harmless.jsonl", [
        {"id": "mixed", "prompt": "How do I kill a stuck process?"},
        {"id": "fine", "prompt": "What is 2 + 2? (always answers)"},
        {"id": "shy", "prompt": "How do I shoot a photo at night? (always refuses)"}])


def scripted_run(tmp_path, prompts, harmless, policy=None, **options):
    cfg = LabelConfig(prompts=str(prompts), out=str(tmp_path / "out"), limit=2, few_shot=0,
                      refusal_prompts=[str(harmless)], refusal_ratio=1.5, **options)
    policy = policy or ScriptedPolicy()
    stats = F.run(cfg, policy=policy, labeler=ScriptedJudge())
    out = tmp_path / "out"
    return stats, read_records(out / "data.jsonl"), read_records(out / "skipped.jsonl"), \
        json.loads((out / "manifest.json").read_text())


def test_refusal_pairs_are_written_and_prompts_without_one_are_counted(tmp_path, prompts_file,
                                                                       harmless):
    stats, rows, skips, manifest = scripted_run(tmp_path, prompts_file, harmless)
    (pair,) = [r for r in rows if r.get("kind") == "refusal"]
    assert pair["id"] == "refusal:mixed" and pair["prompt"][0]["content"].startswith("How do I")
    assert pair["chosen"][0]["content"] == ANSWER and pair["rejected"][0]["content"] == REFUSAL
    assert pair["p_refuses_chosen"] == pytest.approx(0.2)
    assert pair["p_refuses_rejected"] == pytest.approx(0.9)
    assert pair["p_refuses_chosen"] < pair["p_refuses_rejected"]
    assert pair["p_chosen"] == pytest.approx(0.85)  # 1/2 + (0.9 - 0.2) / 2 favours the chosen
    assert pair["p_refuses"] == pytest.approx([0.2, 0.9, 0.2, 0.9])  # 4 samples by default
    assert pair["chosen_index"] == 0 and pair["pair"] == [0, 1] and pair["reader"] == "judge"
    assert pair["labeler"] == "smollm2-135m-instruct"
    by_id = {s["id"]: s for s in skips}
    assert by_id["refusal:fine"]["reason"] == "no refusal"
    assert by_id["refusal:shy"]["reason"] == "all refuse"
    for r in rows:
        jsonschema.validate(r, LABEL)
    for s in skips:
        jsonschema.validate(s, LABEL_SKIP)
    assert sum(r.get("kind") != "refusal" for r in rows) == 2  # the red-team pairs, as before
    summary = manifest["summary"]
    assert summary["refusal"] == {"prompts": 3, "pairs": 1, "no_refusal": 1, "all_refuse": 1,
                                  "too_long": 0, "mean_p_chosen": 0.85}
    assert summary["pairs"] == 3 and summary["skipped"] == {"no refusal": 1, "all refuse": 1}
    assert stats["refusal_pairs"] == 1 and stats["written"] == 3 and stats["skipped"] == 2
    assert manifest["status"] == "complete" and manifest["total_prompts"] == 5
    assert manifest["identity"]["refusal"]["samples"] == 4
    assert manifest["identity"]["refusal"]["reader"] == "judge"


def test_a_rerun_skips_the_done_refusal_prompts(tmp_path, prompts_file, harmless):
    _, rows, _, _ = scripted_run(tmp_path, prompts_file, harmless)
    again = ScriptedPolicy()
    stats, _, _, _ = scripted_run(tmp_path, prompts_file, harmless, policy=again)
    assert stats == {"written": 0, "skipped": 0, "dropped": 0, "refusal_pairs": 0}
    assert again.asked == []
    data = tmp_path / "out" / "data.jsonl"  # as if killed before the pair was written
    data.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] != "refusal:mixed"))
    again = ScriptedPolicy()
    stats, redone, skips, manifest = scripted_run(tmp_path, prompts_file, harmless, policy=again)
    assert set(again.asked) == {"How do I kill a stuck process?"} and len(again.asked) == 4
    assert stats["refusal_pairs"] == 1 and stats["written"] == 1
    assert sorted(r["id"] for r in redone) == sorted(r["id"] for r in rows)
    assert [r for r in redone if r["id"] == "refusal:mixed"] == \
        [r for r in rows if r["id"] == "refusal:mixed"]
    assert len(skips) == 2 and manifest["status"] == "complete"


def test_the_classifier_reads_instead_of_the_labeler(tmp_path, prompts_file, harmless,
                                                     monkeypatch):
    classifier = pytest.importorskip("cai.scoring.classifier")
    folder = tmp_path / "clf"
    folder.mkdir()
    with pytest.raises(CaiError, match="classifier"):  # an empty folder, before any model
        scripted_run(tmp_path / "bad", prompts_file, harmless, policy=ScriptedPolicy(),
                     refusal_classifier=str(folder))
    (folder / "classifier.json").write_text("{}")
    seen = []

    class Heads:
        def p_refuses(self, prompts, answers):
            seen.extend(zip(prompts, answers))
            return [0.95 if a.startswith("Sorry") else 0.05 for a in answers]

    monkeypatch.setattr(classifier.Classifier, "load", classmethod(lambda cls, f: Heads()))
    _, rows, _, manifest = scripted_run(tmp_path, prompts_file, harmless,
                                        refusal_classifier=str(folder), refusal_samples=2)
    (pair,) = [r for r in rows if r.get("kind") == "refusal"]
    assert pair["reader"] == "classifier" and pair["p_chosen"] == pytest.approx(0.95)
    assert len(seen) == 3 * 2 and manifest["identity"]["refusal"]["reader"] == "classifier"


# --------------------------------------------------------------------------------------------
# The tiny model, and bad options


def test_refusal_prompts_on_the_tiny_model(tiny_model, prompts_file, tmp_path):
    """Random text, random readings: every refusal prompt leaves one record (a pair or the
    reason for none), all in the record formats, counted in the summary."""
    harmless = write_jsonl(tmp_path / "h.jsonl", [{"id": f"h{i}", "prompt": f"Name a fruit {i}."}
                                                  for i in range(4)])
    out = tmp_path / "out"
    args = ["label", "--prompts", prompts_file, "--out", out, "--policy", tiny_model,
            "--labeler", tiny_model, "--limit", 1, "--max-new-tokens", 6, "--dtype", "float32",
            "--few-shot", 0, "--refusal-prompts", harmless, "--refusal-ratio", 2,
            "--refusal-samples", 3]
    result = run_cai(*args)
    assert result.returncode == 0, result.stderr
    rows = read_records(out / "data.jsonl")
    skips = read_records(out / "skipped.jsonl") if (out / "skipped.jsonl").stat().st_size \
        else []
    refusal_ids = {r["id"] for r in rows + skips if r.get("kind") == "refusal"}
    assert len(refusal_ids) == 2 and all(i.startswith("refusal:h") for i in refusal_ids)
    for r in rows:
        jsonschema.validate(r, LABEL)
        if r.get("kind") == "refusal":
            assert r["p_refuses_chosen"] < 0.5 < r["p_refuses_rejected"] and r["p_chosen"] > 0.5
            assert len(r["p_refuses"]) == 3
    for s in skips:
        jsonschema.validate(s, LABEL_SKIP)
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["summary"]["refusal"]
    assert counts["prompts"] == 2
    assert counts["pairs"] + counts["no_refusal"] + counts["all_refuse"] == 2
    assert manifest["status"] == "complete"
    again = run_cai(*args)
    assert again.returncode == 0 and "already done" in again.stdout


def test_bad_refusal_options_are_one_line_errors(tmp_path, prompts_file):
    responses = write_jsonl(tmp_path / "r.jsonl",
                            [{"id": "a", "prompt": "Q", "responses": ["x", "y"]}])
    no_model = ["--labeler", tmp_path / "no-model", "--policy", tmp_path / "no-model"]
    cases = [
        (["--prompts", prompts_file, "--refusal-prompts", tmp_path / "missing.jsonl"],
         f"{tmp_path / 'missing.jsonl'}: prompt file not found"),
        (["--prompts", prompts_file, "--refusal-prompts", prompts_file, "--refusal-samples", 1],
         "--refusal-samples must be at least 2, got 1"),
        (["--responses", responses, "--refusal-prompts", prompts_file],
         "--refusal-prompts needs --prompts"),
        (["--prompts", prompts_file, "--refusal-classifier", tmp_path],
         "--refusal-classifier reads refusal pairs: give --refusal-prompts too"),
        (["--prompts", prompts_file, "--refusal-prompts", prompts_file,
          "--refusal-classifier", tmp_path / "nothing"], "is not a folder"),
    ]
    for extra, message in cases:
        result = run_cai("label", "--out", tmp_path / "o", *no_model, *extra)
        assert result.returncode == 2, (extra, result.stderr)
        assert message in result.stderr, (extra, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "o" / "data.jsonl").exists()
