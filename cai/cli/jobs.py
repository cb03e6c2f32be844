"""`cai revise`, `cai label` and `cai eval`: the jobs configured by an options dataclass, each a
`--config` YAML and one `--flag` per option (the same keys), handed to the job's `run`."""

from __future__ import annotations

from pathlib import Path

from cai.foundation import options as cfgmod


def cmd_revise(args) -> int:
    from cai.revise.config import ReviseConfig
    from cai.revise.job import run

    cfg = cfgmod.load(ReviseConfig, args.config, cfgmod.overrides(args, ReviseConfig))
    stats = run(cfg)
    print(f"cai revise: wrote {stats['written']} records to {Path(cfg.out) / 'data.jsonl'}"
          + (f", skipped {stats['skipped']} (see skipped.jsonl)" if stats["skipped"] else ""))
    return 0


def cmd_label(args) -> int:
    from cai.label.check import run_check
    from cai.label.config import LabelConfig
    from cai.label.job import run

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


def add_revise(sub) -> None:
    from cai.revise.config import ReviseConfig

    p = sub.add_parser("revise", help="SL-CAI: critique and revise answers to a prompt set")
    p.add_argument("--config", help="YAML file with any of the options below")
    cfgmod.add_arguments(p, ReviseConfig)
    p.set_defaults(func=cmd_revise)


def add_label(sub) -> None:
    from cai.label.config import LabelConfig

    p = sub.add_parser("label", help="RL-CAI: AI preference labels from the constitution")
    p.add_argument("--config", help="YAML file with any of the options below")
    cfgmod.add_arguments(p, LabelConfig)
    p.set_defaults(func=cmd_label)


def cmd_contrast(args) -> int:
    from cai.contrast.config import ContrastConfig
    from cai.contrast.job import run

    cfg = cfgmod.load(ContrastConfig, args.config, cfgmod.overrides(args, ContrastConfig))
    c = run(cfg, progress=lambda text: print(f"cai contrast: {text}", flush=True))
    print(f"cai contrast: {c['generated']} generated requests kept of {c['candidates']} "
          f"(dropped {c['dropped']}), {c['requests']} requests in {Path(cfg.out) / 'data.jsonl'}"
          + (f"; flagged at 0.5 by source {c['flagged_at_0.5']}" if 'flagged_at_0.5' in c else ""))
    return 0


def add_contrast(sub) -> None:
    from cai.contrast.config import ContrastConfig

    p = sub.add_parser("contrast", help="harmful requests and harmless look-alikes from the "
                                        "feedback model, labelled P(decline)")
    p.add_argument("--config", help="YAML file with any of the options below")
    cfgmod.add_arguments(p, ContrastConfig)
    p.set_defaults(func=cmd_contrast)


def add_eval(sub) -> None:
    from cai.eval.config import EvalConfig

    p = sub.add_parser("eval", help="harmlessness, helpfulness, over-refusal and alignment tax "
                                    "of models, with a report")
    p.add_argument("--config", help="YAML file with any of the options below")
    p.add_argument("--model", dest="model", action="append", metavar="[LABEL=]MODEL",
                   help="a model to evaluate (name, folder or hub id); repeat for each, "
                        "listed before -> after")
    cfgmod.add_arguments(p, EvalConfig, skip=("model",))
    p.set_defaults(func=cmd_eval)
