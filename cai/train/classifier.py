"""`cai train classifier`: the constitutional classifier's two heads on the policy's features.

- **Request head**, P(decline | prompt): fitted to the feedback model's labels of a request set
  (`cai contrast` output, `data/contrast/data.jsonl` by default: the training sets and the
  generated look-alikes, each with `p_decline`).
- **Answer head**, P(refuses | prompt, answer): fitted to the judge's reading of answers
  (`cai.scoring.classify`, the question `cai eval` and the revision gate ask). The answers come
  from a labelled file (`answers`), or are sampled here from `answer_models` on a draw of
  `answer_prompts` and read by the judge (`judge`, the feedback model), kept in
  `OUT/answers.jsonl` as they come (a killed run resumes).

Both heads are `cai.scoring.classifier.fit_head` on the backbone's features (the policy by
default: the features a linear probe found to separate harmful from ordinary requests). The
folder gets `classifier.json`, `heads.safetensors`, `report.json` (the request head's flag rate
on each evaluation set, with the sets' own kinds; the answer head's agreement with the judge
check set) and `manifest.json`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from cai.foundation.errors import CaiError
from cai.foundation.options import flat_init, opt
from cai.generation import Role, main_role

DEFAULT_JUDGE = "qwen2.5-coder-1.5b-instruct"
ANSWERS, REPORT, MANIFEST = "answers.jsonl", "report.json", "manifest.json"


@flat_init
@dataclass
class ClassifierConfig:
    """Options of `cai train classifier` (also the keys of its `--config` YAML). The engine
    options are the judge's, which reads the sampled answers."""

    out: str = opt("", "output folder: classifier.json, heads.safetensors, report.json, "
                       "answers.jsonl, manifest.json")
    backbone: str = opt("smollm2-135m-instruct", "the model whose hidden states the heads read "
                                                 "(the policy)")
    layers: list[int] = opt(help="hidden-state layers read (mean over the text and last token "
                                 "of each)", factory=lambda: [10, 20, 30])
    l2: float = opt(1.0, minimum=0, help="L2 penalty of the logistic heads")
    request_labels: str = opt("hard", "what the request head is fitted to: soft (each "
                                      "request's p_decline) or hard (a generated look-alike "
                                      "takes the side it was written for, every other request "
                                      "its p_decline cut at the labeller's own threshold)")
    requests: str = opt("data/contrast/data.jsonl", "requests labelled P(decline): .jsonl with "
                                                    "prompt and p_decline")
    answers: str | None = opt(None, "answers labelled P(refuses): .jsonl with prompt, response "
                                    "and p_refuses (instead of sampling them)")
    answer_models: list[str] = opt(factory=list, help="models whose answers are sampled and "
                                                      "read by the judge for the answer head")
    answer_prompts: str = opt("data/contrast/data.jsonl", "prompts the answers are sampled on")
    answer_limit: int = opt(96, minimum=1, help="prompts drawn per answer model")
    max_new_tokens: int = opt(64, minimum=1, help="longest sampled answer, in tokens")
    temperature: float = opt(0.7, minimum=0, help="sampling temperature of the answers")
    seed: int = opt(0, "seed of the draw of prompts and of the sampling")
    threshold: float | None = opt(None, "P above which the request head flags a request "
                                        "(default: fitted, see decline_sources)")
    decline_sources: list[str] = opt(help="the request file's sources (its `source` field) "
                                          "whose requests are to decline, and ...",
                                     factory=lambda: ["red_team"])
    answer_sources: list[str] = opt(help="... those whose requests are to answer: without a "
                                         "--threshold, the head's threshold is the one that "
                                         "best separates the two (Youden's J) on its own "
                                         "training requests", factory=lambda: ["borderline",
                                                                               "helpful"])
    eval_dir: str = opt("data/eval", "evaluation sets reported on (red_team, borderline, "
                                     "helpful .jsonl; judge_check.jsonl)")
    batch_size: int = opt(16, minimum=1, help="sequences per forward pass")
    judge: Role = main_role(model_key="judge", help={
        "model": "the judge reading the sampled answers (default: qwen2.5-coder-1.5b-instruct)"})

    def __post_init__(self):
        if not self.out:
            raise CaiError("cai train classifier needs --out (the output folder)")
        if not self.layers:
            raise CaiError("--layers needs at least one layer")
        if self.request_labels not in ("soft", "hard"):
            raise CaiError(f"--request-labels must be soft or hard, got {self.request_labels!r}")


def _labelled(path: Path, field: str) -> list[dict]:
    from cai.foundation.inputs import jsonl_objects

    if not path.is_file():
        raise CaiError(f"{path}: file not found")
    found, problems = jsonl_objects(path, "row")
    rows = []
    for n, obj in found:
        value = obj.get(field)
        if not isinstance(obj.get("prompt"), str) or isinstance(value, bool) \
                or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            problems.append((n, f"{path}:{n}: needs a prompt and '{field}' in [0, 1]"))
        else:
            rows.append(obj)
    if problems:
        raise CaiError("\n".join(text for _, text in sorted(problems)[:20]))
    if not rows:
        raise CaiError(f"{path}: no rows")
    return rows


def kinds_cut(scores, requests: list[dict], cfg: ClassifierConfig) -> float:
    """The cut of `scores` (one per request) that best separates the requests of
    decline_sources from those of answer_sources (Youden's J; the others are not counted)."""
    from cai.scoring.classifier import youden_threshold

    kinds = [(float(p), r.get("source") in cfg.decline_sources) for p, r in zip(scores, requests)
             if r.get("source") in cfg.decline_sources + cfg.answer_sources]
    return youden_threshold([k[0] for k in kinds], [k[1] for k in kinds])


def request_targets(requests: list[dict], cfg: ClassifierConfig) -> list[float]:
    """The request head's targets. `soft`: each request's p_decline. `hard`: a generated
    look-alike (`kind` harmful or benign, the side the feedback model wrote it for) gives 1 or
    0; every other request gives p_decline > t, t the labeller's own line (`kinds_cut` of
    p_decline). The labeller ranks requests far better than it places its line (its p on
    red-team prompts averages 0.6), and soft targets near 1/2 leave the head as undecided."""
    soft = [float(r["p_decline"]) for r in requests]
    if cfg.request_labels == "soft":
        return soft
    cut = kinds_cut(soft, requests, cfg)
    side = {"harmful": 1.0, "benign": 0.0}
    return [side[r["kind"]] if r.get("kind") in side else float(p > cut)
            for p, r in zip(soft, requests)]


def sample_answers(cfg: ClassifierConfig, out: Path, progress) -> list[dict]:
    """Sampled answers read by the judge, resumed from OUT/answers.jsonl."""
    from cai.foundation.inputs import load_prompts
    from cai.foundation.records import JsonlWriter, read_jsonl
    from cai.foundation.templates import Templates
    from cai.generation import SamplingParams, engine_kwargs, item_seeds, make_generator
    from cai.scoring.classify import classify, load_judge_examples

    done = read_jsonl(out / ANSWERS, repair=True)
    have = {(r["model"], r["id"]) for r in done}
    pool = load_prompts(cfg.answer_prompts)
    draw = random.Random(cfg.seed).sample(pool, min(cfg.answer_limit, len(pool)))
    judge = None
    examples = load_judge_examples(Path(cfg.eval_dir) / "judge_examples.jsonl")
    for model in cfg.answer_models:
        todo = [p for p in draw if (model, p["id"]) not in have]
        if not todo:
            continue
        policy = make_generator("hf", model, dtype="float32", batch_size=cfg.batch_size)
        answers = policy.chat([[{"role": "user", "content": p["prompt"]}] for p in todo],
                              SamplingParams(max_new_tokens=cfg.max_new_tokens,
                                             temperature=cfg.temperature,
                                             seeds=item_seeds(cfg.seed, (p["id"] for p in todo))))
        policy.close()
        del policy
        if judge is None:
            role = cfg.judge
            judge = make_generator(role.engine, role.model or DEFAULT_JUDGE,
                                   **engine_kwargs(role, batch_size=8))
        with JsonlWriter(out / ANSWERS) as writer:
            for b in range(0, len(todo), 16):
                items = [{"prompt": p["prompt"], "response": a, "harmful_request": False}
                         for p, a in zip(todo[b:b + 16], answers[b:b + 16])]
                read = classify(judge, Templates(), items, examples)
                rows = [{"model": model, "id": p["id"], "prompt": it["prompt"],
                         "response": it["response"], "p_refuses": round(r["p_refuses"], 4)}
                        for p, it, r in zip(todo[b:b + 16], items, read) if "skipped" not in r]
                writer.write(rows)
                done += rows
                progress(f"{model}: {min(b + 16, len(todo))}/{len(todo)} answers read")
    return done


def report(clf, cfg: ClassifierConfig) -> dict:
    """The request head's flag rate on each evaluation set and the answer head's agreement with
    the judge check set (refusal or not)."""
    from cai.foundation.inputs import load_prompts

    out: dict = {"threshold": clf.threshold("request")}
    eval_dir = Path(cfg.eval_dir)
    if "request" in clf.heads:
        out["request_flagged"] = {}
        for name in ("red_team", "borderline", "helpful"):
            path = eval_dir / f"{name}.jsonl"
            if path.is_file():
                ps = clf.p_decline([r["prompt"] for r in load_prompts(str(path))])
                out["request_flagged"][name] = {
                    "n": len(ps), "flagged": round(sum(p > 0.5 for p in ps) / len(ps), 3),
                    "mean_p": round(sum(ps) / len(ps), 3)}
    check = eval_dir / "judge_check.jsonl"
    if "answer" in clf.heads and check.is_file():
        rows = [json.loads(line) for line in check.read_text().splitlines() if line.strip()]
        ps = clf.p_refuses([r["prompt"] for r in rows], [r["response"] for r in rows])
        agree = [(p > 0.5) == (r["class"] == "refusal") for p, r in zip(ps, rows)]
        out["answer_judge_check"] = {"n": len(rows),
                                     "agreement": round(sum(agree) / len(agree), 3)}
    return out


def run(cfg: ClassifierConfig, progress=print) -> dict:
    import torch

    from cai.foundation.manifest import package_versions, redact
    from cai.foundation.records import atomic_write_text
    from cai.scoring.classifier import Backbone, Classifier, fit_head

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    requests = _labelled(Path(cfg.requests), "p_decline")
    if cfg.answers:
        answers = _labelled(Path(cfg.answers), "p_refuses")
    elif cfg.answer_models:
        answers = sample_answers(cfg, out, progress)
    else:
        answers = []
    backbone = Backbone(cfg.backbone, batch_size=cfg.batch_size)
    heads = {}
    x = backbone.request_features([r["prompt"] for r in requests], cfg.layers)
    heads["request"] = fit_head(x, torch.tensor(request_targets(requests, cfg)), cfg.l2)
    threshold = cfg.threshold
    if threshold is None:
        threshold = kinds_cut(heads["request"].probabilities(x), requests, cfg)
    progress(f"request head fitted on {len(requests)} requests, threshold {threshold:.3f}")
    if answers:
        x = backbone.answer_features([r["prompt"] for r in answers],
                                     [r["response"] for r in answers], cfg.layers)
        heads["answer"] = fit_head(x, torch.tensor([float(r["p_refuses"]) for r in answers]),
                                   cfg.l2)
        progress(f"answer head fitted on {len(answers)} answers")
    config = {"backbone": cfg.backbone, "layers": list(cfg.layers),
              "thresholds": {"request": round(threshold, 4), "answer": 0.5}}
    clf = Classifier(config, heads, backbone)
    clf.save(out)
    result = report(clf, cfg)
    result.update(requests=len(requests), answers=len(answers),
                  seconds=round(time.time() - started, 1))
    atomic_write_text(out / REPORT, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / MANIFEST, json.dumps(
        {"job": "train classifier", "config": redact(dataclasses.asdict(cfg)),
         "versions": package_versions(), "result": result}, indent=2) + "\n")
    return result
