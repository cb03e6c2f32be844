"""`cai train sft|dpo|rm|ppo|grpo` (one handler for the five), and the commands on what a trainer
wrote: `cai score` (a preference model's scores) and `cai export` (an adapter, or merged)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cai.foundation.errors import CaiError

OVERWRITE_HELP = "train anew in a folder that holds a finished or unfinished run (its " \
    "checkpoints and results are removed first)"
#: Each trainer: its help line, and what its output folder holds.
TRAINERS = {
    "sft": ("supervised fine-tuning on conversations (revisions)", "model"),
    "dpo": ("direct preference optimization on preference pairs (`cai label` output)", "model"),
    "rm": ("a reward (preference) model on preference pairs", "reward model"),
    "ppo": ("PPO or RLOO on prompts (reward model, AI feedback, function)", "adapter"),
    "rs": ("rejection sampling: best of K answers by the two-sided classifier reward, then "
           "SFT, for N rounds", "adapter"),
    "grpo": ("GRPO on prompts: the PPO loop with group-relative advantages, no critic",
             "adapter"),
}


def _train_args(args, module):
    """(config, resume) of a `cai train` command: `--resume` may come before or among the
    `--section.key value` overrides."""
    from cai.train.config import parse_overrides

    rest = [a for a in args.overrides if a not in ("--resume", "--overwrite")]
    cfg = module.load_config(args.config, parse_overrides(rest))
    resume = args.resume or "--resume" in args.overrides
    if args.overwrite or "--overwrite" in args.overrides:
        if resume:
            raise CaiError("--resume and --overwrite: choose one (continue the run, or train "
                           "anew in its folder)")
        from cai.foundation import lock
        from cai.train.resume import clear_run

        lock.keep(cfg.output_dir)  # not while another run writes there
        clear_run(cfg.output_dir)
    return cfg, resume


def _result(algo: str, m: dict) -> str:
    """What a trainer's final metrics say, in the line `cai train ALGO` prints."""
    nan = float("nan")
    if algo in ("ppo", "grpo"):
        return (f"{m.get('train_steps', 0)} steps, reward {m.get('reward/mean', nan):.4f}, KL "
                f"{m.get('kl', nan):.4f}"
                + (f"; eval reward {m['eval/reward_mean_before']:.4f} -> "
                   f"{m['eval/reward_mean']:.4f}, eval KL {m['eval/kl']:.4f}"
                   if "eval/reward_mean_before" in m else ""))
    text = f"{m.get('train_loss', nan):.4f} mean train loss"
    if algo == "sft" and "eval_loss" in m:
        text += f", eval loss {m['eval_loss']:.4f}"
    if algo == "dpo" and "eval_rewards/accuracies" in m:
        text += (f", eval reward accuracy {m['eval_rewards/accuracies']:.3f}, margin "
                 f"{m['eval_rewards/margins']:.4f}")
    if algo == "rm" and "eval_accuracy" in m:
        text += f", eval accuracy {m['eval_accuracy']:.3f}, ECE {m['eval_ece']:.3f}"
    return text


def cmd_train(args) -> int:
    import os

    from cai.train import trainer

    module = trainer(args.algo)
    cfg, resume = _train_args(args, module)
    metrics = module.train(cfg, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # once under accelerate launch / torchrun
        print(f"cai train {args.algo}: {_result(args.algo, metrics)}; "
              f"{TRAINERS[args.algo][1]} in {cfg.output_dir}")
    return 0


def cmd_score(args) -> int:
    import json

    from cai.train.rm import ranking_accuracy, score_file

    rows = score_file(args.model, args.data, batch_size=args.batch_size)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"cai score: wrote {len(rows)} scores to {args.out}")
    else:
        sys.stdout.write(text)
    accuracy = ranking_accuracy(rows)
    if accuracy:  # stdout is the scores without --out: the summary goes to stderr then
        acc, n = accuracy.pop("all")
        kinds = ", ".join(f"{k} {a:.2f} of {m}" for k, (a, m) in sorted(accuracy.items()))
        print(f"cai score: chosen ranked first in {acc:.2f} of {n} pairs"
              + (f" ({kinds})" if kinds else ""), file=sys.stdout if args.out else sys.stderr)
    return 0


def cmd_export(args) -> int:
    from cai.train.export import export

    out = export(args.adapter, args.out, merge=args.merge, base=args.base, dtype=args.dtype)
    print(f"cai export: wrote {'merged model' if args.merge else 'adapter'} to {out}")
    return 0


def add_train(sub):
    """`cai train ALGO`; returns its subparsers, where other groups add their trainers."""
    train = sub.add_parser("train", help="fine-tune a model (LoRA, QLoRA or full)")
    train_sub = train.add_subparsers(dest="algo", required=True)
    for algo, (text, _) in TRAINERS.items():
        p = train_sub.add_parser(algo, help=text, description=(
            "Overrides: --section.key value (e.g. --data.path FILE --training.max_steps 2 "
            "--training.output_dir DIR)"
            + (", or --key value when one section has that key." if algo == "sft" else ".")))
        own = "ppo" if algo == "grpo" else algo  # grpo runs the PPO loop: its section is ppo
        p.add_argument("config", help=f"YAML: model, data, lora, quantization, {own}, training "
                                      "sections")
        p.add_argument("--resume", action="store_true",
                       help="continue from the last checkpoint in training.output_dir")
        p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
        p.add_argument("overrides", nargs=argparse.REMAINDER, help="--section.key value ...")
        p.set_defaults(func=cmd_train)
    return train_sub


def add_score(sub) -> None:
    p = sub.add_parser("score", help="score (prompt, response) pairs with a `cai train rm` model")
    p.add_argument("--model", required=True, help="reward model folder (a `cai train rm` output)")
    p.add_argument("--data", required=True, help=".jsonl with prompt and response (or messages, "
                                                 "or chosen and rejected, or better and worse "
                                                 "as in data/label_check.jsonl: then the share "
                                                 "ranked right, by kind, is printed too)")
    p.add_argument("--out", help="write the scores here as .jsonl (default: print them)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_score)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="an adapter as a standalone folder (merged with --merge)")
    p.add_argument("--adapter", required=True, help="adapter folder (a training output_dir)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--merge", action="store_true",
                   help="fold the adapter into the unquantized base: a full model folder")
    p.add_argument("--base", help="base model (default: the one the adapter names)")
    p.add_argument("--dtype", help="merged weights' dtype (default: the base's)")
    p.set_defaults(func=cmd_export)
