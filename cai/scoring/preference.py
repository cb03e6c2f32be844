"""The multiple-choice scoring core of AI feedback: which of two answers does a model prefer?

Bai et al. 2022 (arXiv:2212.08073, section 4.1): the feedback model sees the conversation, one
comparison principle from the constitution phrased as a question, and two responses as options
(A) and (B). The normalized probabilities of its answers "(A)" and "(B)" are a soft preference
label. Ensembling over principles made the preference model more robust; with chain-of-thought
the answers are overconfident, so the probabilities are clamped to 40-60%.

Lee et al. 2023 (arXiv:2309.00267, section 2): small judges prefer a position regardless of
content, so each pair is scored in both orders and the two probabilities are averaged.

`cai label`, `cai label --check`, `cai eval`'s comparisons and PPO's AI-feedback reward all
score through `score` here. This module holds no job logic: no files, no progress bars.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from cai import constitution as constitutions
from cai.constitution import Constitution, Principle, sample_principles
from cai.foundation.templates import Templates
from cai.generation import Generator, SamplingParams, item_seeds
from cai.scoring.labels import choice_probability, clamp, combine_orders, p_first

TEMPLATES = ("feedback.j2", "feedback_cot.j2", "feedback_answer.j2")
CHOICES = ["(A)", "(B)"]
_SWAP = {"(A)": "(B)", "(B)": "(A)"}


@dataclass(frozen=True)
class ScoringOptions:
    """How each pair is asked: principles per pair, orders, chain of thought."""

    principles: int = 1  # questions per pair, averaged (an ensemble)
    seed: int = 0  # seeds the principle draw and, without debiasing, the order
    debias: bool = True  # both presentation orders, averaged
    cot: bool = False  # the model reasons before its choice
    cot_clamp: tuple[float, float] = (0.4, 0.6)
    cot_max_new_tokens: int = 256
    cot_temperature: float = 0.0


def load_inputs(constitution: str | None, principle_ids: list[str] | None,
                prompts_dir: str | None) -> tuple[Constitution, tuple[Principle, ...], Templates]:
    """The constitution, its preference pool and the templates, checked before any model loads."""
    found = constitutions.load(constitution)
    pool = found.restrict("preference", principle_ids)
    templates = Templates(prompts_dir)
    for name in TEMPLATES:  # render once with dummy values: a missing variable fails here
        templates.render(name, prompt="?", question=pool[0].question, response_a="?",
                         response_b="?")
    return found, pool, templates


def same_text(a: str, b: str) -> bool:
    """Two answers equal up to whitespace: nothing to compare."""
    return " ".join(a.split()) == " ".join(b.split())


class Feedback:
    """Builds the feedback model's conversations: few-shot demonstrations, then the comparison."""

    def __init__(self, constitution: Constitution, templates: Templates, few_shot: int,
                 cot: bool, seed: int):
        self.templates, self.few_shot, self.cot, self.seed = templates, few_shot, cot, seed
        # Chain of thought shows each demonstration's reasoning: only those with one are used.
        self.examples = [e for e in constitution.preference_examples if e.reasoning or not cot]

    def request(self, prompt: str, question: str, a: str, b: str) -> str:
        return self.templates.render("feedback_cot.j2" if self.cot else "feedback.j2",
                                     prompt=prompt, question=question, response_a=a, response_b=b)

    def answer_request(self, question: str) -> str:
        return self.templates.render("feedback_answer.j2", question=question)

    def demonstrations(self, key: str, question: str) -> list[dict]:
        """Answered comparisons in front of the real one, each shown in a random order so the
        demonstrations do not teach a position."""
        if not self.examples or not self.few_shot:
            return []
        rng = random.Random(f"{self.seed}:few-shot:{key}")
        turns = []
        for ex in rng.sample(self.examples, min(self.few_shot, len(self.examples))):
            a, b, answer, reasoning = ex.response_a, ex.response_b, f"({ex.answer})", ex.reasoning
            if rng.random() < 0.5:
                a, b, answer = b, a, _SWAP[answer]
                reasoning = re.sub(r"\([AB]\)", lambda m: _SWAP[m.group(0)], reasoning)
            q = ex.question or question
            turns.append({"role": "user", "content": self.request(ex.prompt, q, a, b)})
            if self.cot:
                turns += [{"role": "assistant", "content": reasoning},
                          {"role": "user", "content": self.answer_request(q)}]
            turns.append({"role": "assistant", "content": answer})
        return turns

    def conversation(self, key: str, principle: Principle, prompt: str, a: str, b: str):
        return self.demonstrations(key, principle.question) + [
            {"role": "user", "content": self.request(prompt, principle.question, a, b)}]


def score(model: Generator, feedback: Feedback, tasks: list[dict], pool, opts: ScoringOptions,
          on_step: Callable[[str], None] = lambda step: None
          ) -> list[tuple[list[dict] | None, str]]:
    """Votes for each task `{"key", "prompt", "first", "second"}`: (votes, "") or (None, reason).

    Each task gets `opts.principles` principles drawn by its key; each principle is asked in both
    orders (or, without debiasing, in one order drawn at random). All questions of all tasks go
    to the model as one `choice_logprobs` call (plus one `chat` call for chain of thought).
    A vote is `{"principle_id", "p_first", "order", "p_ab", "p_ba"}`: P(first answer better).
    """
    queries = []  # (task index, principle index, principle, order, conversation)
    for t, task in enumerate(tasks):
        for k, principle in enumerate(sample_principles(pool, task["key"], opts.principles,
                                                        opts.seed)):
            orders = ["ab", "ba"] if opts.debias else \
                [random.Random(f"{opts.seed}:order:{task['key']}:{k}").choice(["ab", "ba"])]
            for order in orders:
                a, b = (task["first"], task["second"]) if order == "ab" else \
                    (task["second"], task["first"])
                conv = feedback.conversation(task["key"], principle, task["prompt"], a, b)
                queries.append((t, k, principle, order, conv))
    too_long = {}
    if model.context_length:
        # Room left for the answer: the choice, or the reasoning plus the follow-up question.
        room = opts.cot_max_new_tokens + 64 if opts.cot else 8
        lengths = model.prompt_tokens([q[4] for q in queries]) or []
        for q, n in zip(queries, lengths):
            if n + room > model.context_length:
                too_long[q[0]] = (f"labeler prompt of {n} tokens + {room} for the answer is over "
                                  f"the labeler's context of {model.context_length}")
        queries = [q for q in queries if q[0] not in too_long]
    convs = [q[4] for q in queries]
    reasoning = [""] * len(queries)
    if opts.cot and queries:
        on_step("labeler reasoning")
        reasoning = model.chat(convs, SamplingParams(  # seeded per question, not per batch
            max_new_tokens=opts.cot_max_new_tokens, temperature=opts.cot_temperature,
            seeds=item_seeds(opts.seed, (f"cot:{tasks[q[0]]['key']}:{q[1]}:{q[3]}"
                                         for q in queries))))
        convs = [c + [{"role": "assistant", "content": r},
                      {"role": "user", "content": feedback.answer_request(q[2].question)}]
                 for c, r, q in zip(convs, reasoning, queries)]
    on_step("labeler choice")
    logps = model.choice_logprobs(convs, CHOICES) if convs else []
    votes: dict[tuple[int, int], dict] = {}
    for (t, k, principle, order, _), lp, why in zip(queries, logps, reasoning):
        p = p_first(choice_probability(*lp), order)
        if opts.cot:
            p = clamp(p, *opts.cot_clamp)
        vote = votes.setdefault((t, k), {"principle_id": principle.id, "p_first": None,
                                         "order": "both" if opts.debias else order,
                                         "p_ab": None, "p_ba": None})
        vote[f"p_{order}"] = p
        if opts.cot:
            vote.setdefault("reasoning", {})[order] = why
    out = []
    for t in range(len(tasks)):
        if t in too_long:
            out.append((None, too_long[t]))
            continue
        vs = [votes[(t, k)] for k in range(opts.principles)]
        for v in vs:
            v["p_first"] = combine_orders(v["p_ab"], v["p_ba"])
        out.append((vs, ""))
    return out
