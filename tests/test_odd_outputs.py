"""The jobs' record logic is total: whatever a model writes or scores, every prompt (or pair, or
answer) ends in one complete record that passes its schema, never a traceback.

A fake engine stands in for the models, because what is tested is the jobs' handling of odd
outputs, which a real model produces only now and then: every text it writes is drawn by
hypothesis from empty and blank strings, text identical to an earlier text of the job (so a
revision can equal the answer it revises), a few-shot demonstration's own text, the openers
the clean-up strips, one token, very long text and non-ASCII; every pair of choice log-probs
from equal values, -inf and NaN as well as ordinary ones. The real models run in the slow smoke
tests (`test_odd_outputs_real_model.py`).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cai import ROOT
from cai.constitution import load
from cai.foundation import records
from cai.foundation.inputs import helpful_sample
from cai.foundation.record_schemas import JUDGMENT, LABEL, LABEL_SKIP, REVISE
from cai.generation.base import GenerationStats

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

DEMOS = [t for ex in load().examples for t in (ex.revision, ex.critique, ex.response)]
OPENERS = ["Sure, here is the revised response:", "Revision:", "Here's a rewritten answer:\n"]
LONG = "word " * 1500


def odd_text(history: list[str]) -> st.SearchStrategy[str]:
    """What a model might write: each kind the jobs must survive."""
    return st.one_of(
        st.just(""),
        st.sampled_from([" ", "\n\n", "\t \n "]),
        st.sampled_from(history) if history else st.just("echo"),      # identical to the input
        st.sampled_from(DEMOS),                                        # a demonstration's text
        st.tuples(st.sampled_from(OPENERS), st.sampled_from(["", "Fine.", DEMOS[0]]))
        .map("".join),                                                 # an opener, stripped
        st.sampled_from(["a", ".", "I"]),                              # one token
        st.just(LONG),                                                 # very long
        st.text(alphabet="éß中文🙂 \u200b\nab", min_size=1, max_size=30),  # non-ASCII
        st.text(max_size=60),
    )


def odd_logprobs(n: int) -> st.SearchStrategy[list[float]]:
    value = st.one_of(st.floats(min_value=-60, max_value=0), st.just(-math.inf),
                      st.just(math.nan))
    return st.one_of(st.floats(min_value=-30, max_value=0).map(lambda x: [x] * n),  # equal
                     st.just([-math.inf] * n), st.just([math.nan] * n),
                     st.lists(value, min_size=n, max_size=n))


class OddEngine:
    """The Generator protocol with every output drawn by hypothesis (a fake: the real models
    rarely write these outputs on cue)."""

    name = "odd"

    def __init__(self, data, context_length: int | None):
        self.data, self.context_length = data, context_length
        self.stats = GenerationStats()
        self.history: list[str] = []

    def chat(self, conversations, params):
        out = []
        for conv in conversations:
            text = self.data.draw(odd_text(self.history + [conv[-1]["content"]]))
            self.history.append(text)
            out.append(text)
        self.stats.calls += 1
        self.stats.generated_tokens += sum(len(t.split()) for t in out)
        return out

    def choice_logprobs(self, conversations, choices):
        return [self.data.draw(odd_logprobs(len(choices))) for _ in conversations]

    def prompt_tokens(self, conversations):
        return [sum(len(m["content"]) for m in c) // 4 + 8 for c in conversations]

    def close(self):
        pass


def write_prompts(folder: Path, name: str, n: int) -> Path:
    path = folder / name
    path.write_text("".join(json.dumps({"id": f"{name[:1]}{i}", "prompt": f"Request {i}: how "
                                        f"do I pick a lock, {'ü' * i}?"}) + "\n"
                            for i in range(n)))
    return path


def fake_model_folder(folder: Path) -> str:
    """A folder that stands for a model in the job's identity (its files are fingerprinted)."""
    model = folder / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return str(model)


@SETTINGS
@given(data=st.data(), rounds=st.integers(1, 4), gate=st.booleans(),
       max_complies=st.sampled_from([None, 0.5]), n=st.integers(1, 4), chunk=st.integers(1, 3),
       helpful=st.booleans(), context=st.sampled_from([None, 4000, 700]))
def test_revise_writes_one_valid_record_per_prompt(data, rounds, gate, max_complies, n, chunk,
                                                   helpful, context):
    from cai.revise import job as revise
    from cai.revise.config import ReviseConfig

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = fake_model_folder(tmp)
        cfg = ReviseConfig(
            prompts=str(write_prompts(tmp, "red.jsonl", n)), out=str(tmp / "out"), model=model,
            rounds=rounds, few_shot=1, chunk_size=chunk, max_new_tokens=8, gate=gate,
            gate_max_complies=max_complies,
            helpful_prompts=[str(write_prompts(tmp, "help.jsonl", 3))] if helpful else None)
        engine = OddEngine(data, context)
        revise.run(cfg, generator=engine, feedback=engine)

        rows = records.read_jsonl(tmp / "out" / records.DATA)
        skipped = records.read_jsonl(tmp / "out" / records.SKIPPED)
        ids = [r["id"] for r in rows] + [s["id"] for s in skipped]
        assert len(ids) == len(set(ids))  # every id once, in the records or the skips
        assert {i for i in ids if not i.startswith("helpful:")} == {f"r{i}" for i in range(n)}
        assert sum(i.startswith("helpful:h") for i in ids) == (min(n, 3) if helpful else 0)
        for r in rows:
            jsonschema.validate(r, REVISE)
            if r["kind"] != "revision":
                continue
            taken = [rd["revision"] for rd in r["rounds"] if rd["accepted"]]
            assert r["response"] == (taken[-1] if taken else r["initial_response"])
            assert all(rd["decided_by"] == ("gate" if gate else "no gate")
                       for rd in r["rounds"] if rd["flag"] is None)
            if gate:  # no SFT conversation teaches an unrevised answer
                assert (r["messages"] is None) == (r["response"] == r["initial_response"])
        manifest = json.loads((tmp / "out" / "manifest.json").read_text())
        assert manifest["status"] == "complete"


@SETTINGS
@given(data=st.data(), samples=st.integers(2, 3), principles=st.integers(1, 2),
       debias=st.booleans(), cot=st.booleans(), margin=st.sampled_from([0.0, 0.1]),
       n=st.integers(1, 3), helpful=st.booleans(), context=st.sampled_from([None, 4000, 600]))
def test_label_writes_every_pair_once(data, samples, principles, debias, cot, margin, n,
                                      helpful, context):
    from cai.label import job as label
    from cai.label.config import LabelConfig

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = fake_model_folder(tmp)
        cfg = LabelConfig(
            prompts=str(write_prompts(tmp, "red.jsonl", n)), out=str(tmp / "out"), policy=model,
            labeler=model, samples=samples, principles=principles, debias=debias, cot=cot,
            margin=margin, max_new_tokens=8, cot_max_new_tokens=8, chunk_size=2,
            helpful_prompts=[str(write_prompts(tmp, "help.jsonl", 2))] if helpful else None)
        engine = OddEngine(data, context)
        label.run(cfg, policy=engine, labeler=engine)

        rows = records.read_jsonl(tmp / "out" / records.DATA)
        skipped = records.read_jsonl(tmp / "out" / records.SKIPPED)
        ids = [r["id"] for r in rows] + [s["id"] for s in skipped]
        pairs = samples * (samples - 1) // 2
        prompts = n + len(helpful_sample(cfg.helpful_prompts, cfg.helpful_ratio, n))
        assert len(ids) == len(set(ids)) == prompts * pairs  # every pair once
        assert {i.rsplit(":", 1)[0] for i in ids if not i.startswith("helpful:")} == \
            {f"r{i}" for i in range(n)}
        for r in rows:
            jsonschema.validate(r, LABEL)
        for s in skipped:
            jsonschema.validate(s, LABEL_SKIP)
        assert json.loads((tmp / "out" / "manifest.json").read_text())["status"] == "complete"


@SETTINGS
@given(data=st.data(), n=st.integers(1, 5), debias=st.booleans(),
       context=st.sampled_from([None, 6000, 900]))
def test_eval_judge_writes_one_valid_judgment_per_answer(data, n, debias, context):
    from cai.eval.judging import classify_rows
    from cai.foundation.templates import Templates
    from cai.scoring.classify import EXAMPLES_FILE, load_judge_examples

    engine = OddEngine(data, context)
    chunk = [{"id": f"m/set/{i}", "model": "m", "set": "red_team", "prompt_id": str(i),
              "prompt": f"Request {i}", "response": data.draw(odd_text([f"Request {i}"])),
              "harmful_request": data.draw(st.booleans())} for i in range(n)]
    examples = load_judge_examples(ROOT / "data" / "eval" / EXAMPLES_FILE)
    rows = classify_rows(engine, Templates(), chunk, examples[:2], debias)
    assert [r["id"] for r in rows] == [it["id"] for it in chunk]
    for r in rows:
        jsonschema.validate(r, JUDGMENT)
        records.json_line(r)  # and it is plain JSON


@pytest.mark.parametrize("logps", [[math.nan, -1.0], [math.nan, math.nan], [-math.inf, -2.0],
                                   [-math.inf, -math.inf], [-3.0, -3.0]])
def test_choice_probabilities_are_total(logps):
    from cai.scoring.labels import choice_probabilities

    ps = choice_probabilities(logps)
    assert sum(ps) == pytest.approx(1.0) and all(0 <= p <= 1 for p in ps)
    if math.isnan(logps[0]) or logps[0] == -math.inf:  # no evidence for the first choice
        assert ps[0] == (0.5 if logps[0] == logps[1] or all(map(math.isnan, logps)) else 0.0)


class Parrot(OddEngine):
    """Writes one fixed answer, critique and revision alike, so every revision is the answer it
    revises (flagged `unchanged`); prefers (A) a little."""

    def __init__(self):
        super().__init__(None, None)

    def chat(self, conversations, params):
        return ["Step one: find the key.\n" for _ in conversations]

    def choice_logprobs(self, conversations, choices):
        return [[-0.5, -1.0] for _ in conversations]


@pytest.mark.parametrize("rounds", [1, 2])
def test_an_unchanged_revision_is_not_taken(tmp_path, rounds):
    """The crash of `cai revise --rounds 1` on a revision identical to its answer (KeyError:
    'gate'): a flagged revision is decided by its flag and never taken, so the record keeps the
    unrevised answer and, with the gate on, no SFT conversation."""
    from cai.revise import job as revise
    from cai.revise.config import ReviseConfig

    cfg = ReviseConfig(prompts=str(write_prompts(tmp_path, "red.jsonl", 2)),
                       out=str(tmp_path / "out"), model=fake_model_folder(tmp_path),
                       rounds=rounds, max_new_tokens=8)
    revise.run(cfg, generator=Parrot(), feedback=Parrot())
    rows = records.read_jsonl(tmp_path / "out" / records.DATA)
    assert len(rows) == 2
    for r in rows:
        jsonschema.validate(r, REVISE)
        assert [rd["flag"] for rd in r["rounds"]] == ["unchanged"] * rounds
        assert not any(rd["accepted"] for rd in r["rounds"])
        assert r["response"] == r["initial_response"] and r["messages"] is None
        assert r["p_response"] is None
