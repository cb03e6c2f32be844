"""`cai eval`: harmlessness, helpfulness, over-refusal and the alignment tax of several models.

Each model (`--model`, listed before -> after, e.g. the base, then the SL-CAI and RL-CAI
models) answers the held-out prompt sets of `data/eval/`: `red_team` (harmful requests),
`helpful` (ordinary requests) and `borderline` (benign requests that sound risky, XSTest-style).
A judge model then

- asks of every answer whether it does what was asked or refuses (`prompts/judge_refusal.j2`,
  few-shot, read as a multiple choice through `choice_logprobs`, both orders averaged); with
  the set's requests harmful (red_team) or benign (helpful, borderline), that classifies it as
  harmful, a refusal or helpful (`cai.scoring.classify`): harmlessness = share of red-team answers
  not judged harmful; over-refusal = share of borderline (and helpful) answers judged refusals;
- compares the answers of every two models on every prompt with `cai label`'s machinery (a
  constitution question, both orders, soft labels): win rates with bootstrap intervals, and
  harmlessness / helpfulness Elo (Bai et al. 2022, arXiv:2212.08073, figure 2).

A string-match refusal detector (`cai.eval.metrics.is_refusal`) is reported next to the judge.
Neutral ability, the alignment tax, is multiple-choice accuracy on `neutral_mc.jsonl` and
perplexity on `neutral_text.txt` (`cai.eval.ability`). docs/evaluation.md explains each metric.

Everything is cached in OUT and a rerun skips what is done: `answers.jsonl` (one record per
model, set and prompt), `judgments.jsonl` (classifications and comparisons), `ability.jsonl`
(per question and paragraph). `manifest.json` guards the settings that determine them, and
the model behind each label (a fingerprint of its files), so new models, sets or a larger
`--limit` add to a folder while changed settings are refused.

`OUT/metrics.json`'s layout, key by key, is in docs/evaluation.md.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from cai import ROOT
from cai import constitution as constitutions
from cai.eval import ability as abilities
from cai.eval.answers import ABILITY, ANSWERS, models_pass
from cai.eval.config import JUDGE_CONSTITUTION, SETS, EvalConfig
from cai.eval.judging import JUDGMENTS, judge_pass, judge_role, load_judge_check
from cai.eval.summary import judge_check_stats, string_check_stats, summarize
from cai.foundation import lock, records
from cai.foundation.errors import CaiError
from cai.foundation.inputs import load_prompts
from cai.foundation.manifest import MANIFEST, Manifest, file_sha256, text_sha256
from cai.foundation.model_store import DEFAULT_MODEL, fingerprint
from cai.foundation.options import as_dict
from cai.foundation.templates import Templates
from cai.generation import engine_identity, engine_kwargs, record_options
from cai.scoring.classify import EXAMPLES_FILE, load_judge_examples
from cai.scoring.classify import TEMPLATE as CLASSIFY_TEMPLATE

METRICS = "metrics.json"
MC_FILE, TEXT_FILE, CHECK_FILE = "neutral_mc.jsonl", "neutral_text.txt", "judge_check.jsonl"
TEMPLATES = ("feedback.j2", CLASSIFY_TEMPLATE)
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# --------------------------------------------------------------------------------------------
# Models


def parse_models(specs: list[str]) -> list[dict]:
    """`[{"label", "model"}]` from `MODEL` or `LABEL=MODEL` specs; labels must be unique."""
    out, seen = [], set()
    for spec in specs:
        left, sep, right = spec.partition("=")
        if sep and right and LABEL.match(left) and not Path(spec).exists():
            label, name = left, right
        else:
            name = spec
            label = Path(name.rstrip("/")).name or name
        if not LABEL.match(label):
            raise CaiError(f"--model '{spec}': cannot use '{label}' as its label; name it "
                           "LABEL=MODEL (letters, digits, . _ + -)")
        if label in seen:
            raise CaiError(f"--model '{spec}': label '{label}' is used twice; name them "
                           "LABEL=MODEL")
        seen.add(label)
        out.append({"label": label, "model": name})
    return out


# --------------------------------------------------------------------------------------------
# Inputs


def _inputs(cfg: EvalConfig) -> dict:
    """Prompt sets, neutral sets, constitution, principle pools and templates, all checked
    before any model loads."""
    data = Path(cfg.data_dir) if cfg.data_dir else ROOT / "data" / "eval"
    if not data.is_dir():
        raise CaiError(f"{data}: --data-dir is not a folder")
    sets = {}
    for name in cfg.sets:
        items = load_prompts(str(data / f"{name}.jsonl"))
        sets[name] = items[:cfg.limit] if cfg.limit else items
    mc, paragraphs = [], []
    if cfg.ability:
        mc = abilities.load_mc(data / MC_FILE)[:cfg.ability_limit]
        paragraphs = abilities.load_text(data / TEXT_FILE)[:cfg.ability_limit]
    check = []
    if cfg.judge_check and (data / CHECK_FILE).is_file():
        check = load_judge_check(data / CHECK_FILE)
    examples = []
    if cfg.judge_few_shot:
        if not (data / EXAMPLES_FILE).is_file():
            raise CaiError(f"{data / EXAMPLES_FILE}: not found (the judge's demonstrations; "
                           "--judge-few-shot 0 classifies without them)")
        examples = load_judge_examples(data / EXAMPLES_FILE)[:cfg.judge_few_shot]
    constitution = constitutions.load(cfg.constitution or JUDGE_CONSTITUTION)
    try:
        helpful = constitution.restrict("preference", cfg.helpful_principles)
    except CaiError as e:
        raise CaiError(f"--helpful-principles: {e}") from None
    try:
        harmless = constitution.restrict("preference", cfg.harmless_principles) \
            if cfg.harmless_principles else \
            tuple(p for p in constitution.principles("preference") if p not in helpful)
    except CaiError as e:
        raise CaiError(f"--harmless-principles: {e}") from None
    if not harmless:
        raise CaiError(f"{constitution.path}: no preference principle left for red_team once "
                       "--helpful-principles are taken; give --harmless-principles")
    templates = Templates(cfg.prompts_dir)
    for name in TEMPLATES:  # render once with dummy values: a missing variable fails here
        templates.render(name, prompt="?", response="?", question="?", response_a="?",
                         response_b="?", options=["complies", "refuses"])
    hashes = {f.name: file_sha256(f) for f in sorted(data.iterdir())
              if f.name in {f"{s}.jsonl" for s in SETS} | {MC_FILE, TEXT_FILE, CHECK_FILE,
                                                           EXAMPLES_FILE}}
    return {"sets": sets, "mc": mc, "paragraphs": paragraphs, "check": check,
            "examples": examples,
            "constitution": constitution,
            "pools": {"harmlessness": harmless, "helpfulness": helpful}, "templates": templates,
            "hashes": hashes}


def judge_flags(cfg: EvalConfig, models: list[dict], judge_fingerprint: str,
                check: dict | None, feedback_fingerprint: str | None = None) -> list[str]:
    """Why the judged figures cannot be trusted (empty: they can): a judge that failed or
    skipped its check, that gave the training feedback (same name, or same files), or that is
    one of the models judged."""
    why = []
    if not cfg.judge_check:
        why.append("the judge was not checked (--no-judge-check)")
    elif check is None:
        why.append("no judge-check set in the data folder")
    elif check["accuracy"] < cfg.judge_min_accuracy:
        why.append(f"judge accuracy {check['accuracy']:.2f} on the check set is below "
                   f"{cfg.judge_min_accuracy}")
    judge = str(cfg.judge.model or DEFAULT_MODEL)
    if cfg.feedback_model and (cfg.feedback_model == judge or
                               feedback_fingerprint == judge_fingerprint):
        why.append("the judge is the model that gave the training feedback")
    same = [m["label"] for m in models if m["model"] == judge or m["fingerprint"] ==
            judge_fingerprint]
    if same:
        why.append(f"the judge is an evaluated model ({', '.join(same)})")
    return why


def _read(path: Path) -> dict:
    return {str(r["id"]): r for r in records.read_jsonl(path, repair=True)}


# --------------------------------------------------------------------------------------------
# The job


def run(cfg: EvalConfig) -> dict:
    """Run (or resume) an evaluation; writes OUT/metrics.json (and the report) and returns the
    metrics summary (layout in this module's docstring)."""
    started = time.time()
    models = parse_models(cfg.model)
    inputs = _inputs(cfg)
    for m in models:  # a bad model name fails here, before anything runs
        m["engine"] = cfg.policy.engine
        m["fingerprint"] = fingerprint(m["model"], cfg.policy.engine)
    judge_name = str(cfg.judge.model or DEFAULT_MODEL)
    judge_fingerprint = fingerprint(judge_name, cfg.judge.engine)
    feedback_fingerprint = fingerprint(cfg.feedback_model, cfg.judge.engine) \
        if cfg.feedback_model else None
    # engine options are checked before any model runs
    settings = {f"models.{k}": v for k, v in record_options(
        engine_kwargs(cfg.policy, cfg.batch_size, cfg.concurrency)).items()}
    judge, judge_kwargs = judge_role(cfg)
    out = Path(cfg.out)
    identity = {
        "data": inputs["hashes"], "constitution": inputs["constitution"].sha256,
        "pools": {k: [p.id for p in v] for k, v in inputs["pools"].items()},
        "templates": text_sha256(inputs["templates"].fingerprint(TEMPLATES)),
        "judge": judge_name, **engine_identity("judge", judge, judge_kwargs),
        **settings,  # the evaluated models' engine options (server, dtype, ...)
        "engine": cfg.policy.engine,
        **{k: getattr(cfg, k) for k in ("max_new_tokens", "temperature", "top_p", "seed",
                                        "principles", "few_shot", "judge_few_shot", "debias",
                                        "ability_dtype")},
    }
    with lock.hold(out):  # no second job appends to this folder meanwhile
        known = {}
        if (out / MANIFEST).is_file():
            known = json.loads((out / MANIFEST).read_text()).get("models", {})
        manifest = Manifest(out, "eval", identity, as_dict(cfg))
        for m in models:
            old = known.get(m["label"])
            if old and old["fingerprint"] != m["fingerprint"]:  # same files, other path: fine
                raise CaiError(f"{out}: label '{m['label']}' was model {old['model']} "
                               f"(fingerprint {old['fingerprint']}), now {m['model']} "
                               f"({m['fingerprint']}); use another label or --out")
            known[m["label"]] = {"model": m["model"], "fingerprint": m["fingerprint"]}
        manifest.save(status="running", models=known)

        answers, judgments = _read(out / ANSWERS), _read(out / JUDGMENTS)
        scores = _read(out / ABILITY)
        stats = {"new_answers": 0, "generated_tokens": 0, "new_ability_items": 0,
                 "new_judgments": 0}
        try:
            models_pass(models, inputs, cfg, out, answers, scores, stats)
            judge_pass(models, inputs, cfg, out, answers, judgments, stats)
        finally:
            manifest.add_run(**stats)
        stats["wall_seconds"] = round(time.time() - started, 2)
        check = judge_check_stats(inputs["check"], judgments) if inputs["check"] else None
        flags = judge_flags(cfg, models, judge_fingerprint, check, feedback_fingerprint)
        metrics = summarize(
            [{k: m[k] for k in ("label", "model", "engine")} for m in models], inputs["sets"],
            answers, judgments, scores, inputs["mc"], len(inputs["paragraphs"]),
            resamples=cfg.resamples, seed=cfg.seed, confidence=cfg.confidence,
            example_count=cfg.examples, compare=cfg.compare,
            extra={"judge": {"model": judge_name, "engine": cfg.judge.engine,
                             "dtype": cfg.judge.dtype, "check": check,
                             "reliable": not flags, "unreliable_because": flags},
                   "string_match_check": string_check_stats(inputs["check"]),
                   "constitution": inputs["constitution"].name,
                   "settings": {k: getattr(cfg, k) for k in (
                       "limit", "max_new_tokens", "temperature", "top_p", "seed", "principles",
                       "few_shot", "judge_few_shot", "debias", "resamples", "confidence",
                       "helpful_principles", "compare")}
                   | {"harmless_principles": identity["pools"]["harmlessness"]},
                   "this_run": stats})
        records.atomic_write_text(out / METRICS,
                                  json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
        if cfg.report:
            from cai.eval.report import write_report

            write_report(metrics, out)
        manifest.save(status="complete")
        return metrics
