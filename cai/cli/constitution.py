"""`cai constitution check|schema|show|diff|import|try`: the commands that work on constitution
files, and their options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cai.foundation import options as cfgmod


def _annotation(text: str, prop: bool = False) -> str:
    """Text escaped for a GitHub Actions workflow command (a property value also escapes : ,)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def cmd_constitution_check(args) -> int:
    import json

    from cai.constitution import ConstitutionError, load

    found = []
    for path in args.files:
        try:
            c = load(path)
        except ConstitutionError as e:
            found += e.problems
            for p in e.problems if args.format != "json" else ():
                if args.format == "github":  # stdout: where GitHub reads workflow commands
                    print(f"::error file={_annotation(p.path, True)}"
                          + (f",line={p.line}" if p.line else "") + f"::{_annotation(p.message)}")
                else:
                    print(p, file=sys.stderr)
            continue
        if args.format == "text":
            print(f"{path}: ok ({len(c.critique_revision)} critique/revision, "
                  f"{len(c.preference)} preference, {len(c.examples)} examples)")
    if args.format == "json":
        print(json.dumps([{"file": p.path, "line": p.line, "field": p.field,
                           "message": p.message} for p in found], indent=2))
    return 2 if found else 0


def cmd_constitution_schema(args) -> int:
    from cai.constitution import schema
    from cai.schemas import dumps

    sys.stdout.write(dumps(schema()))
    return 0


def cmd_constitution_diff(args) -> int:
    import textwrap

    from cai.constitution import load
    from cai.constitution.diff import diff, format_diff
    from cai.pipeline.spec import default_pipeline
    from cai.pipeline.stages import Pipeline

    changes = diff(load(args.old), load(args.new))
    print(f"{args.old} -> {args.new}: " + (f"{len(changes)} change(s)" if changes else
                                          "the same principles and examples"))
    for line in format_diff(changes):
        print(line)
    if args.pipeline is None and not default_pipeline().is_file():
        return 0
    pipe = Pipeline(args.pipeline)
    reruns = pipe.rerun_by_edit(Path(args.old).read_bytes(), Path(args.new).read_bytes())
    text = (f"Pipeline {pipe.path} (constitution "
            f"{pipe.spec.constitution}): an edit like this reruns "
            + (", ".join(reruns) if reruns else "no stage (the files are byte for byte the same)")
            + ("; stages are keyed by the file's bytes, so comments and layout count too"
               if reruns and not changes else "") + ".")
    print("\n" + textwrap.fill(text, 100))
    return 0


def cmd_constitution_show(args) -> int:
    import textwrap

    from cai.constitution import load

    c = load(args.file)
    print(f"{c.name}: {c.description}\n")
    rows = [("critique_revision", p.id, f"critique: {p.critique}\nrevision: {p.revision}")
            for p in c.critique_revision]
    rows += [("preference", p.id, p.question) for p in c.preference]
    width = max(len(r[1]) for r in rows)
    section = None
    for kind, pid, text in rows:
        if kind != section:
            section = kind
            print(f"== {kind} ==")
        lines = [w for part in text.split("\n") for w in textwrap.wrap(part, 100 - width)]
        print(f"{pid:<{width}}  {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<{width}}  {line}")
    print(f"\n{len(c.examples)} few-shot examples")
    return 0


def cmd_constitution_import(args) -> int:
    from cai.constitution import import_json, parse, to_yaml

    data = import_json(args.file, name=args.name)
    text = to_yaml(data)
    parse(text, args.out)  # what we write must load back
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}: {len(data['critique_revision'])} principles, "
          f"{len(data.get('examples', []))} examples")
    return 0


def cmd_constitution_try(args) -> int:
    from cai.revise.config import ReviseConfig
    from cai.revise.preview import format_table, try_principles

    options = cfgmod.overrides(args, ReviseConfig)
    # the gate judges revisions when a feedback model is named (or --gate asks for it)
    options["gate"] = args.gate if args.gate is not None else bool(args.feedback)
    # `prompts` and `out` are what a whole `cai revise` run reads and writes; a try has neither
    cfg = cfgmod.build(ReviseConfig, {**options, "constitution": args.file, "prompts": "-",
                                      "out": "-"}, "options")
    ids = None if args.principle == "all" else [i for i in args.principle.split(",") if i]
    for line in format_table(try_principles(cfg, args.prompt, ids)):
        print(line)
    return 0


def add_parser(sub) -> None:
    """`cai constitution` and its actions, on the top-level subparsers `sub`."""
    from cai.revise.config import ReviseConfig

    con = sub.add_parser("constitution", help="check, show, diff, import or try a constitution")
    con_sub = con.add_subparsers(dest="action", required=True)
    p = con_sub.add_parser("check", help="validate files; one line per problem, exit 2 if any")
    p.add_argument("files", nargs="+")
    p.add_argument("--format", choices=("text", "github", "json"), default="text",
                   help="text: file:line: message lines; github: ::error annotations for GitHub "
                        "Actions; json: a list of {file, line, field, message}")
    p.set_defaults(func=cmd_constitution_check)
    p = con_sub.add_parser("schema", help="print the JSON Schema of constitution files (what "
                                          "constitutions/constitution.schema.json holds)")
    p.set_defaults(func=cmd_constitution_schema)
    p = con_sub.add_parser("show", help="the principles as a table")
    p.add_argument("file")
    p.set_defaults(func=cmd_constitution_show)
    p = con_sub.add_parser("diff", help="principles added, removed or reworded, and the "
                                        "pipeline stages the edit reruns")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--pipeline", help="pipeline YAML whose stages are checked (default: "
                                      "configs/pipeline.yaml in the working directory, else "
                                      "cai's own)")
    p.set_defaults(func=cmd_constitution_diff)
    p = con_sub.add_parser("import", help="convert the public CAI JSON layout to our YAML")
    p.add_argument("file")
    p.add_argument("-o", "--out", required=True, help="YAML file to write")
    p.add_argument("--name", help="constitution name (default: from the file name)")
    p.set_defaults(func=cmd_constitution_import)
    p = con_sub.add_parser("try", help="one critique-revision round per principle on one "
                                       "prompt's answer, as a table (with the gate's verdicts)")
    p.add_argument("file")
    p.add_argument("--prompt", required=True)
    p.add_argument("--principle", default="all",
                   help="'all' (default) or comma-separated critique_revision ids")
    p.add_argument("--feedback-model", dest="feedback", help="same as --feedback")
    p.add_argument("--gate", action=argparse.BooleanOptionalAction, default=None,
                   help="judge each revision with the gate (default: when a feedback model is "
                        "named)")
    cfgmod.add_arguments(p, ReviseConfig, skip=(
        "prompts", "out", "constitution", "principles", "rounds", "limit", "shard", "chunk_size",
        "prompt_column", "helpful_prompts", "helpful_ratio", "gate"))
    p.set_defaults(func=cmd_constitution_try)
