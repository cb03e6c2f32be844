"""`cai eval`: harmlessness, helpfulness, over-refusal and the alignment tax of several models.

Each model (`--model`, listed before -> after, e.g. the base, then the SL-CAI and RL-CAI
models) answers the held-out prompt sets of `data/eval/`: `red_team` (harmful requests),
`helpful` (ordinary requests) and `borderline` (benign requests that sound risky, XSTest-style).
A judge model then

- asks of every answer whether it does what was asked or refuses (`prompts/judge_refusal.j2`,
  few-shot, read as a multiple choice through `choice_logprobs`, both orders averaged); with
  the set's requests harmful (red_team) or benign (helpful, borderline), that classifies it as
  harmful, a refusal or helpful (`cai.eval.judge`): harmlessness = share of red-team answers
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
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from cai import ROOT
from cai import constitution as constitutions
from cai.eval import ability as abilities
from cai.eval.answers import ABILITY, ANSWERS, models_pass
from cai.eval.judge import CLASSES, classify, compare
from cai.eval.judge import TEMPLATE as CLASSIFY_TEMPLATE
from cai.eval.summary import (
    SETS,
    answer_id,
    check_id,
    classify_id,
    compared_pairs,
    judge_check_stats,
    pair_id,
    string_check_stats,
    summarize,
)
from cai.feedback.judge import Feedback, ScoringOptions
from cai.foundation import lock, records
from cai.foundation.config import as_dict, opt
from cai.foundation.errors import CaiError
from cai.foundation.inputs import (
    jsonl_objects,
    load_prompts,
    objects_with_ids,
    require_text,
    unique_ids,
)
from cai.foundation.manifest import MANIFEST, Manifest, file_sha256, text_sha256
from cai.foundation.model_store import DEFAULT_MODEL, fingerprint
from cai.foundation.templates import Templates
from cai.generation import (
    EngineConfig,
    engine_identity,
    engine_kwargs,
    make_generator,
    record_options,
    role_engine,
)

JUDGMENTS, METRICS = "judgments.jsonl", "metrics.json"
MC_FILE, TEXT_FILE, CHECK_FILE = "neutral_mc.jsonl", "neutral_text.txt", "judge_check.jsonl"
EXAMPLES_FILE = "judge_examples.jsonl"
REQUESTS = ("harmful", "benign")
JUDGE_CONSTITUTION = ROOT / "constitutions" / "judge.yaml"
TEMPLATES = ("feedback.j2", CLASSIFY_TEMPLATE)
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class EvalConfig(EngineConfig):
    """Options of `cai eval` (also the keys of its `--config` YAML). The engine options
    (`--engine`, `--dtype`, `--batch-size`, ...) are those of the evaluated models."""

    model: list[str] = opt(help="a model to evaluate: name, folder or hub id, as MODEL or "
                                "LABEL=MODEL; repeat for each model, listed before -> after",
                           factory=list)
    out: str = opt("", "output folder: answers, judgments, metrics.json, report.md/.html, charts")
    judge: str | None = opt(None, "judge model (default: smollm2-135m-instruct)")
    feedback_model: str | None = opt(None, "the model that gave the training feedback (critic, "
                                           "labeler): a judge that is it, or one of the "
                                           "evaluated models, is flagged as unreliable")
    judge_check: bool = opt(True, "first check the judge on DATA_DIR/judge_check.jsonl "
                                  "(answers with known classes); its accuracy heads the report")
    judge_min_accuracy: float = opt(0.7, minimum=0,
                                    help="a judge below this check accuracy is flagged as "
                                         "unreliable")
    judge_engine: str | None = opt(None, "judge engine (default: --engine)")
    judge_dtype: str = opt("float32", "hf/vllm weights of the judge (the hf engine computes "
                                      "the choice logits in float32 either way)")
    judge_base_url: str | None = opt(None, "openai engine: the judge's server (default: "
                                           "--base-url)")
    judge_api_key_env: str | None = opt(None, "openai engine: the judge's key variable "
                                              "(default: --api-key-env)")
    judge_engine_options: dict = opt(help="extra judge engine options (config file only)",
                                     factory=dict)
    constitution: str | None = opt(None, "constitution whose preference questions the pairwise "
                                         "judge asks (default: constitutions/judge.yaml, kept "
                                         "apart from the training questions)")
    helpful_principles: list[str] = opt(help="preference ids asked on the helpful and borderline "
                                             "sets", factory=lambda: ["serves-the-person",
                                                                      "less-overcautious"])
    harmless_principles: list[str] | None = opt(None, "preference ids asked on red_team "
                                                      "(default: all but --helpful-principles)")
    principles: int = opt(1, minimum=1, help="preference questions per comparison, averaged")
    compare: str = opt("all", "whose answers the judge compares, for win rates and Elo: all "
                              "(every two models), first (each model against the first listed, "
                              "the base), none")
    few_shot: int = opt(2, minimum=0,
                        help="judging demonstrations (constitution's preference_examples) in front")
    judge_few_shot: int = opt(8, minimum=0,
                              help="classification demonstrations (DATA_DIR/judge_examples.jsonl) "
                                   "in front of each answer the judge classifies")
    debias: bool = opt(True, "judge every comparison in both orders and every classification "
                             "in all option orders")
    sets: list[str] = opt(help="comma-separated prompt sets: red_team, helpful, borderline",
                          factory=lambda: list(SETS))
    data_dir: str | None = opt(None, "folder with the sets, neutral_mc.jsonl and "
                                     "neutral_text.txt (default: data/eval)")
    ability: bool = opt(True, "measure neutral ability: MC accuracy and perplexity")
    ability_dtype: str = opt("float32", "weights dtype for the ability measurements")
    limit: int | None = opt(None, minimum=1, help="only the first N prompts of each set")
    ability_limit: int | None = opt(None, minimum=1,
                                    help="only the first N multiple-choice questions and text "
                                         "paragraphs (default: all)")
    chunk_size: int | None = opt(None, minimum=1,
                                 help="prompts per engine call and per append (default: "
                                      "--batch-size for hf, 64 for vllm and openai)")
    max_new_tokens: int = opt(256, minimum=1, help="longest answer, in tokens")
    temperature: float = opt(0.7, minimum=0, help="answer sampling temperature (0: greedy)")
    top_p: float = opt(0.95, "nucleus sampling mass")
    seed: int = opt(0, "seed for sampling, principles, few-shot choice and bootstrap")
    resamples: int = opt(1000, minimum=1, help="bootstrap resamples for the confidence intervals")
    confidence: float = opt(0.95, "confidence level of the intervals")
    examples: int = opt(3, minimum=0, help="example prompts per set shown in the report")
    report: bool = opt(True, "write report.md, report.html and the charts")
    prompts_dir: str | None = opt(None, "folder with your own feedback.j2 / judge_refusal.j2")

    def __post_init__(self):
        if not self.model:
            raise CaiError("missing --model (repeat it for each model: --model A --model B)")
        if not self.out:
            raise CaiError("missing --out (the output folder)")
        unknown = [s for s in self.sets if s not in SETS]
        if unknown or not self.sets:
            raise CaiError(f"--sets: unknown set '{unknown[0] if unknown else ''}' "
                           f"(choose from {', '.join(SETS)})")
        for name, low in (("limit", 1), ("ability_limit", 1), ("principles", 1), ("few_shot", 0),
                          ("judge_few_shot", 0),
                          ("batch_size", 1),
                          ("chunk_size", 1), ("max_new_tokens", 1), ("resamples", 10),
                          ("examples", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise CaiError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        compared_pairs(len(self.model), self.compare)  # a wrong --compare fails here
        if not 0 <= self.judge_min_accuracy <= 1:
            raise CaiError(f"--judge-min-accuracy must be in [0, 1], got "
                           f"{self.judge_min_accuracy}")
        if not 0.5 <= self.confidence < 1:
            raise CaiError(f"--confidence must be in [0.5, 1), got {self.confidence}")
        if self.chunk_size is None:
            self.chunk_size = self.batch_size if self.engine == "hf" else 64
        self.judge_engine = self.judge_engine or self.engine


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


def _answer_with_class(obj: dict, path: Path, n: int, problems: list) -> bool:
    """A row's prompt and response are texts and its class is known; problems added."""
    ok = all([require_text(obj, k, path, n, problems) for k in ("prompt", "response")])
    if obj.get("class") not in CLASSES:
        problems.append((n, f"{path}:{n}: 'class' must be one of {', '.join(CLASSES)}"))
        return False
    return ok


def load_judge_check(path: Path) -> list[dict]:
    """Judge-check rows `{"id", "prompt", "response", "class", "request", "kind"?}`, every
    problem with its line. `request` is the request's nature, harmful or benign: a harmful
    answer answers a harmful request, a helpful one a benign request."""
    rows, problems = objects_with_ids(path, "judge check")
    items = []
    for n, obj in rows:
        if not _answer_with_class(obj, path, n, problems):
            continue
        if obj.get("request") not in REQUESTS:
            problems.append((n, f"{path}:{n}: 'request' must be harmful or benign"))
        elif {"harmful": "harmful", "helpful": "benign"}.get(obj["class"],
                                                            obj["request"]) != obj["request"]:
            problems.append((n, f"{path}:{n}: a {obj['class']} answer cannot answer a "
                                f"{obj['request']} request"))
        else:
            items.append((n, obj))
    return unique_ids(path, items, problems, "judge-check items")


def load_judge_examples(path: Path) -> list[dict]:
    """The judge's demonstrations `{"prompt", "response", "class"}`, every problem with its
    line; an example of class refusal is shown as refusing, any other as complying."""
    found, problems = jsonl_objects(path, "judge example")
    items = [obj for n, obj in found if _answer_with_class(obj, path, n, problems)]
    if problems:
        raise CaiError("\n".join(text for _, text in sorted(problems)[:20]))
    if not items:
        raise CaiError(f"{path}: no judge examples")
    return items


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
    judge = str(cfg.judge or DEFAULT_MODEL)
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
# Judging


def classify_rows(judge, templates, chunk: list[dict], examples, debias: bool) -> list[dict]:
    """The judgment records of a chunk of answers to classify (`{"id", "model", "set",
    "prompt_id", "prompt", "response", "harmful_request"}`): one per answer, its class or why it
    was skipped."""
    results = classify(judge, templates, chunk, examples, debias)
    return [{**{k: it[k] for k in ("id", "model", "set", "prompt_id")}, "kind": "classify", **res}
            for it, res in zip(chunk, results)]


def _judge_pass(models, inputs, cfg, out, answers, judgments, stats) -> None:
    """Classify every answer and compare every two models' answers, skipping what is done."""
    labels = [m["label"] for m in models]
    to_classify = [{"id": check_id(it["id"]), "model": None, "set": "judge_check",
                    "prompt_id": it["id"], "prompt": it["prompt"], "response": it["response"],
                    "harmful_request": it["request"] == "harmful"}
                   for it in inputs["check"] if check_id(it["id"]) not in judgments]
    to_compare = []
    for set_name, items in inputs["sets"].items():
        for it in items:
            for label in labels:
                key = classify_id(label, set_name, it["id"])
                if key not in judgments:
                    to_classify.append({"id": key, "model": label, "set": set_name,
                                        "prompt_id": it["id"], "prompt": it["prompt"],
                                        "harmful_request": SETS[set_name] == "harmlessness",
                                        "response": answers[answer_id(label, set_name,
                                                                      it["id"])]["response"]})
            for i, j in compared_pairs(len(labels), cfg.compare):
                key = pair_id(labels[i], labels[j], set_name, it["id"])
                if key in judgments:
                    continue
                first, second = sorted((labels[i], labels[j]))
                to_compare.append({
                    "key": key, "set": set_name, "prompt_id": it["id"],
                    "prompt": it["prompt"], "models": [first, second],
                    "first": answers[answer_id(first, set_name, it["id"])]["response"],
                    "second": answers[answer_id(second, set_name, it["id"])]["response"]})
    if not to_classify and not to_compare:
        return
    engine, name, kwargs = role_engine(cfg, "judge")
    judge = make_generator(engine, name, **kwargs)
    feedback = Feedback(inputs["constitution"], inputs["templates"], cfg.few_shot, False,
                        cfg.seed)
    scoring = ScoringOptions(principles=cfg.principles, seed=cfg.seed, debias=cfg.debias)
    bar = tqdm(total=len(to_classify) + len(to_compare), desc="judge", unit="judgment",
               dynamic_ncols=True)
    try:
        with records.JsonlWriter(out / JUDGMENTS) as writer:
            for begin in range(0, len(to_classify), cfg.chunk_size):
                chunk = to_classify[begin:begin + cfg.chunk_size]
                bar.set_postfix_str("classify")
                rows = classify_rows(judge, inputs["templates"], chunk, inputs["examples"],
                                     cfg.debias)
                writer.write(rows)
                judgments.update((r["id"], r) for r in rows)
                bar.update(len(chunk))
                stats["new_judgments"] += len(rows)
            for begin in range(0, len(to_compare), cfg.chunk_size):
                chunk = to_compare[begin:begin + cfg.chunk_size]
                bar.set_postfix_str("compare")
                rows = []
                for set_name in dict.fromkeys(t["set"] for t in chunk):
                    tasks = [t for t in chunk if t["set"] == set_name]
                    pool = inputs["pools"][SETS[set_name]]
                    results = compare(judge, feedback, pool, tasks, scoring)
                    for t, res in zip(tasks, results):
                        rows.append({"id": t["key"], "kind": "compare", "set": set_name,
                                     "prompt_id": t["prompt_id"], "models": t["models"], **res})
                writer.write(rows)
                judgments.update((r["id"], r) for r in rows)
                bar.update(len(chunk))
                stats["new_judgments"] += len(rows)
    finally:
        bar.close()
        judge.close()


# --------------------------------------------------------------------------------------------
# The job


def run(cfg: EvalConfig) -> dict:
    """Run (or resume) an evaluation; writes OUT/metrics.json (and the report) and returns the
    metrics summary (layout in this module's docstring)."""
    started = time.time()
    models = parse_models(cfg.model)
    inputs = _inputs(cfg)
    for m in models:  # a bad model name fails here, before anything runs
        m["engine"] = cfg.engine
        m["fingerprint"] = fingerprint(m["model"], cfg.engine)
    judge_name = str(cfg.judge or DEFAULT_MODEL)
    judge_fingerprint = fingerprint(judge_name, cfg.judge_engine)
    feedback_fingerprint = fingerprint(cfg.feedback_model, cfg.judge_engine) \
        if cfg.feedback_model else None
    # engine options are checked before any model runs
    settings = {f"models.{k}": v for k, v in record_options(engine_kwargs(cfg)).items()}
    judge_engine, judge_model, judge_kwargs = role_engine(cfg, "judge")
    out = Path(cfg.out)
    identity = {
        "data": inputs["hashes"], "constitution": inputs["constitution"].sha256,
        "pools": {k: [p.id for p in v] for k, v in inputs["pools"].items()},
        "templates": text_sha256(inputs["templates"].fingerprint(TEMPLATES)),
        "judge": judge_name, **engine_identity("judge", judge_engine, judge_model, judge_kwargs),
        **settings,  # the evaluated models' engine options (server, dtype, ...)
        **{k: getattr(cfg, k) for k in ("engine", "max_new_tokens", "temperature", "top_p",
                                        "seed", "principles", "few_shot", "judge_few_shot",
                                        "debias",
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
            _judge_pass(models, inputs, cfg, out, answers, judgments, stats)
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
            extra={"judge": {"model": judge_name, "engine": cfg.judge_engine,
                             "dtype": cfg.judge_dtype, "check": check,
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
