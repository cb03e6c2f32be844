"""Neutral ability, for the alignment tax: multiple-choice accuracy and perplexity.

Safety training can cost a model some of its ordinary ability (Askell et al. 2021,
arXiv:2112.00861; Ouyang et al. 2022, arXiv:2203.02155, section 4.2, saw regressions on public
NLP tasks). Two project-written probes measure it, on any transformers causal LM:

- **Multiple choice by log-likelihood** (the "cloze" scoring of Brown et al. 2020,
  arXiv:2005.14165, section 2, as in lm-evaluation-harness): the question is the user turn of
  the model's chat template, each choice is scored as the start of the assistant's reply,
  log P(choice | question) summed over its tokens, and the highest wins (`accuracy`). Long
  choices collect more negative log-prob, so `accuracy_norm` divides by the choice's length in
  characters first (lm-evaluation-harness's `acc_norm`).
- **Perplexity** on plain paragraphs: exp(total NLL / predicted tokens), each paragraph read
  on its own, every token after its first predicted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from cai.foundation.errors import CaiError

# --------------------------------------------------------------------------------------------
# Inputs


def load_mc(path: str | Path) -> list[dict]:
    """Questions `{"id", "question", "choices": [str, ...], "answer": index}` from a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise CaiError(f"{path}: multiple-choice file not found")
    rows, problems, seen = [], [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not valid JSON ({e.msg})")
            continue
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or \
                not (isinstance(choices, list) and len(choices) >= 2
                     and all(isinstance(c, str) and c.strip() for c in choices)):
            problems.append(f"{path}:{n}: needs 'question' (text) and 'choices' (two or more "
                            "texts)")
            continue
        answer = obj.get("answer")
        if not isinstance(answer, int) or isinstance(answer, bool) or \
                not 0 <= answer < len(choices):
            problems.append(f"{path}:{n}: 'answer' must be the index of the right choice "
                            f"(0 to {len(choices) - 1})")
            continue
        qid = str(obj.get("id", f"{path.stem}-{n}"))
        if qid in seen:
            problems.append(f"{path}:{n}: duplicate id '{qid}'")
        seen.add(qid)
        rows.append({"id": qid, "question": obj["question"], "choices": choices,
                     "answer": answer})
    if problems:
        raise CaiError("\n".join(problems[:20]))
    if not rows:
        raise CaiError(f"{path}: no questions in the file")
    return rows


def load_text(path: str | Path) -> list[str]:
    """Paragraphs (non-blank lines) of a plain-text file."""
    path = Path(path)
    if not path.is_file():
        raise CaiError(f"{path}: text file not found")
    paragraphs = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                  if line.strip()]
    if not paragraphs:
        raise CaiError(f"{path}: no text in the file")
    return paragraphs


# --------------------------------------------------------------------------------------------
# Scoring


def mc_logprobs(model, tokenizer, questions: list[dict], batch_size: int = 8) -> list[list[float]]:
    """For each question, log P(choice | question) of each choice (see the module docstring)."""
    from cai.generation import encode_chat
    from cai.generation.hf import sequence_logprobs

    contexts, targets, owners = [], [], []
    for q, item in enumerate(questions):
        prompt = encode_chat(tokenizer, [{"role": "user", "content": item["question"]}])
        for choice in item["choices"]:
            contexts.append(prompt)
            targets.append(tokenizer(choice, add_special_tokens=False)["input_ids"])
            owners.append(q)
    flat = sequence_logprobs(model, tokenizer, contexts, targets, batch_size)
    out: list[list[float]] = [[] for _ in questions]
    for q, lp in zip(owners, flat):
        out[q].append(lp)
    return out


def text_nll(model, tokenizer, paragraphs: list[str], batch_size: int = 8) -> list[dict]:
    """`{"nll": summed negative log-likelihood, "tokens": tokens predicted}` per paragraph.

    Each paragraph is read on its own; its first token is the context and every later token is
    predicted (no special token in front: chat models' BOS opens a chat turn, not a text).
    """
    from cai.generation.hf import sequence_logprobs

    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in paragraphs]
    logps = sequence_logprobs(model, tokenizer, [t[:1] for t in ids], [t[1:] for t in ids],
                              batch_size)
    return [{"nll": -lp, "tokens": len(t) - 1} for lp, t in zip(logps, ids)]


# --------------------------------------------------------------------------------------------
# Summaries


def mc_accuracy(questions: list[dict], logprobs: list[list[float]]) -> dict:
    """Accuracy (argmax of summed log-probs) and length-normalized accuracy; ties count as wrong
    unless every tied choice is right (only one is)."""
    right = right_norm = 0
    for item, lps in zip(questions, logprobs):
        norm = [lp / max(len(c), 1) for lp, c in zip(lps, item["choices"])]
        right += _argmax(lps) == item["answer"]
        right_norm += _argmax(norm) == item["answer"]
    n = len(questions)
    return {"accuracy": right / n, "accuracy_norm": right_norm / n, "n": n,
            "chance": sum(1 / len(q["choices"]) for q in questions) / n}


def _argmax(values: list[float]) -> int | None:
    best = max(values)
    winners = [k for k, v in enumerate(values) if v == best]
    return winners[0] if len(winners) == 1 else None


def perplexity(scores: list[dict]) -> dict:
    """exp(total NLL / total predicted tokens) over all paragraphs."""
    nll = sum(s["nll"] for s in scores)
    tokens = sum(s["tokens"] for s in scores)
    return {"perplexity": math.exp(nll / tokens) if tokens else None,
            "nll_per_token": nll / tokens if tokens else None, "tokens": tokens,
            "paragraphs": len(scores)}
