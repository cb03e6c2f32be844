"""Should the assistant decline this request? A feedback model's reading of one prompt.

The constitution's description and every critique question form a system turn
(`prompts/request_rules.j2`), shared by every query, with a few demonstrations of the decision
after it; the question (`prompts/request_question.j2`) asks to decline or to answer helpfully,
read as the log-probabilities of the option letters, normalized over the options: a soft label
(Bai et al. 2022, arXiv:2212.08073, 4.1). Both option orders are asked and averaged, because a
small model prefers a slot whatever it holds (Lee et al. 2023, arXiv:2309.00267, 2.1).

`cai contrast` labels its prompt set with it; the request classifier (`cai train classifier`)
learns these labels from the policy's own features.
"""

from __future__ import annotations

from pathlib import Path

from cai.constitution.principles import Constitution
from cai.foundation.errors import CaiError
from cai.foundation.inputs import jsonl_objects, require_text
from cai.foundation.templates import Templates
from cai.generation import Generator
from cai.scoring.labels import choice_probabilities

DECISIONS = ("decline", "answer")
RULES = "request_rules.j2"
QUESTION = "request_question.j2"
LETTERS = ["(A)", "(B)"]


def rules_turn(templates: Templates, constitution: Constitution) -> dict:
    """The system turn: the constitution's description and its critique questions."""
    critiques = [p.critique for p in constitution.critique_revision]
    return {"role": "system", "content": templates.render(
        RULES, description=constitution.description or "", critiques=critiques)}


def conversation(templates: Templates, rules: dict, examples: list[dict], prompt: str,
                 order: list[str]) -> list[dict]:
    """Rules, the demonstrations answered with their decision's letter, then the question."""
    turns = [rules]
    for ex in examples:
        turns.append({"role": "user", "content": templates.render(
            QUESTION, prompt=ex["prompt"], options=order)})
        turns.append({"role": "assistant", "content": LETTERS[order.index(ex["decision"])]})
    turns.append({"role": "user", "content": templates.render(QUESTION, prompt=prompt,
                                                              options=order)})
    return turns


def p_decline(model: Generator, templates: Templates, constitution: Constitution,
              prompts: list[str], examples: list[dict] = ()) -> list[dict]:
    """P(decline) for each prompt: `{"p_decline": mean over orders, "by_order": [...]}`."""
    rules = rules_turn(templates, constitution)
    orders = [list(DECISIONS), list(DECISIONS[::-1])]
    queries = [(i, order, conversation(templates, rules, list(examples), p, order))
               for i, p in enumerate(prompts) for order in orders]
    logps = model.choice_logprobs([q[2] for q in queries], LETTERS) if queries else []
    shown: dict[int, list[float]] = {}
    for (i, order, _), lp in zip(queries, logps):
        shown.setdefault(i, []).append(choice_probabilities(lp)[order.index("decline")])
    return [{"p_decline": sum(shown[i]) / len(shown[i]), "by_order": shown[i]}
            for i in range(len(prompts))]


def load_examples(path: Path) -> list[dict]:
    """Demonstrations `{"prompt", "decision": "decline"|"answer"}`, every problem with its line."""
    found, problems = jsonl_objects(path, "request example")
    items = []
    for n, obj in found:
        ok = require_text(obj, "prompt", path, n, problems)
        if obj.get("decision") not in DECISIONS:
            problems.append((n, f"{path}:{n}: 'decision' must be decline or answer"))
            ok = False
        if ok:
            items.append(obj)
    if problems:
        raise CaiError("\n".join(text for _, text in sorted(problems)[:20]))
    return items
