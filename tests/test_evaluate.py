"""`cai eval`: ability scores against a direct computation, the judge's classification with
hand-built judges, the report from a known summary, and the command end to end on two tiny
models (metrics, report, resume, one-line errors)."""

import json
import math

import pytest
from conftest import ROOT, make_tiny_model, run_cai

from cai import ability as A
from cai import eval_judge as J
from cai import evaluate as E
from cai.errors import CaiError
from cai.generation.base import GenerationStats
from cai.prompts import Templates

DATA = ROOT / "data" / "eval"


# --------------------------------------------------------------------------------------------
# Ability: MC accuracy and perplexity against a direct, one-sequence-at-a-time computation


@pytest.fixture(scope="module")
def tiny_lm(tiny_model):
    from cai.models import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_model, dtype="float32"), load_tokenizer(tiny_model)


def _direct_logprob(lm, context, target):
    import torch

    with torch.no_grad():
        logits = lm(torch.tensor([context + target])).logits[0].float()      # (T, V)
    logps = torch.log_softmax(logits, dim=-1)
    return sum(logps[len(context) - 1 + k, t].item() for k, t in enumerate(target))


def test_mc_logprobs_and_accuracy_match_a_direct_computation(tiny_lm):
    from cai.generation.base import encode_chat

    lm, tok = tiny_lm
    questions = A.load_mc(DATA / "neutral_mc.jsonl")[:3]
    got = A.mc_logprobs(lm, tok, questions, batch_size=5)  # batches mix questions and lengths
    for q, logps in zip(questions, got):
        context = encode_chat(tok, [{"role": "user", "content": q["question"]}])
        assert len(logps) == len(q["choices"])
        for choice, lp in zip(q["choices"], logps):
            target = tok(choice, add_special_tokens=False)["input_ids"]
            assert lp == pytest.approx(_direct_logprob(lm, context, target), abs=1e-4)
    acc = A.mc_accuracy(questions, got)
    right = sum(max(range(len(lps)), key=lps.__getitem__) == q["answer"]
                for q, lps in zip(questions, got))
    assert acc["accuracy"] == pytest.approx(right / 3) and acc["n"] == 3
    assert acc["chance"] == pytest.approx(0.25)


def test_perplexity_matches_a_direct_computation(tiny_lm):
    lm, tok = tiny_lm
    paragraphs = A.load_text(DATA / "neutral_text.txt")[:3]
    scores = A.text_nll(lm, tok, paragraphs, batch_size=2)
    nll = tokens = 0
    for p, s in zip(paragraphs, scores):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        want = -_direct_logprob(lm, ids[:1], ids[1:])
        assert s["nll"] == pytest.approx(want, rel=1e-5) and s["tokens"] == len(ids) - 1
        nll, tokens = nll + want, tokens + len(ids) - 1
    ppl = A.perplexity(scores)
    assert ppl["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert ppl["paragraphs"] == 3 and ppl["tokens"] == tokens
    # a random tiny model is close to uniform over SmolLM2's 49k-token vocabulary
    assert 1e3 < ppl["perplexity"] < 1e6


def test_mc_accuracy_by_hand():
    qs = [{"choices": ["a", "bbbb"], "answer": 1}, {"choices": ["x", "y", "z"], "answer": 0},
          {"choices": ["p", "q"], "answer": 0}]
    logps = [[-1.0, -2.0], [-0.5, -1.0, -3.0], [-1.0, -1.0]]  # the last is a tie: wrong
    out = A.mc_accuracy(qs, logps)
    assert out["accuracy"] == pytest.approx(1 / 3)
    # per character, "bbbb" has -0.5 against -1.0: right
    assert out["accuracy_norm"] == pytest.approx(2 / 3)
    assert out["chance"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)


def test_bad_neutral_files_name_the_line(tmp_path):
    bad = tmp_path / "mc.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 2}\n{"question": 1}\n')
    with pytest.raises(CaiError, match=r"mc.jsonl:1: 'answer' must be .*\n.*mc.jsonl:2: needs"):
        A.load_mc(bad)
    (tmp_path / "t.txt").write_text("\n \n")
    with pytest.raises(CaiError, match="no text"):
        A.load_text(tmp_path / "t.txt")


# --------------------------------------------------------------------------------------------
# The judge: classification with hand-built judges


class SlotJudge:
    """A judge that ignores the text: it gives the letters fixed probabilities."""

    context_length = None
    stats = GenerationStats()

    def __init__(self, probs):
        self.probs = probs

    def choice_logprobs(self, conversations, choices):
        return [[math.log(p) for p in self.probs] for _ in conversations]


class ReadingJudge(SlotJudge):
    """A judge that reads the options: it puts most mass on the letter of one class."""

    def __init__(self, wanted: str):
        self.wanted = wanted.capitalize() + ":"

    def choice_logprobs(self, conversations, choices):
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            letter = next(line[1] for line in text.splitlines() if line[4:].startswith(self.wanted))
            out.append([0.0 if c[1] == letter else -5.0 for c in choices])
        return out


def test_classification_rotations_cancel_a_slot_preference():
    items = [{"prompt": "p", "response": "r"}]
    res = J.classify(SlotJudge([0.6, 0.3, 0.1]), Templates(), items, debias=True)[0]
    assert res["probs"] == pytest.approx({c: 1 / 3 for c in J.CLASSES})
    assert len(res["by_order"]) == 3
    one = J.classify(SlotJudge([0.6, 0.3, 0.1]), Templates(), items, debias=False)[0]
    assert one["probs"] == pytest.approx({"harmful": 0.6, "refusal": 0.3, "helpful": 0.1})
    assert one["class"] == "harmful"


@pytest.mark.parametrize("wanted", J.CLASSES)
def test_classification_follows_the_option_through_every_order(wanted):
    res = J.classify(ReadingJudge(wanted), Templates(), [{"prompt": "p", "response": "r"}])[0]
    p = 1 / (1 + 2 * math.exp(-5))
    assert res["class"] == wanted and res["probs"][wanted] == pytest.approx(p)
    assert all(o[wanted] == pytest.approx(p) for o in res["by_order"])


def test_identical_answers_tie_without_asking_the_judge():
    class NoJudge(SlotJudge):
        def choice_logprobs(self, conversations, choices):
            raise AssertionError("asked")

    task = {"key": "k", "prompt": "p", "first": "Same  answer.", "second": "Same answer."}
    assert J.compare(NoJudge([0.5, 0.5]), None, (), [task], 1, True, 0) == [
        {"p_first": 0.5, "votes": [], "identical": True}]


# --------------------------------------------------------------------------------------------
# Options


def test_model_labels():
    assert E.parse_models(["runs/sft", "rl=runs/dpo-merged"]) == [
        {"label": "sft", "model": "runs/sft"}, {"label": "rl", "model": "runs/dpo-merged"}]
    with pytest.raises(CaiError, match="used twice"):
        E.parse_models(["a/x", "b/x"])
    with pytest.raises(CaiError, match="missing --model"):
        E.EvalConfig(out="o")
    with pytest.raises(CaiError, match="unknown set 'red'"):
        E.EvalConfig(model=["m"], out="o", sets=["red"])


# --------------------------------------------------------------------------------------------
# End to end on two tiny models


@pytest.fixture(scope="module")
def two_models(tokenizer_dir, tmp_path_factory):
    return (make_tiny_model(tokenizer_dir, tmp_path_factory.mktemp("before"), seed=0),
            make_tiny_model(tokenizer_dir, tmp_path_factory.mktemp("after"), seed=1))


def _eval(models, out, *extra):
    before, after = models
    return run_cai("eval", "--model", f"before={before}", "--model", f"after={after}",
                   "--judge", before, "--limit", 2, "--ability-limit", 2, "--max-new-tokens", 4,
                   "--resamples", 50, "--out", out, *extra)


def test_eval_end_to_end(two_models, tmp_path):
    out = tmp_path / "eval"
    result = _eval(two_models, out)
    assert result.returncode == 0, result.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert [x["label"] for x in m["models"]] == ["before", "after"]
    assert set(m["sets"]) == {"red_team", "helpful", "borderline"}
    for label in ("before", "after"):
        p = m["per_model"][label]
        assert 0 <= p["harmlessness"] <= 1 and 0 <= p["helpful_rate"] <= 1
        assert set(p["over_refusal"]) == {"helpful", "borderline"}
        assert all(0 <= v <= 1 for v in p["over_refusal"].values())
        assert all(0 <= v <= 1 for v in p["string_refusal"].values())
        for s in m["sets"]:
            st = p["sets"][s]
            assert st["n"] == st["judged"] == 2
            assert sum(st["classes"].values()) == pytest.approx(1)
            assert sum(st["mean_probs"].values()) == pytest.approx(1, abs=1e-3)
            assert st["tokens"]["mean"] is not None and st["words"]["mean"] is not None
        assert 0 <= p["ability"]["mc"]["accuracy"] <= 1 and p["ability"]["mc"]["n"] == 2
        assert p["ability"]["text"]["perplexity"] > 1 and p["ability"]["text"]["paragraphs"] == 2
    for s in m["sets"]:
        (row,) = m["pairwise"][s]
        assert (row["a"], row["b"], row["n"]) == ("after", "before", 2)
        assert row["ci"][0] <= row["win_rate"] <= row["ci"][1]
        assert 0 <= row["hard_win_rate"] <= 1
    assert m["elo"]["harmlessness"]["sets"] == ["red_team"]
    assert m["elo"]["helpfulness"]["sets"] == ["helpful", "borderline"]
    for axis in ("harmlessness", "helpfulness"):
        ratings = m["elo"][axis]["ratings"]
        assert ratings["before"]["elo"] == 0
        assert ratings["after"]["ci"][0] <= ratings["after"]["elo"] <= ratings["after"]["ci"][1]
    assert len(m["examples"]["red_team"]) == 2
    assert m["this_run"]["new_answers"] == 12 and m["this_run"]["new_judgments"] == 18

    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for chart in ("frontier.png", "win_rates.png", "rates.png", "ability.png"):
        assert (out / chart).stat().st_size > 5000
        assert f"]({chart})" in md
    assert html.count('src="data:image/png;base64,') == 4
    assert "<script" not in html.lower()

    # a rerun generates and judges nothing, and writes the same metrics
    answers = (out / "answers.jsonl").read_bytes()
    again = _eval(two_models, out)
    assert again.returncode == 0, again.stderr
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["this_run"]["new_answers"] == m2["this_run"]["new_judgments"] == 0
    assert m2["this_run"]["new_ability_items"] == 0
    assert (out / "answers.jsonl").read_bytes() == answers
    assert {k: v for k, v in m2.items() if k != "this_run"} == \
        {k: v for k, v in m.items() if k != "this_run"}

    # a larger --limit only adds the new prompt of each set (and question and paragraph)
    more = _eval(two_models, out, "--limit", 3, "--ability-limit", 3)
    assert more.returncode == 0, more.stderr
    m3 = json.loads((out / "metrics.json").read_text())["this_run"]
    assert (m3["new_answers"], m3["new_judgments"], m3["new_ability_items"]) == (6, 9, 4)

    # changed settings and a relabelled model are refused in the same folder
    changed = _eval(two_models, out, "--temperature", 0.3)
    assert changed.returncode == 2 and "temperature" in changed.stderr
    swapped = run_cai("eval", "--model", f"before={two_models[1]}", "--judge", two_models[0],
                      "--limit", 2, "--max-new-tokens", 4, "--out", out)
    assert swapped.returncode == 2 and "label 'before' was model" in swapped.stderr


def test_eval_run_in_process_returns_the_metrics(two_models, tmp_path):
    before, _ = two_models
    cfg = E.EvalConfig(model=[f"solo={before}"], judge=str(before), out=str(tmp_path / "o"),
                       limit=1, max_new_tokens=3, sets=["red_team"], ability=False,
                       report=False, resamples=20)
    m = E.run(cfg)
    assert m == json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["pairwise"] == {"red_team": []}
    assert m["elo"]["harmlessness"]["ratings"] == {"solo": {"elo": 0.0, "ci": [0.0, 0.0]}}
    assert m["per_model"]["solo"]["ability"] is None
    assert not (tmp_path / "o" / "report.html").exists()


def test_report_cells_are_escaped():
    from cai.report import _html_table, _md_cell

    assert _md_cell("a|b\n<x> & y") == "a\\|b<br>&lt;x&gt; &amp; y"
    assert "<td>&lt;script&gt;</td>" in _html_table(["h"], [["<script>"]])


def test_bad_model_is_one_line(tmp_path):
    result = run_cai("eval", "--model", tmp_path / "missing-model", "--out", tmp_path / "o")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "missing-model" in result.stderr and "no such folder" in result.stderr
    result = run_cai("eval", "--model", "m", "--out", tmp_path / "o", "--sets", "red,helpful")
    assert result.returncode == 2 and "--sets" in result.stderr


@pytest.mark.slow
def test_eval_on_the_real_model(tmp_path):
    """The embedded SmolLM2 answers, judges itself and is measured (2 prompts per set)."""
    out = tmp_path / "real"
    result = run_cai("eval", "--model", "smollm2-135m-instruct", "--limit", 2,
                     "--max-new-tokens", 24, "--resamples", 50, "--out", out)
    assert result.returncode == 0, result.stderr
    m = json.loads((out / "metrics.json").read_text())
    p = m["per_model"]["smollm2-135m-instruct"]
    assert 0 <= p["harmlessness"] <= 1
    assert p["ability"]["mc"]["n"] == 2
    # a trained model predicts plain English far better than a uniform guess over 49k tokens
    assert p["ability"]["text"]["perplexity"] < 200
    assert (out / "report.html").stat().st_size > 20000
