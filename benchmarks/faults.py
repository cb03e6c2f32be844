"""Fault injection: every kind of job killed with SIGKILL at random points, rerun to the end, and
compared with an uninterrupted run of the same command.

Jobs (on a tiny random model, so a run takes seconds): `revise`, `label`, `eval`, `train sft`,
`train dpo` and `pipeline run`. For each, one uninterrupted reference run; then the same command
is started, killed, and rerun (with `--resume` for training once a checkpoint exists) until it
finishes. Each kill comes at one of three moments, chosen at random:

- `append`: the instant a record file (`data.jsonl`, `answers.jsonl`, `judgments.jsonl`) grows;
- `checkpoint`: the instant a `checkpoint-N` folder appears, before its save has finished;
- `time`: a uniform random time within the reference run's duration.

Then the records are checked against the reference: the same ids with the same content (timing
fields aside), no duplicate id, no line that is not JSON; and training losses (`trainer_state.json`,
logged every step) equal to 1e-6. Prints one JSON summary: kills (by moment), resumes, records
checked, mismatches (must be 0, each one listed).

    python benchmarks/faults.py                 # about 25 kills, about 10 minutes
    python benchmarks/faults.py --kills-per-job 6 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"seconds", "elapsed", "started", "finished", "time", "duration"}  # not content
RECORD_FILES = ("data.jsonl", "answers.jsonl", "judgments.jsonl", "pairs.jsonl", "skipped.jsonl")


# --------------------------------------------------------------------------------------------
# A tiny model and the jobs


def tiny_model(out: Path) -> Path:
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny model
    from tiny import write_tiny_model

    from cai.foundation.model_store import resolve

    return write_tiny_model(AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct")), out,
                            max_positions=2048)


def write_inputs(work: Path, model: Path) -> dict:
    import yaml

    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i:02d}", "prompt": f"How do I do thing "
                                           f"{i} well?"}) + "\n" for i in range(12)))
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"d{i:02d}", "prompt": f"Question {i}?",
                                         "chosen": f"A careful answer {i}.",
                                         "rejected": f"No {i}.", "p_chosen": 0.8}) + "\n"
                             for i in range(24)))
    convs = work / "sft.jsonl"
    convs.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Tell me fact {i}."},
        {"role": "assistant", "content": f"Fact {i} is that {i} + 1 = {i + 1}."}]}) + "\n"
        for i in range(32)))
    small = {"training.max_steps": 4, "training.per_device_train_batch_size": 2,
             "training.gradient_accumulation_steps": 1, "training.save_steps": 1,
             "training.logging_steps": 1, "training.report_to": "none",
             "data.eval_fraction": 0.0, "data.max_length": 96}
    spec = {
        "workdir": "work", "model": str(model),
        "constitution": str(ROOT / "constitutions" / "minimal.yaml"),
        "revise": {"prompts": str(prompts), "limit": 4, "rounds": 1, "max_new_tokens": 6,
                   "few_shot": 0, "chunk_size": 1},
        "sft": {"config": str(ROOT / "configs" / "sft.yaml"),
                "set": {**small, "data.packing": False}},
        "label": {"prompts": str(prompts), "limit": 4, "max_new_tokens": 6, "few_shot": 0,
                  "chunk_size": 1},
        "dpo": {"config": str(ROOT / "configs" / "dpo.yaml"),
                "set": {**small, "training.eval_strategy": "no"}},
        "eval": {"judge": str(model), "limit": 2, "max_new_tokens": 6, "chunk_size": 1},
    }
    pipeline = work / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(spec, sort_keys=False))
    return {"prompts": prompts, "pairs": pairs, "convs": convs, "pipeline": pipeline}


def jobs(model: Path, inputs: dict) -> dict:
    """name -> (args given the output folder, files with records, training?)."""
    m = str(model)
    train = ["--model.name", m, "--data.eval_fraction", "0", "--data.max_length", "96",
             "--lora.r", "4", "--lora.alpha", "8", "--training.max_steps", "12",
             "--training.save_steps", "2", "--training.logging_steps", "1",
             "--training.per_device_train_batch_size", "2",
             "--training.gradient_accumulation_steps", "1", "--training.eval_strategy", "no",
             "--training.report_to", "none", "--training.disable_tqdm", "true"]
    return {
        "revise": (lambda out: ["revise", "--model", m, "--prompts", str(inputs["prompts"]),
                                "--rounds", "2", "--max-new-tokens", "8", "--few-shot", "0",
                                "--chunk-size", "1", "--out", str(out)],
                   ("data.jsonl",), False),
        "label": (lambda out: ["label", "--policy", m, "--labeler", m, "--prompts",
                               str(inputs["prompts"]), "--max-new-tokens", "8", "--few-shot",
                               "0", "--chunk-size", "1", "--out", str(out)],
                  ("data.jsonl", "skipped.jsonl"), False),
        "eval": (lambda out: ["eval", "--model", f"a={m}", "--judge", m, "--limit", "4",
                              "--max-new-tokens", "6", "--chunk-size", "1", "--ability-limit",
                              "4", "--resamples", "20", "--out", str(out)],
                 ("answers.jsonl", "judgments.jsonl"), False),
        "train_sft": (lambda out: ["train", "sft", str(ROOT / "configs" / "sft.yaml"), *train,
                                   "--data.path", str(inputs["convs"]), "--data.packing",
                                   "false", "--training.output_dir", str(out)], (), True),
        "train_dpo": (lambda out: ["train", "dpo", str(ROOT / "configs" / "dpo.yaml"), *train,
                                   "--data.path", str(inputs["pairs"]),
                                   "--training.output_dir", str(out)], (), True),
        "pipeline": (lambda out: ["pipeline", "run", str(out / "pipeline.yaml")],
                     ("work/revise/data.jsonl", "work/label/data.jsonl",
                      "work/eval/answers.jsonl", "work/eval/judgments.jsonl"), False),
    }


# --------------------------------------------------------------------------------------------
# Running and killing


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "cai.cli", *args]


def run_to_end(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(command(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1800)


def sizes(folder: Path, files) -> dict:
    return {f: (folder / f).stat().st_size if (folder / f).exists() else 0 for f in files}


def unfinished_checkpoints(folder: Path) -> set[Path]:
    """Checkpoint folders whose save has not finished (yet)."""
    return {p for root in [folder, *folder.glob("work/*/model")]
            for p in root.glob("checkpoint-*")
            if p.is_dir() and not (p / "trainer_state.json").exists()}


def killed_run(args, cwd, env, out: Path, files, moment: str, budget: float) -> dict:
    """Start the command, SIGKILL it at `moment`; returns what happened."""
    watched = list(files)
    log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads could block the job
    proc = subprocess.Popen(command(args), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=log, text=True)
    start, before = time.monotonic(), sizes(out, watched)
    left = unfinished_checkpoints(out)  # torn by an earlier kill: not this run's save
    deadline = start + (random.uniform(0.2, 0.9) * budget if moment == "time"
                        else budget * 3 + 30)
    hit = False
    while proc.poll() is None and time.monotonic() < deadline:
        if moment == "append" and sizes(out, watched) != before:
            hit = True
            break
        if moment == "checkpoint" and unfinished_checkpoints(out) - left:
            hit = True
            break
        time.sleep(0.002)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return {"killed": True, "moment": moment, "hit": hit or moment == "time",
                "at": round(time.monotonic() - start, 2)}
    log.seek(0)
    err = log.read()
    return {"killed": False, "moment": moment, "rc": proc.returncode, "stderr": err[-500:]}


# --------------------------------------------------------------------------------------------
# Checking


def read_records(path: Path, problems: list, label: str, run: Path) -> dict:
    """id -> record, with the run's own folder written as <RUN> (the two runs live in different
    folders, and records name the models they made there)."""
    out = {}
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.replace(str(run), "<RUN>"))
        except ValueError:
            problems.append(f"{label}: line {n} is not JSON")
            continue
        key = str(row.get("id", n))
        if key in out:
            problems.append(f"{label}: duplicate id {key}")
        out[key] = {k: v for k, v in row.items() if k not in VOLATILE}
    return out


def losses(folder: Path) -> list[float]:
    state = folder / "trainer_state.json"
    if not state.exists():
        return []
    return [h["loss"] for h in json.loads(state.read_text())["log_history"] if "loss" in h]


def compare(ref: Path, got: Path, files, training: bool) -> tuple[int, list[str]]:
    problems, checked = [], 0
    for f in files:
        a = read_records(ref / f, problems, f"reference {f}", ref)
        b = read_records(got / f, problems, f, got)
        checked += len(b)
        if a.keys() != b.keys():
            problems.append(f"{f}: ids differ ({len(a)} vs {len(b)}; missing "
                            f"{sorted(a.keys() - b.keys())[:3]}, extra "
                            f"{sorted(b.keys() - a.keys())[:3]})")
        for key in sorted(a.keys() & b.keys()):
            if a[key] != b[key]:
                diff = [k for k in a[key].keys() | b[key].keys() if a[key].get(k) != b[key].get(k)]
                problems.append(f"{f}: record {key} differs in {sorted(diff)[:4]}")
    folders = [("", ref, got)] if training else [
        (s, ref / "work" / s / "model", got / "work" / s / "model") for s in ("sft", "dpo")]
    for name, a, b in folders:
        if not (training or a.exists()):
            continue
        la, lb = losses(a), losses(b)
        checked += len(lb)
        if len(la) != len(lb) or any(abs(x - y) > 1e-6 for x, y in zip(la, lb)):
            problems.append(f"{name or 'training'} losses differ: {la[:4]} vs {lb[:4]}")
    return checked, problems


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills-per-job", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="comma-separated job names")
    parser.add_argument("--keep", help="keep the work folder here")
    args = parser.parse_args(argv)
    random.seed(args.seed)
    base = Path(args.keep or tempfile.mkdtemp(prefix="cai-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    model = tiny_model(base / "tiny")
    inputs = write_inputs(base, model)
    chosen = jobs(model, inputs)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    summary = {"jobs": {}, "kills": 0, "kills_by_moment": {}, "resumes": 0,
               "records_checked": 0, "mismatches": 0, "problems": []}
    for name, (make_args, files, training) in chosen.items():
        ref, got = base / f"{name}-ref", base / f"{name}-faulted"
        for folder in (ref, got):
            shutil.rmtree(folder, ignore_errors=True)
            if name == "pipeline":
                folder.mkdir()
                shutil.copy(inputs["pipeline"], folder / "pipeline.yaml")
        start = time.monotonic()
        r = run_to_end(make_args(ref), base, env)
        duration = time.monotonic() - start
        if r.returncode != 0:
            summary["problems"].append(f"{name}: reference run failed: {r.stderr[-300:]}")
            summary["mismatches"] += 1
            continue
        kills, resumes, events = 0, 0, []
        while True:
            args_now = make_args(got)
            if training and (got / "train_results.json").exists():
                break  # finished: the last kill came after the end
            if training and any((p / "trainer_state.json").exists()
                                for p in got.glob("checkpoint-*")):
                args_now = [*args_now, "--resume"]  # what a user does: there is a checkpoint
            if kills >= args.kills_per_job:
                r = run_to_end(args_now, base, env)
                resumes += 1
                if r.returncode != 0:
                    summary["problems"].append(f"{name}: final run failed: {r.stderr[-300:]}")
                break
            # a kill at a random time often lands before the first write: aim at the writes
            moments = ["append", "append", "time"] if not training else \
                ["checkpoint", "checkpoint", "time"]
            if name == "pipeline":
                moments = ["append", "checkpoint", "time"]
            event = killed_run(args_now, base, env, got, files, random.choice(moments),
                               duration)
            events.append(event)
            resumes += 1
            if event["killed"]:
                kills += 1
                summary["kills_by_moment"][event["moment"]] = \
                    summary["kills_by_moment"].get(event["moment"], 0) + 1
            else:
                if event["rc"] != 0:
                    summary["problems"].append(f"{name}: a rerun failed: {event['stderr']}")
                break  # it finished before the kill came
        checked, problems = compare(ref, got, files, training)
        summary["jobs"][name] = {"kills": kills, "reruns": resumes,
                                 "records_checked": checked, "mismatches": len(problems),
                                 "reference_seconds": round(duration, 1), "events": events}
        summary["kills"] += kills
        summary["resumes"] += resumes
        summary["records_checked"] += checked
        summary["mismatches"] += len(problems)
        summary["problems"] += [f"{name}: {p}" for p in problems]
    summary["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    summary["seed"] = args.seed
    print(json.dumps(summary, indent=1))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if summary["mismatches"] == 0 and not summary["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
