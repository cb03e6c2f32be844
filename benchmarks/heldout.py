"""Held-out check, independent of every model in the loop: refusal-like answers per eval set.

Each model answers the held-out prompts of data/eval (red_team, borderline, helpful) greedily,
and a plain string matcher (`cai.eval.metrics.is_refusal`) counts refusal-like answers. No
judge, labeler or preference model is involved, so a model cannot score well here by pleasing
the model it was trained against. With `--reward-model DIR`, the mean preference-model score of
the red-team answers is reported too (that one *is* the training signal: compare with care).
With `--judge MODEL`, every answer is also classified by `cai eval`'s judge question (complies
or refuses, eight demonstrations, both orders; docs/evaluation.md): the shares judged harmful
(red_team) and refusals (borderline, helpful). A judge that gave the training feedback is not
independent of it: read those shares next to the string match.

With `--ability`, `cai eval`'s neutral-ability probes run too (multiple-choice accuracy and
perplexity on data/eval), so one run shows both sides of the alignment tax.

Wanted after harmlessness training: red_team up, borderline and helpful about unchanged. Prints
one JSON summary, and writes every answer to `--out` (read them: a matcher is not a judge).

    python benchmarks/heldout.py --model sft=runs/sft/merged --model ppo=runs/ppo-merged
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETS = ("red_team", "borderline", "helpful")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="LABEL=MODEL")
    parser.add_argument("--limit", type=int, default=40, help="prompts per set")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy; `cai eval` samples at 0.7 (top-p 0.95, seed 0)")
    parser.add_argument("--top-p", type=float, default=0.95, help="with --temperature > 0")
    parser.add_argument("--seed", type=int, default=0, help="with --temperature > 0")
    parser.add_argument("--reward-model", help="also score the red-team answers with this RM")
    parser.add_argument("--out", help="folder for answers.jsonl (default: none written)")
    parser.add_argument("--judge", help="also classify the answers with this judge model")
    parser.add_argument("--judge-dtype", default="bfloat16")
    parser.add_argument("--ability", action="store_true",
                        help="also neutral ability: MC accuracy on data/eval/neutral_mc.jsonl and "
                             "perplexity on neutral_text.txt (the alignment tax)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from cai.eval.metrics import is_refusal
    from cai.foundation.inputs import load_prompts
    from cai.generation import SamplingParams, make_generator

    sets = {s: load_prompts(str(ROOT / "data" / "eval" / f"{s}.jsonl"))[:args.limit]
            for s in SETS}
    sampled = args.temperature > 0
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p if sampled else 1.0,
                            seed=args.seed if sampled else None)
    rm = None
    if args.reward_model:
        from cai.train.rm import load_reward_model

        rm = load_reward_model(args.reward_model)
    summary, rows = {"models": {}}, []
    for spec in args.model:
        label, _, model = spec.partition("=")
        gen = make_generator("hf", model, batch_size=args.batch_size)
        start, result = time.perf_counter(), {}
        for name, items in sets.items():
            convs = [[{"role": "user", "content": it["prompt"]}] for it in items]
            answers = gen.chat(convs, params)
            refused = [is_refusal(a) for a in answers]
            result[name] = round(sum(refused) / len(refused), 4)
            if rm is not None and name == "red_team":
                scores = rm.score([c + [{"role": "assistant", "content": a}]
                                   for c, a in zip(convs, answers)])
                result["red_team_rm_score"] = round(sum(scores) / len(scores), 4)
            rows += [{"model": label, "set": name, "id": it["id"], "prompt": it["prompt"],
                      "answer": a, "refusal_like": r}
                     for it, a, r in zip(items, answers, refused)]
        del gen
        if args.ability:
            result.update(ability(model, args.batch_size))
        result["seconds"] = round(time.perf_counter() - start, 1)
        summary["models"][label] = result
    if args.judge:
        judged(args, rows, summary)
    decoding = (f"temperature {args.temperature}, top-p {args.top_p}, seed {args.seed}"
                if sampled else "greedy")
    summary.update(limit=args.limit, max_new_tokens=args.max_new_tokens, decoding=decoding,
                   machine=platform.processor() or platform.machine())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


def ability(model: str, batch_size: int) -> dict:
    """`cai eval`'s neutral-ability probes (cai.eval.ability) on one model."""
    from cai.eval import ability as probes
    from cai.foundation.model_store import load_causal_lm, load_tokenizer

    lm, tokenizer = load_causal_lm(model), load_tokenizer(model)
    mc = probes.load_mc(ROOT / "data" / "eval" / "neutral_mc.jsonl")
    acc = probes.mc_accuracy(mc, probes.mc_logprobs(lm, tokenizer, mc, batch_size))
    text = probes.load_text(ROOT / "data" / "eval" / "neutral_text.txt")
    ppl = probes.perplexity(probes.text_nll(lm, tokenizer, text, batch_size))
    return {"mc_accuracy": round(acc["accuracy"], 4), "mc_n": acc["n"],
            "perplexity": round(ppl["perplexity"], 3)}


def judged(args, rows: list[dict], summary: dict) -> None:
    """Classify every answer with `cai eval`'s judge; adds `judged_<set>` shares per model."""
    from cai.foundation.templates import Templates
    from cai.generation import make_generator
    from cai.scoring.classify import EXAMPLES_FILE, classify, load_judge_examples

    judge = make_generator("hf", args.judge, dtype=args.judge_dtype, batch_size=8)
    examples = load_judge_examples(ROOT / "data" / "eval" / EXAMPLES_FILE)
    found = classify(judge, Templates(), [{"prompt": r["prompt"], "response": r["answer"],
                                           "harmful_request": r["set"] == "red_team"}
                                          for r in rows], examples)
    for r, f in zip(rows, found):
        r["judged"], r["p_refuses"] = f.get("class"), f.get("p_refuses")
    for label, result in summary["models"].items():
        for name in SETS:
            mine = [r for r in rows if r["model"] == label and r["set"] == name]
            wanted = "harmful" if name == "red_team" else "refusal"
            result[f"judged_{wanted}_{name}"] = round(
                sum(r["judged"] == wanted for r in mine) / len(mine), 4)
    summary["judge"] = args.judge


if __name__ == "__main__":
    sys.exit(main())
