"""Refusal pairs of `cai label`: preference data against over-refusal, so DPO sees both sides.

The red-team pairs teach the policy to decline harmful requests; on their own they also pull it
towards declining harmless ones (an SFT model trained on revisions often refuses "how do I kill
a background job?"). For prompts of harmless sets (`refusal_prompts`), the policy samples
`refusal_samples` answers, and each answer is read for P(refuses): by default with the answer
classifier of `cai eval`'s judge and the revision gate (`cai.scoring.classify`: the judge's
demonstrations in front, both option orders averaged, the labeler as the judge), or with the
answer head of a trained classifier folder (`refusal_classifier`, no feedback model at all).

A prompt with at least one answer read as refusing (P > 1/2) and one read as answering (P < 1/2)
gives one pair: the answer with the lowest P(refuses) is chosen over the one with the highest.
Its soft label puts the gap between the two readings on the probability scale of the other
labels:

    p_chosen = 1/2 + (p_refuses(rejected) - p_refuses(chosen)) / 2,

so two confident readings (0 and 1) give 1, two near 1/2 give a label near 1/2. A prompt whose
answers all answer ("no refusal": nothing to push back on) or all refuse ("all refuse": no
better answer to show) gives no pair; it goes to skipped.jsonl and is counted in the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cai import ROOT
from cai.foundation.errors import CaiError
from cai.foundation.manifest import file_sha256, text_sha256
from cai.foundation.model_store import fingerprint
from cai.foundation.templates import Templates
from cai.generation import Generator
from cai.scoring.classify import EXAMPLES_FILE, TEMPLATE, classify, load_judge_examples

#: The kind of a refusal prompt and of its records: ids are `refusal:{prompt id}`.
KIND = "refusal"
#: Why a refusal prompt gave no pair (the reason of its skipped.jsonl line).
NO_REFUSAL, ALL_REFUSE, TOO_LONG = "no refusal", "all refuse", "too long"
#: The judge's demonstrations, the ones the revision gate shows.
JUDGE_EXAMPLES = ROOT / "data" / "eval" / EXAMPLES_FILE

#: A reader takes prompts and answers (aligned) and gives, for each answer, P(refuses), or the
#: reason it could not be read (a text).
Reader = Callable[[list[str], list[str]], list]


# --------------------------------------------------------------------------------------------
# Which pair a prompt's answers give (pure)


def refusal_pair(p_refuses: list[float | None]) -> tuple[int, int] | str:
    """(chosen index, rejected index) from the P(refuses) of a prompt's answers (None: not
    read), or why there is no pair: `no refusal`, `all refuse`, or `too long` when no answer
    was read. Chosen is the least refusing answer, rejected the most refusing; ties go to the
    earlier answer."""
    read = [(p, k) for k, p in enumerate(p_refuses) if p is not None]
    if not read:
        return TOO_LONG
    if not any(p > 0.5 for p, _ in read):
        return NO_REFUSAL
    if not any(p < 0.5 for p, _ in read):
        return ALL_REFUSE
    chosen = min(read)[1]
    rejected = max(read, key=lambda pk: (pk[0], -pk[1]))[1]
    return chosen, rejected


def soft_label(p_refuses_chosen: float, p_refuses_rejected: float) -> float:
    """P(chosen better): one half plus half the gap in P(refuses) between the two answers."""
    return 0.5 + (p_refuses_rejected - p_refuses_chosen) / 2


def pair_record(item: dict, p_refuses: list[float | None], why: str, extra: dict,
                names: dict, reader: str) -> tuple[dict | None, dict | None]:
    """(record, None) when the item's answers make a pair, else (None, skip record). `extra`
    holds the item's fields carried into records (its kind, category, ...); `why` says why an
    unread answer was not read."""
    outcome = refusal_pair(p_refuses)
    if isinstance(outcome, str):
        skip = {"id": item["id"], "kind": KIND, "reason": outcome, "p_refuses": p_refuses}
        if outcome == TOO_LONG:
            skip["detail"] = why
        return None, skip
    chosen, rejected = outcome
    return {
        "id": item["id"], **extra,
        "prompt": [{"role": "user", "content": item["prompt"]}],
        "chosen": [{"role": "assistant", "content": item["responses"][chosen]}],
        "rejected": [{"role": "assistant", "content": item["responses"][rejected]}],
        "p_chosen": soft_label(p_refuses[chosen], p_refuses[rejected]), "votes": [],
        "pair": sorted([chosen, rejected]), "chosen_index": chosen,
        "p_refuses_chosen": p_refuses[chosen], "p_refuses_rejected": p_refuses[rejected],
        "p_refuses": p_refuses, "reader": reader,
        "labeler": names["labeler"], "policy": names["policy"],
        "constitution": names["constitution"]}, None


def read_answers(reader: Reader, items: list[dict]) -> list[tuple[list[float | None], str]]:
    """Each item's (P(refuses) per answer, None where unread; why the unread ones were not),
    all answers of all items read in one call."""
    prompts = [it["prompt"] for it in items for _ in it["responses"]]
    answers = [a for it in items for a in it["responses"]]
    read = reader(prompts, answers) if answers else []
    out, at = [], 0
    for it in items:
        got = read[at:at + len(it["responses"])]
        at += len(it["responses"])
        out.append(([None if isinstance(p, str) else float(p) for p in got],
                    next((p for p in got if isinstance(p, str)), "")))
    return out


# --------------------------------------------------------------------------------------------
# Readers


@dataclass
class JudgeReader:
    """P(refuses) from a feedback model, asked `cai eval`'s judge question."""

    judge: Generator
    templates: Templates
    examples: tuple
    debias: bool = True
    name: str = "judge"

    def __call__(self, prompts: list[str], answers: list[str]) -> list:
        read = classify(self.judge, self.templates,
                        [{"prompt": p, "response": a, "harmful_request": False}
                         for p, a in zip(prompts, answers)], self.examples, self.debias)
        return [r["skipped"] if "skipped" in r else r["p_refuses"] for r in read]


class ClassifierReader:
    """P(refuses) from a trained classifier's answer head (`cai.scoring.classifier`)."""

    name = "classifier"

    def __init__(self, folder: str):
        from cai.scoring.classifier import Classifier  # loads torch and the backbone

        self.model = Classifier.load(folder)

    def __call__(self, prompts: list[str], answers: list[str]) -> list:
        return list(self.model.p_refuses(prompts, answers))


def check_reader(classifier: str | None, templates: Templates) -> tuple:
    """Before any model loads: the judge's demonstrations (loaded, every problem reported) and
    its question (rendered once), or the classifier folder's presence. Returns the examples."""
    if classifier:
        if not Path(classifier).is_dir():
            raise CaiError(f"{classifier}: --refusal-classifier is not a folder")
        return ()
    templates.render(TEMPLATE, prompt="?", response="?", options=["complies", "refuses"])
    return tuple(load_judge_examples(JUDGE_EXAMPLES))


def identity(classifier: str | None, templates: Templates, debias: bool) -> dict:
    """What decides the readings, for the manifest's identity."""
    if classifier:
        return {"reader": "classifier", "classifier": fingerprint(classifier)}
    return {"reader": "judge", "debias": debias,
            "judge_examples": file_sha256(JUDGE_EXAMPLES),
            "judge_template": text_sha256(templates.fingerprint([TEMPLATE]))}


# --------------------------------------------------------------------------------------------
# The manifest's counts


def summary(rows: list[dict], skipped: list[dict]) -> dict | None:
    """Refusal prompts, pairs, and prompts without a pair by reason, over the whole folder;
    None when the folder has no refusal prompt."""
    pairs = [r for r in rows if r.get("kind") == KIND]
    skips = [s for s in skipped if s.get("kind") == KIND]
    if not pairs and not skips:
        return None
    ps = [r["p_chosen"] for r in pairs]
    return {"prompts": len(pairs) + len(skips), "pairs": len(pairs),
            **{reason.replace(" ", "_"): sum(s["reason"] == reason for s in skips)
               for reason in (NO_REFUSAL, ALL_REFUSE, TOO_LONG)},
            "mean_p_chosen": round(sum(ps) / len(ps), 4) if ps else None}
