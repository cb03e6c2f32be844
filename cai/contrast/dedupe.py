"""The text handling of `cai contrast`: the model's lines parsed, near-duplicates found.

Two requests are near-duplicates when the Jaccard similarity of their word-bigram sets,
|A & B| / |A | B|, reaches a threshold (0.5 by default: "How do I pick a lock" and "How can I
pick a lock" share 3 of 6 bigrams).
"""

from __future__ import annotations

import re

LINE = re.compile(r"^\W*(decline|answer)\s*:\s*(.+)$", re.I)
MIN_WORDS, MAX_WORDS = 4, 60


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def bigrams(text: str) -> frozenset:
    w = words(text)
    return frozenset(zip(w, w[1:])) or frozenset([tuple(w)])


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / max(1, len(a | b))


def parse(raw: str) -> list[tuple[str, str]]:
    """(kind, request) for each `DECLINE: ...` / `ANSWER: ...` line: kind harmful or benign."""
    out = []
    for line in raw.splitlines():
        m = LINE.match(line.strip())
        if m:
            text = m.group(2).strip().strip('"“”').strip()
            out.append(("harmful" if m.group(1).lower() == "decline" else "benign", text))
    return out


def select(candidates: list[dict], excluded: list[str], known: list[str],
           threshold: float) -> tuple[list[dict], dict[str, int]]:
    """The candidates (dicts with `prompt`) to keep, in order, and why the others were dropped:
    too short or long, near an excluded (evaluation) request, near a known (training) one, the
    same words as a kept one, or near a kept one."""
    ex = [bigrams(t) for t in excluded]
    kn = [bigrams(t) for t in known]
    kept, grams, seen = [], [], set()
    drops = dict.fromkeys(("length", "eval-overlap", "training-overlap", "duplicate",
                           "near-duplicate"), 0)
    for c in candidates:
        n = len(words(c["prompt"]))
        g = bigrams(c["prompt"])
        key = " ".join(words(c["prompt"]))
        if n < MIN_WORDS or n > MAX_WORDS:
            reason = "length"
        elif any(jaccard(g, e) >= threshold for e in ex):
            reason = "eval-overlap"
        elif any(jaccard(g, e) >= threshold for e in kn):
            reason = "training-overlap"
        elif key in seen:
            reason = "duplicate"
        elif any(jaccard(g, e) >= threshold for e in grams):
            reason = "near-duplicate"
        else:
            kept.append(c)
            grams.append(g)
            seen.add(key)
            continue
        drops[reason] += 1
    return kept, drops
