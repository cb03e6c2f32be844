"""`cai train classifier` (the constitutional classifier's heads) and `cai classify` (apply
one: a guard in front of any model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cai.foundation import options as cfgmod
from cai.foundation.errors import CaiError


def cmd_train_classifier(args) -> int:
    from cai.train.classifier import ClassifierConfig, run

    cfg = cfgmod.load(ClassifierConfig, args.config, cfgmod.overrides(args, ClassifierConfig))
    r = run(cfg, progress=lambda text: print(f"cai train classifier: {text}", flush=True))
    flags = r.get("request_flagged", {})
    print("cai train classifier: request head flags "
          + ", ".join(f"{k} {v['flagged']:.2f}" for k, v in flags.items())
          + (f"; answer head agrees with the judge check on "
             f"{r['answer_judge_check']['agreement']:.2f}" if "answer_judge_check" in r else "")
          + f"; classifier in {cfg.out}")
    return 0


def cmd_classify(args) -> int:
    from cai.foundation.inputs import jsonl_objects
    from cai.scoring.classifier import Classifier

    path = Path(args.prompts)
    if not path.is_file():
        raise CaiError(f"{path}: file not found")
    found, problems = jsonl_objects(path, "row")
    rows = []
    for n, obj in found:
        if not isinstance(obj.get("prompt"), str):
            problems.append((n, f"{path}:{n}: needs a 'prompt' (text)"))
        elif "response" in obj and not isinstance(obj["response"], str):
            problems.append((n, f"{path}:{n}: 'response' must be text"))
        else:
            rows.append(obj)
    if problems:
        raise CaiError("\n".join(text for _, text in sorted(problems)[:20]))
    clf = Classifier.load(args.model)
    prompts = [r["prompt"] for r in rows]
    for r, p in zip(rows, clf.p_decline(prompts) if "request" in clf.heads else [None] * len(rows)):
        if p is not None:
            r["p_decline"] = round(p, 4)
            r["decline"] = p > 0.5  # centred on the classifier's threshold
    answered = [r for r in rows if "response" in r]
    if answered:
        for r, p in zip(answered, clf.p_refuses([r["prompt"] for r in answered],
                                                [r["response"] for r in answered])):
            r["p_refuses"] = round(p, 4)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        flagged = sum(bool(r.get("decline")) for r in rows)
        print(f"cai classify: {flagged} of {len(rows)} requests flagged to decline; "
              f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def add_train_classifier(train_sub) -> None:
    from cai.train.classifier import ClassifierConfig

    p = train_sub.add_parser("classifier", help="the constitutional classifier: request and "
                                                "answer heads on the policy's features")
    p.add_argument("--config", help="YAML file with any of the options below")
    cfgmod.add_arguments(p, ClassifierConfig)
    p.set_defaults(func=cmd_train_classifier)


def add_classify(sub) -> None:
    p = sub.add_parser("classify", help="apply a constitutional classifier: P(decline) of each "
                                        "prompt, P(refuses) of each response")
    p.add_argument("--model", required=True, help="classifier folder (`cai train classifier`)")
    p.add_argument("--prompts", required=True, help=".jsonl with prompt (and optional response)")
    p.add_argument("--out", help="write the rows with their scores here (default: print them)")
    p.set_defaults(func=cmd_classify)
