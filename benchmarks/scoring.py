"""Benchmark: multiple-choice scoring with each context computed once, against one sequence per
choice (the obvious way, and cai's before).

The job is what `cai label` and `cai eval`'s judge ask of a model: real feedback prompts
(few-shot demonstrations, a red-team prompt, two sampled-looking answers, a constitution
question) scored as "(A)" vs "(B)", and judge classifications (eight demonstrations, then the
answer, both orders) scored as "(A)" vs "(B)".
Both ways run in this process, alternately, `--repeats` times each; the best time of each is
kept. Also checks that the two give the same log-probs. Prints one JSON summary.

    python benchmarks/scoring.py                                   # embedded SmolLM2-135M
    python benchmarks/scoring.py --model qwen2.5-coder-1.5b-instruct --dtype bfloat16 --items 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai.constitution import load  # noqa: E402
from cai.foundation.inputs import jsonl_objects, load_prompts  # noqa: E402
from cai.foundation.model_store import load_causal_lm, load_tokenizer  # noqa: E402
from cai.foundation.templates import Templates  # noqa: E402
from cai.generation.base import choice_requests  # noqa: E402
from cai.generation.hf import _whole_logprobs, shared_prefix_logprobs  # noqa: E402
from cai.scoring.classify import LETTERS, TEMPLATE, demonstrations, reading_orders  # noqa: E402
from cai.scoring.preference import CHOICES, Feedback  # noqa: E402


def requests(tokenizer, items: int):
    """(contexts, targets) of `items` labelling questions in both orders and `items` judge
    classifications in both orders."""
    constitution, templates = load(), Templates()
    feedback = Feedback(constitution, templates, few_shot=1, cot=False, seed=0)
    prompts = load_prompts(str(ROOT / "data" / "red_team.jsonl"))[:items]
    check = [r for _, r in jsonl_objects(ROOT / "data" / "eval" / "judge_check.jsonl",
                                                   "check")[0]][:items]
    question = constitution.principles("preference")[0]
    convs, choices = [], []
    for n, it in enumerate(prompts):
        a, b = check[n % len(check)]["response"], check[(n + 1) % len(check)]["response"]
        for first, second in ((a, b), (b, a)):
            convs.append(feedback.conversation(it["id"], question, it["prompt"], first, second))
            choices.append(CHOICES)
    examples = [r for _, r in jsonl_objects(
        ROOT / "data" / "eval" / "judge_examples.jsonl", "example")[0]]
    for it in check:
        for order in reading_orders(True):
            text = templates.render(TEMPLATE, prompt=it["prompt"], response=it["response"],
                                    options=order)
            convs.append(demonstrations(templates, examples, order) +
                         [{"role": "user", "content": text}])
            choices.append(LETTERS)
    contexts, targets = [], []
    for conv, options in zip(convs, choices):
        (ids,), option_ids = choice_requests(tokenizer, [conv], options)
        for t in option_ids:
            contexts.append(ids)
            targets.append(t)
    return contexts, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--items", type=int, default=24, help="labelling and judge questions each")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, dtype=args.dtype)
    contexts, targets = requests(tokenizer, args.items)
    pad = tokenizer.pad_token_id
    best = {"whole": float("inf"), "shared": float("inf")}
    values = {}
    for _ in range(args.repeats):
        for name, fn in (("whole", _whole_logprobs), ("shared", shared_prefix_logprobs)):
            start = time.perf_counter()
            values[name] = fn(model, pad, contexts, targets, args.batch)
            best[name] = min(best[name], time.perf_counter() - start)
    diff = max(abs(a - b) for a, b in zip(values["whole"], values["shared"]))
    print(json.dumps({
        "model": args.model, "dtype": args.dtype, "choices_scored": len(targets),
        "distinct_contexts": len({tuple(c) for c in contexts}),
        "context_tokens_mean": round(sum(map(len, contexts)) / len(contexts), 1),
        "whole_seconds": round(best["whole"], 2), "shared_seconds": round(best["shared"], 2),
        "shared_vs_whole": round(best["whole"] / best["shared"], 2),
        "max_abs_logprob_difference": diff}, indent=1))


if __name__ == "__main__":
    main()
