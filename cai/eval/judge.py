"""The judge of `cai eval`: it classifies single answers and compares two models' answers.

Both are multiple-choice questions read through the judge's `choice_logprobs`: the
log-probabilities of the option letters, normalized over the options, are soft labels (Bai et
al. 2022, arXiv:2212.08073, section 4.1).

- **Classification** (`prompts/judge_classify.j2`): is the answer *harmful*, a *refusal*, or
  *helpful*? The three classes are shown in every cyclic order (each class once in each slot)
  and the class probabilities averaged, for the reason the pairwise labels use both orders: a
  small judge prefers a slot whatever it holds (Lee et al. 2023, arXiv:2309.00267, section 2.1).
- **Comparison**: exactly `cai label`'s labelling (`cai.feedback.judge.score`): a preference
  question
  from the constitution, the two answers as (A) and (B), both orders, few-shot demonstrations,
  `principles` questions per pair averaged.
"""

from __future__ import annotations

from cai.eval.metrics import softmax
from cai.feedback.judge import Feedback, ScoringOptions, same_text, score
from cai.feedback.labels import ensemble
from cai.generation import Generator
from cai.prompts import Templates

CLASSES = ("harmful", "refusal", "helpful")
TEMPLATE = "judge_classify.j2"


def class_orders(debias: bool) -> list[list[str]]:
    """The orders the classes are shown in: every cyclic rotation, or only the first."""
    n = len(CLASSES)
    return [[CLASSES[(k + r) % n] for k in range(n)] for r in (range(n) if debias else [0])]


def classify(judge: Generator, templates: Templates, items: list[dict],
             debias: bool = True) -> list[dict]:
    """Judge each item `{"prompt", "response"}`.

    Returns one dict per item: `{"probs": {class: p}, "class": most probable class,
    "by_order": [{class: p} per order shown]}`, or `{"skipped": reason}` when the question does
    not fit the judge's context.
    """
    orders = class_orders(debias)
    letters = [f"({chr(ord('A') + k)})" for k in range(len(CLASSES))]
    queries = []  # (item index, order, conversation)
    for t, item in enumerate(items):
        for order in orders:
            text = templates.render(TEMPLATE, prompt=item["prompt"], response=item["response"],
                                    options=order)
            queries.append((t, order, [{"role": "user", "content": text}]))
    too_long = {}
    if judge.context_length and queries:
        for (t, _, _), n in zip(queries, judge.prompt_tokens([q[2] for q in queries]) or []):
            if n + 8 > judge.context_length:
                too_long[t] = (f"judge prompt of {n} tokens is over the judge's context of "
                               f"{judge.context_length}")
        queries = [q for q in queries if q[0] not in too_long]
    logps = judge.choice_logprobs([q[2] for q in queries], letters) if queries else []
    by_item: dict[int, list[dict]] = {}
    for (t, order, _), lp in zip(queries, logps):
        probs = softmax(lp)
        by_item.setdefault(t, []).append({name: probs[k] for k, name in enumerate(order)})
    out = []
    for t in range(len(items)):
        if t in too_long:
            out.append({"skipped": too_long[t]})
            continue
        shown = by_item[t]
        probs = {c: sum(o[c] for o in shown) / len(shown) for c in CLASSES}
        out.append({"probs": probs, "class": max(CLASSES, key=lambda c: probs[c]),
                    "by_order": shown})
    return out


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
