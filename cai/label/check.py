"""`cai label --check`: how good is a labeler? Accuracy and calibration on pairs whose better
response is known (the project's set: data/label_check.jsonl)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tqdm.auto import tqdm

from cai.foundation.errors import CaiError
from cai.foundation.inputs import objects_with_ids, require_text, unique_ids
from cai.foundation.model_store import DEFAULT_MODEL
from cai.foundation.options import as_dict
from cai.generation import Generator
from cai.label.config import LabelConfig
from cai.label.job import make_engines
from cai.scoring.labels import (
    accuracy,
    brier_score,
    ensemble,
    expected_calibration_error,
    position_bias_rate,
)
from cai.scoring.preference import Feedback, load_inputs, score


def load_check(spec: str) -> list[dict]:
    """Rows `{"id", "prompt", "better", "worse", "kind"?}` of a labeler quality-check file."""
    path = Path(spec)
    rows, problems = objects_with_ids(path, "check")
    items = [(n, obj) for n, obj in rows
             if all([require_text(obj, k, path, n, problems)
                     for k in ("prompt", "better", "worse")])]
    return unique_ids(path, items, problems)



def run_check(cfg: LabelConfig, labeler: Generator | None = None) -> dict:
    """Score pairs with a known better response; accuracy, ECE and Brier score of the labels.

    Each pair is shown with the better response first or second at random (seeded per id), so
    a labeler that always answers one position scores about 50% even without debiasing.
    """
    constitution, pool, templates = load_inputs(cfg.constitution, cfg.principle_ids,
                                                cfg.prompts_dir)
    rows = load_check(cfg.check)
    if cfg.limit is not None:
        rows = rows[:cfg.limit]
    started = time.time()
    _, labeler = make_engines(cfg, False, None, labeler)
    feedback = Feedback(constitution, templates, cfg.few_shot, cfg.cot, cfg.seed)
    tasks = []
    for r in rows:
        better_first = random.Random(f"{cfg.seed}:check:{r['id']}").random() < 0.5
        first, second = (r["better"], r["worse"]) if better_first else (r["worse"], r["better"])
        tasks.append({"key": r["id"], "prompt": r["prompt"], "first": first, "second": second,
                      "better_first": better_first})
    results = []
    bar = tqdm(total=len(tasks), desc="check", unit="pair", dynamic_ncols=True)
    try:
        for begin in range(0, len(tasks), cfg.chunk_size):
            chunk = tasks[begin:begin + cfg.chunk_size]
            results += score(labeler, feedback, chunk, pool, cfg.scoring(), bar.set_postfix_str)
            bar.update(len(chunk))
    finally:
        bar.close()
    scored = []
    for r, task, (votes, why) in zip(rows, tasks, results):
        if votes is None:
            scored.append({"id": r["id"], "skipped": why})
            continue
        p = ensemble([v["p_first"] for v in votes])
        scored.append({"id": r["id"], "kind": r.get("kind"), "better_first": task["better_first"],
                       "p_better": p if task["better_first"] else 1.0 - p, "votes": votes})
    ok = [s for s in scored if "p_better" in s]
    if not ok:
        raise CaiError(f"{cfg.check}: no pair fits the labeler's context")
    ps = [s["p_better"] for s in ok]
    kinds = sorted({s["kind"] for s in ok if s["kind"]})
    summary = {
        "check": cfg.check, "labeler": str(cfg.labeler.model or DEFAULT_MODEL),
        "labeler_engine": cfg.labeler.engine, "constitution": constitution.name,
        "pairs": len(ok), "skipped": len(scored) - len(ok),
        "accuracy": round(accuracy(ps), 4), "ece": round(expected_calibration_error(ps), 4),
        "brier": round(brier_score(ps), 4),
        "mean_confidence": round(sum(max(p, 1 - p) for p in ps) / len(ps), 4),
        "position_bias_rate": position_bias_rate([v for s in ok for v in s["votes"]]),
        "accuracy_by_kind": {k: round(accuracy([s["p_better"] for s in ok if s["kind"] == k]), 4)
                             for k in kinds},
        "settings": {**{k: getattr(cfg, k) for k in ("principles", "debias", "cot", "few_shot",
                                                     "seed", "principle_ids")},
                     "labeler_dtype": cfg.labeler.dtype},
        "wall_seconds": round(time.time() - started, 1),
    }
    if summary["position_bias_rate"] is not None:
        summary["position_bias_rate"] = round(summary["position_bias_rate"], 4)
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "check.json").write_text(json.dumps(
            {"summary": summary, "config": as_dict(cfg), "rows": scored}, indent=2,
            ensure_ascii=False) + "\n")
    return summary
