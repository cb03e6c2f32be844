"""`cai eval`'s second pass: the judge classifies every answer and compares every two models'
answers, appended to `judgments.jsonl` as they come; and the judge check's set, answers of
known class the judge is measured on first.

Classification is `cai.scoring.classify`. Comparison is `cai label`'s labelling
(`cai.scoring.preference.score`): a preference question from the judge's constitution, the two
answers as (A) and (B), both orders, few-shot demonstrations, `principles` questions per pair
averaged.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from cai.eval.config import SETS, EvalConfig, compared_pairs
from cai.eval.summary import answer_id, check_id, classify_id, pair_id
from cai.foundation import records
from cai.foundation.inputs import objects_with_ids, unique_ids
from cai.generation import Generator, Role, beside, engine_kwargs, make_generator
from cai.scoring.classify import answer_with_class, classify
from cai.scoring.labels import ensemble
from cai.scoring.preference import Feedback, ScoringOptions, same_text, score

JUDGMENTS = "judgments.jsonl"
REQUESTS = ("harmful", "benign")


def load_judge_check(path: Path) -> list[dict]:
    """Judge-check rows `{"id", "prompt", "response", "class", "request", "kind"?}`, every
    problem with its line. `request` is the request's nature, harmful or benign: a harmful
    answer answers a harmful request, a helpful one a benign request."""
    rows, problems = objects_with_ids(path, "judge check")
    items = []
    for n, obj in rows:
        if not answer_with_class(obj, path, n, problems):
            continue
        if obj.get("request") not in REQUESTS:
            problems.append((n, f"{path}:{n}: 'request' must be harmful or benign"))
        elif {"harmful": "harmful", "helpful": "benign"}.get(obj["class"],
                                                            obj["request"]) != obj["request"]:
            problems.append((n, f"{path}:{n}: a {obj['class']} answer cannot answer a "
                                f"{obj['request']} request"))
        else:
            items.append((n, obj))
    return unique_ids(path, items, problems, "judge-check items")


def judge_role(cfg: EvalConfig) -> tuple[Role, dict]:
    """The judge's role, on the evaluated models' engine, server and key unless given its own,
    and its engine options (checked: a missing server fails here)."""
    role = beside(cfg.judge, cfg.policy, "judge")
    return role, engine_kwargs(role, cfg.batch_size, cfg.concurrency)


def compare(judge: Generator, feedback: Feedback, pool, tasks: list[dict],
            opts: ScoringOptions) -> list[dict]:
    """Judge each task `{"key", "prompt", "first", "second"}` with `cai label`'s labelling.

    Returns `{"p_first": P(first answer better), "votes": [...]}` per task (two identical
    answers get 1/2 without asking), or `{"skipped": reason}` when it does not fit the judge.
    """
    same = [same_text(t["first"], t["second"]) for t in tasks]
    asked = [t for t, s in zip(tasks, same) if not s]
    results = iter(score(judge, feedback, asked, pool, opts) if asked else [])
    out = []
    for identical in same:
        if identical:
            out.append({"p_first": 0.5, "votes": [], "identical": True})
            continue
        votes, why = next(results)
        out.append({"skipped": why} if votes is None else
                   {"p_first": ensemble([v["p_first"] for v in votes]), "votes": votes})
    return out


def classify_rows(judge, templates, chunk: list[dict], examples, debias: bool) -> list[dict]:
    """The judgment records of a chunk of answers to classify (`{"id", "model", "set",
    "prompt_id", "prompt", "response", "harmful_request"}`): one per answer, its class or why it
    was skipped."""
    results = classify(judge, templates, chunk, examples, debias)
    return [{**{k: it[k] for k in ("id", "model", "set", "prompt_id")}, "kind": "classify", **res}
            for it, res in zip(chunk, results)]


def judge_pass(models, inputs, cfg, out, answers, judgments, stats) -> None:
    """Classify every answer and compare every two models' answers, skipping what is done."""
    labels = [m["label"] for m in models]
    to_classify = [{"id": check_id(it["id"]), "model": None, "set": "judge_check",
                    "prompt_id": it["id"], "prompt": it["prompt"], "response": it["response"],
                    "harmful_request": it["request"] == "harmful"}
                   for it in inputs["check"] if check_id(it["id"]) not in judgments]
    to_compare = []
    for set_name, items in inputs["sets"].items():
        for it in items:
            for label in labels:
                key = classify_id(label, set_name, it["id"])
                if key not in judgments:
                    to_classify.append({"id": key, "model": label, "set": set_name,
                                        "prompt_id": it["id"], "prompt": it["prompt"],
                                        "harmful_request": SETS[set_name] == "harmlessness",
                                        "response": answers[answer_id(label, set_name,
                                                                      it["id"])]["response"]})
            for i, j in compared_pairs(len(labels), cfg.compare):
                key = pair_id(labels[i], labels[j], set_name, it["id"])
                if key in judgments:
                    continue
                first, second = sorted((labels[i], labels[j]))
                to_compare.append({
                    "key": key, "set": set_name, "prompt_id": it["id"],
                    "prompt": it["prompt"], "models": [first, second],
                    "first": answers[answer_id(first, set_name, it["id"])]["response"],
                    "second": answers[answer_id(second, set_name, it["id"])]["response"]})
    if not to_classify and not to_compare:
        return
    role, kwargs = judge_role(cfg)
    judge = make_generator(role.engine, role.model, **kwargs)
    feedback = Feedback(inputs["constitution"], inputs["templates"], cfg.few_shot, False,
                        cfg.seed)
    scoring = ScoringOptions(principles=cfg.principles, seed=cfg.seed, debias=cfg.debias)
    bar = tqdm(total=len(to_classify) + len(to_compare), desc="judge", unit="judgment",
               dynamic_ncols=True)
    try:
        with records.JsonlWriter(out / JUDGMENTS) as writer:
            for begin in range(0, len(to_classify), cfg.chunk_size):
                chunk = to_classify[begin:begin + cfg.chunk_size]
                bar.set_postfix_str("classify")
                rows = classify_rows(judge, inputs["templates"], chunk, inputs["examples"],
                                     cfg.debias)
                writer.write(rows)
                judgments.update((r["id"], r) for r in rows)
                bar.update(len(chunk))
                stats["new_judgments"] += len(rows)
            for begin in range(0, len(to_compare), cfg.chunk_size):
                chunk = to_compare[begin:begin + cfg.chunk_size]
                bar.set_postfix_str("compare")
                rows = []
                for set_name in dict.fromkeys(t["set"] for t in chunk):
                    tasks = [t for t in chunk if t["set"] == set_name]
                    pool = inputs["pools"][SETS[set_name]]
                    results = compare(judge, feedback, pool, tasks, scoring)
                    for t, res in zip(tasks, results):
                        rows.append({"id": t["key"], "kind": "compare", "set": set_name,
                                     "prompt_id": t["prompt_id"], "models": t["models"], **res})
                writer.write(rows)
                judgments.update((r["id"], r) for r in rows)
                bar.update(len(chunk))
                stats["new_judgments"] += len(rows)
    finally:
        bar.close()
        judge.close()
