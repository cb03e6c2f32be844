"""`cai pipeline run|status`: the whole method from one YAML (`cai.pipeline`)."""

from __future__ import annotations


def cmd_pipeline_run(args) -> int:
    from cai.pipeline.stages import Pipeline

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
    from cai.pipeline.stages import Pipeline

    rows = Pipeline(args.file).status()
    width = max(len(r["stage"]) for r in rows)
    for r in rows:
        print(f"{r['stage']:<{width}}  {r['status']:<8} {r['folder']}"
              + (f"  (changed: {r['why']})" if r["why"] else ""))
    return 0


def add_parser(sub) -> None:
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
