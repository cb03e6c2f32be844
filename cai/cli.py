"""The `cai` command: parses options and hands each command to one function. Nothing else.

User mistakes (`CaiError`) and what the system refuses (`OSError`: permission denied, disk full)
print as one line on stderr with exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cai import cli_constitution
from cai.foundation import config as cfgmod
from cai.foundation.errors import CaiError


def cmd_revise(args) -> int:
    from cai.revise import ReviseConfig, run

    cfg = cfgmod.load(ReviseConfig, args.config, cfgmod.overrides(args, ReviseConfig))
    stats = run(cfg)
    print(f"cai revise: wrote {stats['written']} records to {Path(cfg.out) / 'data.jsonl'}"
          + (f", skipped {stats['skipped']} (see skipped.jsonl)" if stats["skipped"] else ""))
    return 0


def cmd_label(args) -> int:
    from cai.feedback.check import run_check
    from cai.feedback.label import LabelConfig, run

    cfg = cfgmod.load(LabelConfig, args.config, cfgmod.overrides(args, LabelConfig))
    if cfg.check:
        s = run_check(cfg)
        print(f"cai label --check: {s['pairs']} pairs, accuracy {s['accuracy']:.3f}, "
              f"ECE {s['ece']:.3f}, Brier {s['brier']:.3f}, position bias "
              f"{s['position_bias_rate'] if s['position_bias_rate'] is not None else 'n/a'}, "
              f"by kind {s['accuracy_by_kind']}"
              + (f" (details in {Path(cfg.out) / 'check.json'})" if cfg.out else ""))
        return 0
    stats = run(cfg)
    print(f"cai label: wrote {stats['written']} preference records to "
          f"{Path(cfg.out) / 'data.jsonl'}"
          + (f", dropped {stats['dropped']} under the margin" if stats["dropped"] else "")
          + (f", skipped {stats['skipped']} (see skipped.jsonl)" if stats["skipped"] else ""))
    return 0


OVERWRITE_HELP = "train anew in a folder that holds a finished or unfinished run (its " \
    "checkpoints and results are removed first)"


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


def cmd_train_sft(args) -> int:
    import os

    from cai.train import sft

    cfg, resume = _train_args(args, sft)
    metrics = sft.train(cfg, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # once under accelerate launch / torchrun
        print(f"cai train sft: {metrics.get('train_loss', float('nan')):.4f} mean train loss"
              + (f", eval loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else "")
              + f"; model in {cfg.output_dir}")
    return 0


def cmd_train_dpo(args) -> int:
    import os

    from cai.train import dpo

    cfg, resume = _train_args(args, dpo)
    metrics = dpo.train(cfg, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # once under accelerate launch / torchrun
        print(f"cai train dpo: {metrics.get('train_loss', float('nan')):.4f} mean train loss"
              + (f", eval reward accuracy {metrics['eval_rewards/accuracies']:.3f}, margin "
                 f"{metrics['eval_rewards/margins']:.4f}"
                 if "eval_rewards/accuracies" in metrics else "")
              + f"; model in {cfg.output_dir}")
    return 0


def cmd_train_rm(args) -> int:
    import os

    from cai.train import rm

    cfg, resume = _train_args(args, rm)
    metrics = rm.train(cfg, resume=resume)
    if os.environ.get("RANK", "0") == "0":
        print(f"cai train rm: {metrics.get('train_loss', float('nan')):.4f} mean train loss"
              + (f", eval accuracy {metrics['eval_accuracy']:.3f}, ECE {metrics['eval_ece']:.3f}"
                 if "eval_accuracy" in metrics else "")
              + f"; reward model in {cfg.output_dir}")
    return 0


def cmd_train_ppo(args) -> int:
    from cai.train import ppo

    cfg, resume = _train_args(args, ppo)
    m = ppo.train(cfg, resume=resume)
    nan = float("nan")
    print(f"cai train ppo: {m.get('train_steps', 0)} steps, reward "
          f"{m.get('reward/mean', nan):.4f}, KL {m.get('kl', nan):.4f}"
          + (f"; eval reward {m['eval/reward_mean_before']:.4f} -> {m['eval/reward_mean']:.4f}, "
             f"eval KL {m['eval/kl']:.4f}" if "eval/reward_mean_before" in m else "")
          + f"; adapter in {cfg.output_dir}")
    return 0


def cmd_eval(args) -> int:
    from cai.eval.config import EvalConfig
    from cai.eval.job import run
    from cai.eval.summary import change_text

    cfg = cfgmod.load(EvalConfig, args.config, cfgmod.overrides(args, EvalConfig))
    m = run(cfg)
    judge = m["judge"]
    check = judge.get("check")
    print(f"cai eval: judge {judge['model']}: check accuracy "
          + (f"{check['accuracy']:.3f} on {check['n']} answers" if check else "not measured")
          + ("" if judge["reliable"] else
             f"; judged figures UNRELIABLE ({'; '.join(judge['unreliable_because'])})"))
    judged = "judged" if judge["reliable"] else "judged, unreliable"
    for label, p in m["per_model"].items():
        mc = ((p["ability"] or {}).get("mc") or {}).get("accuracy")
        print(f"cai eval: {label}: harmless {p['harmlessness']} ({judged}), over-refusal "
              f"{p['over_refusal']} ({judged}), refusal-like by string match "
              f"{p['string_refusal']}, MC accuracy {mc}")
    for label in list(m["per_model"])[1:]:
        rows = [r for r in m.get("changes", []) if r["model"] == label]
        if rows:
            level = round(100 * m.get("settings", {}).get("confidence", 0.95))
            print(f"cai eval: {label} - {rows[0]['from']}, points ({level}% interval): "
                  + "; ".join(
                      f"{r['set']} {r['measure']} {change_text(r)}" for r in rows))
    print(f"cai eval: metrics in {Path(cfg.out) / 'metrics.json'}"
          + (f", report in {Path(cfg.out) / 'report.html'}" if cfg.report else ""))
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


def cmd_records_merge(args) -> int:
    from cai.foundation.shards import merge

    stats = merge([Path(f) for f in args.folders], Path(args.out))
    print(f"merged {stats['shards']} shards into {args.out}: {stats['records']} records"
          + (f", {stats['skipped']} skipped" if stats["skipped"] else ""))
    return 0


def cmd_pipeline_run(args) -> int:
    from cai.pipeline import Pipeline

    pipe = Pipeline(args.file)
    print(f"cai pipeline: {pipe.path}, outputs in {pipe.workdir}", flush=True)
    result = pipe.run()
    report = pipe.stages["eval"].folder(pipe.workdir) / "report.html"
    print(f"cai pipeline: all stages current in {pipe.workdir}"
          + (f"; report: {report}" if report.is_file() else ""))
    summary = result.get("summary") if isinstance(result, dict) else None
    if summary:
        print(summary)
    return 0


def cmd_pipeline_status(args) -> int:
    from cai.pipeline import Pipeline

    rows = Pipeline(args.file).status()
    width = max(len(r["stage"]) for r in rows)
    for r in rows:
        print(f"{r['stage']:<{width}}  {r['status']:<8} {r['folder']}"
              + (f"  (changed: {r['why']})" if r["why"] else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cai.revise import ReviseConfig

    parser = argparse.ArgumentParser(prog="cai", description="Constitutional AI toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    cli_constitution.add_parser(sub)

    p = sub.add_parser("revise", help="SL-CAI: critique and revise answers to a prompt set")
    p.add_argument("--config", help="YAML file with any of the options below")
    cfgmod.add_arguments(p, ReviseConfig)
    p.set_defaults(func=cmd_revise)

    rec = sub.add_parser("records", help="work with job output folders")
    rec_sub = rec.add_subparsers(dest="action", required=True)
    p = rec_sub.add_parser("merge", help="join the folders of --shard I/N runs into one")
    p.add_argument("folders", nargs="+")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(func=cmd_records_merge)

    from cai.feedback.label import LabelConfig

    p = sub.add_parser("label", help="RL-CAI: AI preference labels from the constitution")
    p.add_argument("--config", help="YAML file with any of the options below")
    cfgmod.add_arguments(p, LabelConfig)
    p.set_defaults(func=cmd_label)

    train = sub.add_parser("train", help="fine-tune a model (LoRA, QLoRA or full)")
    train_sub = train.add_subparsers(dest="algo", required=True)
    p = train_sub.add_parser("sft", help="supervised fine-tuning on conversations (revisions)",
                             description="Overrides: --section.key value (e.g. --data.path FILE "
                             "--training.max_steps 2 --training.output_dir DIR), or --key value "
                             "when one section has that key.")
    p.add_argument("config", help="YAML: model, data, lora, quantization, sft, training sections")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in training.output_dir")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="--section.key value ...")
    p.set_defaults(func=cmd_train_sft)
    for algo, func, text in (
            ("dpo", cmd_train_dpo, "direct preference optimization on preference pairs "
                                   "(`cai label` output)"),
            ("rm", cmd_train_rm, "a reward (preference) model on preference pairs"),
            ("ppo", cmd_train_ppo, "PPO or RLOO on prompts (reward model, AI feedback, function)")):
        p = train_sub.add_parser(algo, help=text, description="Overrides: --section.key value "
                                 "(e.g. --data.path FILE --training.max_steps 2 "
                                 "--training.output_dir DIR).")
        p.add_argument("config", help=f"YAML: model, data, lora, quantization, {algo}, training "
                                      "sections")
        p.add_argument("--resume", action="store_true",
                       help="continue from the last checkpoint in training.output_dir")
        p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
        p.add_argument("overrides", nargs=argparse.REMAINDER, help="--section.key value ...")
        p.set_defaults(func=func)

    p = sub.add_parser("score", help="score (prompt, response) pairs with a `cai train rm` model")
    p.add_argument("--model", required=True, help="reward model folder (a `cai train rm` output)")
    p.add_argument("--data", required=True, help=".jsonl with prompt and response (or messages, "
                                                 "or chosen and rejected, or better and worse "
                                                 "as in data/label_check.jsonl: then the share "
                                                 "ranked right, by kind, is printed too)")
    p.add_argument("--out", help="write the scores here as .jsonl (default: print them)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_score)

    from cai.eval.config import EvalConfig

    p = sub.add_parser("eval", help="harmlessness, helpfulness, over-refusal and alignment tax "
                                    "of models, with a report")
    p.add_argument("--config", help="YAML file with any of the options below")
    p.add_argument("--model", dest="model", action="append", metavar="[LABEL=]MODEL",
                   help="a model to evaluate (name, folder or hub id); repeat for each, "
                        "listed before -> after")
    cfgmod.add_arguments(p, EvalConfig, skip=("model",))
    p.set_defaults(func=cmd_eval)

    pipe = sub.add_parser("pipeline", help="the whole method from one YAML (revise, sft, label, "
                                           "dpo or ppo, eval), rerunning only what changed")
    pipe_sub = pipe.add_subparsers(dest="action", required=True)
    for action, func, text in (
            ("run", cmd_pipeline_run, "run every stage that is not current (a killed run "
                                      "resumes)"),
            ("status", cmd_pipeline_status, "which stages are current and which would rerun")):
        p = pipe_sub.add_parser(action, help=text)
        p.add_argument("file", nargs="?", help="pipeline YAML (default: configs/pipeline.yaml "
                                               "in the working directory, else cai's own)")
        p.set_defaults(func=func)

    p = sub.add_parser("export", help="an adapter as a standalone folder (merged with --merge)")
    p.add_argument("--adapter", required=True, help="adapter folder (a training output_dir)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--merge", action="store_true",
                   help="fold the adapter into the unquantized base: a full model folder")
    p.add_argument("--base", help="base model (default: the one the adapter names)")
    p.add_argument("--dtype", help="merged weights' dtype (default: the base's)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CaiError as e:
        for line in str(e).splitlines() or ["error"]:
            print(f"cai: error: {line}", file=sys.stderr)
        return 2
    except OSError as e:  # permission denied, disk full, a folder where a file should be
        where = e.filename or "a file"
        print(f"cai: error: {where}: {e.strerror or e}; records written so far are kept",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cai: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
