"""What a constitution holds: its principles and few-shot examples, and how a job draws
principles for an item.

A constitution has two lists of principles (Bai et al. 2022, arXiv:2212.08073):
`critique_revision` principles drive the supervised stage (a critique request and a revision
request each), `preference` principles drive AI feedback (a comparison question each). Optional
`examples` are few-shot demonstrations of one critique/revision round, optional
`preference_examples` few-shot demonstrations of one labelling answer, (A) or (B).
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass, field

from cai.foundation.errors import CaiError


@dataclass(frozen=True)
class Principle:
    """One principle. `critique`/`revision` are set for SL-CAI ones, `question` for preference."""

    id: str
    critique: str = ""
    revision: str = ""
    question: str = ""


@dataclass(frozen=True)
class Example:
    """A few-shot demonstration of one critique/revision round.

    The requests shown in the demonstration are `critique_request`/`revision_request` when given
    (imported files carry them), else the texts of principle `principle`, else of the first
    critique/revision principle.
    """

    prompt: str
    response: str
    critique: str
    revision: str
    principle: str = ""
    critique_request: str = ""
    revision_request: str = ""


@dataclass(frozen=True)
class PreferenceExample:
    """A few-shot demonstration of AI feedback: two responses and the right answer, "A" or "B".

    `question` defaults to the question being asked; `reasoning` is shown in chain-of-thought
    mode, which uses only the examples that have it.
    """

    prompt: str
    response_a: str
    response_b: str
    answer: str
    question: str = ""
    reasoning: str = ""


@dataclass(frozen=True)
class Constitution:
    name: str
    description: str = ""
    critique_revision: tuple[Principle, ...] = ()
    preference: tuple[Principle, ...] = ()
    examples: tuple[Example, ...] = ()
    preference_examples: tuple[PreferenceExample, ...] = ()
    path: str = ""
    sha256: str = field(default="", compare=False)

    def principles(self, kind: str) -> tuple[Principle, ...]:
        """The principles of one section; a clear error when a job needs a section that is empty."""
        found = getattr(self, kind)
        if not found:
            raise CaiError(f"{self.path or self.name}: has no '{kind}' principles, which this "
                           "job needs")
        return found

    def get(self, kind: str, principle_id: str) -> Principle:
        for p in self.principles(kind):
            if p.id == principle_id:
                return p
        known = [p.id for p in getattr(self, kind)]
        hint = difflib.get_close_matches(principle_id, known, n=1)
        raise CaiError(
            f"{self.path or self.name}: no {kind} principle '{principle_id}'"
            + (f" (did you mean '{hint[0]}'?)" if hint else f"; known: {', '.join(known)}")
        )

    def restrict(self, kind: str, ids: list[str] | None) -> tuple[Principle, ...]:
        """The section's principles, or only those named in `ids` (each checked to exist)."""
        if not ids:
            return self.principles(kind)
        return tuple(self.get(kind, i) for i in ids)

    def example_requests(self, example: Example) -> tuple[str, str]:
        """The (critique request, revision request) texts a few-shot example is shown with."""
        if example.critique_request and example.revision_request:
            return example.critique_request, example.revision_request
        p = self.get("critique_revision", example.principle) if example.principle \
            else self.principles("critique_revision")[0]
        return example.critique_request or p.critique, example.revision_request or p.revision


def sample_principles(principles, key: str, k: int, seed: int) -> list[Principle]:
    """`k` principles for one item, from a RNG seeded by (seed, key) alone.

    Seeding per item (not per run) makes the draw independent of batching, sharding and resume.
    Draws without replacement while principles last, then starts a new shuffled pass.
    """
    rng = random.Random(f"{seed}:{key}")
    out: list[Principle] = []
    while len(out) < k:
        out.extend(rng.sample(list(principles), len(principles)))
    return out[:k]
