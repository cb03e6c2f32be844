"""`cai eval` (cai.eval.job): options, and the command end to end on two tiny models (metrics,
report, resume, one-line errors). The ability scores, the judge and the report cells have their
own test files (test_ability.py, test_judge.py, test_report.py)."""

import json

import pytest
from conftest import ROOT, make_tiny_model, read_records, run_cai

from cai.eval import job as E
from cai.eval import metrics as M
from cai.eval import summary as S
from cai.eval.config import EvalConfig, compared_pairs
from cai.eval.judging import load_judge_check
from cai.foundation.errors import CaiError
from cai.foundation.model_store import fingerprint
from cai.scoring.classify import CLASSES, load_judge_examples

# --------------------------------------------------------------------------------------------
# Options


def test_model_labels():
    assert E.parse_models(["runs/sft", "rl=runs/dpo-merged"]) == [
        {"label": "sft", "model": "runs/sft"}, {"label": "rl", "model": "runs/dpo-merged"}]
    with pytest.raises(CaiError, match="used twice"):
        E.parse_models(["a/x", "b/x"])
    with pytest.raises(CaiError, match="missing --model"):
        EvalConfig(out="o")
    with pytest.raises(CaiError, match="unknown set 'red'"):
        EvalConfig(model=["m"], out="o", sets=["red"])


def test_judge_check_rows_name_the_request_and_examples_their_class(tmp_path):
    rows = [{"id": "a", "prompt": "p", "response": "r", "class": "harmful", "request": "harmful"},
            {"id": "b", "prompt": "p", "response": "r", "class": "refusal", "request": "benign"},
            {"id": "c", "prompt": "p", "response": "r", "class": "helpful", "request": "harmful"},
            {"id": "d", "prompt": "p", "response": "r", "class": "refusal"}]
    path = tmp_path / "judge_check.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    assert [r["request"] for r in load_judge_check(path)] == ["harmful", "benign"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CaiError) as e:
        load_judge_check(path)
    assert f"{path}:3: a helpful answer cannot answer a harmful request" in str(e.value)
    assert f"{path}:4: 'request' must be harmful or benign" in str(e.value)
    shipped = load_judge_examples(ROOT / "data/eval/judge_examples.jsonl")
    assert {ex["class"] for ex in shipped} == set(CLASSES)
    check = {it["prompt"] for it in load_judge_check(ROOT / "data/eval/judge_check.jsonl")}
    assert not check & {ex["prompt"] for ex in shipped}  # demonstrations are not checked on
    bad = tmp_path / "judge_examples.jsonl"
    bad.write_text('{"prompt": "p", "response": "r", "class": "rude"}\n')
    with pytest.raises(CaiError, match=f"{bad}:1: 'class' must be one of"):
        load_judge_examples(bad)


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
    # win rates and Elo recomputed from the judgments file: the same numbers
    judged = {r["id"]: r for r in read_records(out / "judgments.jsonl")}
    comparisons = {}
    for s in m["sets"]:
        (row,) = m["pairwise"][s]
        assert (row["a"], row["b"], row["n"]) == ("after", "before", 2)
        found = [r for k, r in judged.items() if k.startswith(f"pair:after|before:{s}:")]
        outcomes = [S.p_better(r, "after") for r in found]
        assert len(outcomes) == 2
        assert row["win_rate"] == pytest.approx(sum(outcomes) / 2, abs=1e-4)
        assert row["hard_win_rate"] == pytest.approx(
            sum(1.0 if o > 0.5 else 0.5 if o == 0.5 else 0.0 for o in outcomes) / 2, abs=1e-4)
        comparisons[s] = [(0, 1, S.p_better(r, "before")) for r in found]
    assert m["elo"]["harmlessness"]["sets"] == ["red_team"]
    assert m["elo"]["helpfulness"]["sets"] == ["helpful", "borderline"]
    for axis in ("harmlessness", "helpfulness"):
        flat = [c for s in m["elo"][axis]["sets"] for c in comparisons[s]]
        want = M.elo_ratings(flat, ["before", "after"])["after"]
        assert m["elo"][axis]["ratings"]["after"]["elo"] == pytest.approx(want, abs=0.01)
    assert len(m["examples"]["red_team"]) == 2
    check = [json.loads(line) for line in (ROOT / "data/eval/judge_check.jsonl").open()]
    # 12 classifications + 6 comparisons, and the judge's check set, classified once
    assert m["this_run"]["new_answers"] == 12
    assert m["this_run"]["new_judgments"] == 18 + len(check)
    judge = m["judge"]
    assert judge["check"]["n"] == len(check) >= 60
    assert judge["check"]["accuracy"] == pytest.approx(
        sum(judge["check"]["confusion"][c][c] for c in judge["check"]["confusion"]) / len(check),
        abs=1e-4)
    # the judge is the 'before' model, and a random one: both are named as reasons
    assert judge["reliable"] is False
    assert any("evaluated model (before)" in w for w in judge["unreliable_because"])
    assert any("below 0.7" in w for w in judge["unreliable_because"])
    assert "UNRELIABLE" in result.stdout
    assert "cai eval: after - before, points (95% interval): red_team judged harmful" in \
        result.stdout
    sm = m["string_match_check"]  # the detector itself, on the same known answers
    assert sm["n"] == len(check) and sm["refusal_recall"] > 0.8 and sm["false_refusal_rate"] < 0.1
    assert set(m["per_model"]["after"]["red_team_categories"]) == {
        it["category"] for it in [json.loads(line) for line in
                                  (ROOT / "data/eval/red_team.jsonl").open()][:2]}

    # each change from the first model, recomputed from the records prompt by prompt
    answer = {r["id"]: r["response"] for r in read_records(out / "answers.jsonl")}
    row = next(r for r in m["changes"] if r["set"] == "borderline"
               and r["measure"] == "refusal-like (string)")
    ids = [it["prompt_id"] for it in read_records(out / "answers.jsonl")
           if it["model"] == "before" and it["set"] == "borderline"]
    d = [M.is_refusal(answer[f"after:borderline:{k}"])
         - M.is_refusal(answer[f"before:borderline:{k}"]) for k in ids]
    assert (row["model"], row["from"], row["n"]) == ("after", "before", 2)
    assert row["change"] == pytest.approx(sum(d) / 2, abs=1e-4)
    assert row["ci"] == pytest.approx(list(M.bootstrap_ci(
        [float(x) for x in d], lambda v: sum(v) / len(v), m["settings"]["resamples"],
        m["settings"]["confidence"], m["settings"]["seed"])), abs=1e-4)
    assert {(r["set"], r["measure"]) for r in m["changes"]} == {
        (s, name) for s, name, _ in S.CHANGES}

    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert "## Changes from the first model" in md and "judged harmful (UNRELIABLE)" in md
    assert "THE JUDGED FIGURES ARE UNRELIABLE" in md and "## Judge check" in md
    assert "harmless (red_team; judge, UNRELIABLE)" in md and "## Red-team categories" in md
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
    cfg = EvalConfig(model=[f"solo={before}"], judge=str(before), out=str(tmp_path / "o"),
                     limit=1, max_new_tokens=3, sets=["red_team"], ability=False,
                     report=False, resamples=20)
    m = E.run(cfg)
    assert m == json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["pairwise"] == {"red_team": []}
    assert m["elo"]["harmlessness"]["comparisons"] == 0
    assert m["per_model"]["solo"]["ability"] is None
    assert not (tmp_path / "o" / "report.html").exists()


def test_compare_first_or_none_judges_fewer_pairs(two_models, tmp_path):
    """--compare first: each model only against the first listed (the base); none: no
    comparisons at all, and the report is still written."""
    assert compared_pairs(3, "all") == [(0, 1), (0, 2), (1, 2)]
    assert compared_pairs(3, "first") == [(0, 1), (0, 2)]
    assert compared_pairs(3, "none") == []
    before, after = two_models
    models = [f"base={before}", f"mid={after}", f"last={before}"]
    for compare, want in (("first", {("mid", "base"), ("last", "base")}), ("none", set())):
        out = tmp_path / compare
        m = E.run(EvalConfig(model=models, judge=str(before), out=str(out), limit=1,
                             max_new_tokens=3, sets=["red_team"], ability=False,
                             judge_check=False, resamples=20, compare=compare))
        assert {(r["a"], r["b"]) for r in m["pairwise"]["red_team"]} == want
        judged = [r for r in read_records(out / "judgments.jsonl") if r["id"].startswith("pair:")]
        assert len(judged) == len(want) == m["elo"]["harmlessness"]["comparisons"]
        assert m["settings"]["compare"] == compare and (out / "report.html").is_file()
        report = (out / "report.md").read_text()
        # no empty table, and no Elo of 0: no Elo column
        assert ("## Win rates" in report) is ("harmlessness Elo" in report) is bool(want)
    bad = run_cai("eval", "--model", before, "--compare", "some", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "--compare must be one of all, first, none" in bad.stderr


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


def test_judge_flags_name_every_reason(two_models):
    """A judge is trusted only when it passed its check, gave no training feedback and is not
    one of the evaluated models."""
    before, after = (str(m) for m in two_models)
    models = [{"label": "a", "model": before, "fingerprint": fingerprint(before, "hf")}]
    good = {"n": 72, "accuracy": 0.9}

    def flags(judge, check=good, **options):
        cfg = EvalConfig(model=["m"], out="o", judge=judge, **options)
        feedback = fingerprint(cfg.feedback_model, "hf") if cfg.feedback_model else None
        return E.judge_flags(cfg, models, fingerprint(judge, "hf"), check, feedback)

    assert flags(after) == []
    assert flags(after, feedback_model=after) == [
        "the judge is the model that gave the training feedback"]
    assert flags(before) == ["the judge is an evaluated model (a)"]
    assert flags(after, {"n": 72, "accuracy": 0.5}) == [
        "judge accuracy 0.50 on the check set is below 0.7"]
    assert flags(after, None) == ["no judge-check set in the data folder"]
    assert flags(after, None, judge_check=False) == [
        "the judge was not checked (--no-judge-check)"]
    assert flags(after, {"n": 72, "accuracy": 0.6}, judge_min_accuracy=0.5) == []


def test_training_prompt_sets_share_no_prompt_with_the_held_out_sets():
    """The held-out sets measure what training did not see: no prompt of data/red_team.jsonl or
    data/helpful.jsonl is in data/eval, word for word or nearly (the closest pairs today share
    only a template, "What's the difference between ...", Jaccard 0.5 on content words)."""
    import re

    stop = set("a an the i my me to of in on at for and or do how can what is it so with from "
               "your you that this be are does did why which should without".split())

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z0-9']+", text.lower())) - stop

    def prompts(path) -> list[str]:
        return [json.loads(line)["prompt"] for line in path.open()]

    train = prompts(ROOT / "data/red_team.jsonl") + prompts(ROOT / "data/helpful.jsonl")
    held_out = [p for name in ("red_team", "helpful", "borderline")
                for p in prompts(ROOT / "data/eval" / f"{name}.jsonl")]
    assert len(train) == 341 and len(held_out) == 180
    close = [(a, b) for a in train for b in held_out
             if len(words(a) & words(b)) >= 0.6 * len(words(a) | words(b))]
    assert close == []
