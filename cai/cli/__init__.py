"""The `cai` command: parses options and hands each command to one function. Nothing else.

One module per command group adds its parsers and holds its handlers: `constitution`, `jobs`
(revise, label, contrast, eval), `records`, `train` (train, score, export) and `pipeline`.

User mistakes (`CaiError`) and what the system refuses (`OSError`: permission denied, disk full)
print as one line on stderr with exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from cai.cli import classify, constitution, jobs, pipeline, records, train
from cai.foundation.errors import CaiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cai", description="Constitutional AI toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    constitution.add_parser(sub)
    jobs.add_revise(sub)
    records.add_parser(sub)
    jobs.add_label(sub)
    jobs.add_contrast(sub)
    classify.add_train_classifier(train.add_train(sub))
    classify.add_classify(sub)
    train.add_score(sub)
    jobs.add_eval(sub)
    pipeline.add_parser(sub)
    train.add_export(sub)
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
