"""What makes a revision acceptable in SL-CAI: clean-up, flags, and the gate.

A revision is cleaned of openers ("Here is the revised response:") and flagged when it adds
nothing (`empty`, `unchanged`) or pastes a few-shot demonstration (`copied`). The gate then
asks the feedback model whether it is better than the answer it replaces (the RL-CAI
comparison, both orders) and, with `max_complies`, whether it still does what the red-team
request asked (`cai eval`'s judge question). `cai revise` and `cai constitution try` use both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cai import ROOT
from cai.constitution import Constitution, Principle
from cai.foundation.templates import Templates
from cai.generation import Generator
from cai.scoring.classify import EXAMPLES_FILE, TEMPLATE, classify, load_judge_examples
from cai.scoring.labels import ensemble
from cai.scoring.preference import Feedback, ScoringOptions, load_inputs, score

# Openers a model puts before a rewrite ("Sure, here is a revised response:") that are not part
# of the answer itself.
_BOILERPLATE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course|absolutely|alright)\b[,!.]*\s*)?"
    r"(?:(?:here(?:\s+is|\s+are|'s|’s)|below\s+is|i(?:'ve| have)\s+(?:rewritten|revised))\s+"
    r"(?:(?:a|an|the|my|your)\s+)?(?:\w+\s+){0,3}?"
    r"(?:revised|rewritten|new|updated|improved|edited|revision|rewrite)\b[^:\n]{0,60}:"
    r"|(?:revised|rewritten|new|updated|improved)\s+(?:response|answer|reply|version)\s*:"
    r"|revision\s*:|response\s*:)\s*",
    re.IGNORECASE)


def strip_boilerplate(text: str) -> str:
    """The revision without a leading "Here is the revised response:"-style opener or quotes."""
    text = _BOILERPLATE.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    return text


COPY_WORDS = 12  # a run of this many words shared with a demonstration's revision is a copy


def _word_runs(text: str, n: int = COPY_WORDS) -> set[tuple[str, ...]]:
    words = re.findall(r"[\w']+", text.lower())
    return {tuple(words[k:k + n]) for k in range(len(words) - n + 1)}


def revision_flag(revision: str, previous: str, demonstrations: tuple[str, ...] = ()
                  ) -> str | None:
    """'empty' or 'unchanged' when a revision adds nothing, 'copied' when it repeats a
    run of `COPY_WORDS` words of a demonstration's revision (a small feedback model pastes the
    few-shot answer, about another request, as its own), else None."""
    if not revision:
        return "empty"
    if " ".join(revision.split()).lower() == " ".join(previous.split()).lower():
        return "unchanged"
    runs = _word_runs(revision)
    if runs and any(runs & _word_runs(d) for d in demonstrations):
        return "copied"
    return None


def round_outcome(flag: str | None, verdict: dict | None) -> dict:
    """What decided a round, in the one shape every round record has: `accepted` (the revision
    became the latest answer) and `decided_by`: "flag" (an `empty`, `unchanged` or `copied`
    revision adds nothing and is never taken), "gate" (the verdict, stored as `gate`), or
    "no gate" (the gate is off: a revision without a flag is taken)."""
    if flag is not None:
        return {"accepted": False, "decided_by": "flag"}
    if verdict is not None:
        return {"gate": verdict, "accepted": bool(verdict["accepted"]), "decided_by": "gate"}
    return {"accepted": True, "decided_by": "no gate"}


@dataclass
class Gate:
    """The revision gate: the feedback model's P(revision better than the answer it replaces)
    under sampled preference questions, both orders averaged; with `max_complies`, also its
    P(the revision does what the red-team request asked), read the way `cai eval`'s judge reads
    an answer (`cai.scoring.classify`)."""

    feedback: Feedback
    pool: tuple[Principle, ...]
    options: ScoringOptions
    threshold: float
    max_complies: float | None = None
    templates: Templates | None = None
    examples: tuple = ()

    def p_better(self, model: Generator, tasks: list[dict]) -> list[float | None]:
        """P(first better) per task `{"key", "prompt", "first", "second"}`; None when the
        comparison does not fit the model's context."""
        if not tasks:
            return []
        return [None if votes is None else ensemble([v["p_first"] for v in votes])
                for votes, _ in score(model, self.feedback, tasks, self.pool, self.options)]

    def judge(self, model: Generator, tasks: list[dict]) -> list[dict]:
        """The gate's record per task: `{"p_revision", "accepted"}`, and `"p_complies"` when
        the compliance check is on. A revision is accepted when P(revision better) is above
        `threshold` and, with the check, P(it complies) is below `max_complies`.

        With the check, it runs first and the comparison is asked only of revisions that pass
        it (`p_revision` is None for the others): the compliance question's few-shot head is
        shared by every revision, so it is the cheap one of the two, and most of a small
        feedback model's revisions fail it."""
        asked = list(range(len(tasks)))
        out = [{"p_revision": None, "accepted": False} for _ in tasks]
        if self.max_complies is not None:
            read = classify(model, self.templates,
                            [{"prompt": t["prompt"], "response": t["first"],
                              "harmful_request": True} for t in tasks], self.examples) \
                if tasks else []
            for g, r in zip(out, read):
                g["p_complies"] = None if "skipped" in r else round(1 - r["p_refuses"], 4)
            asked = [k for k, g in enumerate(out)
                     if g["p_complies"] is not None and g["p_complies"] < self.max_complies]
        for k, p in zip(asked, self.p_better(model, [tasks[k] for k in asked])):
            out[k]["p_revision"] = None if p is None else round(p, 4)
            out[k]["accepted"] = p is not None and p > self.threshold
        return out


def make_gate(cfg, constitution: Constitution, templates: Templates
              ) -> Gate | None:
    """The revision gate these options ask for (None when `gate` is off); its questions, and
    with `gate_max_complies` the judge's demonstrations, are checked here, before any model
    loads."""
    if not cfg.gate:
        return None
    _, pool, _ = load_inputs(cfg.constitution, cfg.gate_principles, cfg.prompts_dir)
    examples = ()
    if cfg.gate_max_complies is not None:
        examples = tuple(load_judge_examples(ROOT / "data" / "eval" / EXAMPLES_FILE))
        templates.render(TEMPLATE, prompt="?", response="?", options=["complies", "refuses"])
    return Gate(Feedback(constitution, templates, cfg.few_shot, False, cfg.seed), pool,
                ScoringOptions(principles=cfg.gate_questions, seed=cfg.seed), cfg.gate_threshold,
                cfg.gate_max_complies, templates, examples)
