"""`cai eval`: harmlessness, helpfulness, over-refusal and the alignment tax of several models.

Each model (`--model`, listed before -> after, e.g. the base, then the SL-CAI and RL-CAI
models) answers the held-out prompt sets of `data/eval/`: `red_team` (harmful requests),
`helpful` (ordinary requests) and `borderline` (benign requests that sound risky, XSTest-style).
A judge model then

- classifies every answer as harmful, a refusal or helpful (`prompts/judge_classify.j2`, read
  as a multiple choice through `choice_logprobs`, every order of the options averaged):
  harmlessness = share of red-team answers not judged harmful; over-refusal = share of
  borderline (and helpful) answers judged refusals;
- compares the answers of every two models on every prompt with `cai label`'s machinery (a
  constitution question, both orders, soft labels): win rates with bootstrap intervals, and
  harmlessness / helpfulness Elo (Bai et al. 2022, arXiv:2212.08073, figure 2).

A string-match refusal detector (`cai.eval_metrics.is_refusal`) is reported next to the judge.
Neutral ability, the alignment tax, is multiple-choice accuracy on `neutral_mc.jsonl` and
perplexity on `neutral_text.txt` (`cai.ability`). docs/evaluation.md explains each metric.

Everything is cached in OUT and a rerun skips what is done: `answers.jsonl` (one record per
model, set and prompt), `judgments.jsonl` (classifications and comparisons), `ability.jsonl`
(per question and paragraph). `manifest.json` guards the settings that determine them, and
the model behind each label (a fingerprint of its files), so new models, sets or a larger
`--limit` add to a folder while changed settings are refused.

`OUT/metrics.json` (all rates are fractions in [0, 1]; floats rounded to 4 digits):

- `models`: `[{"label", "model", "engine"}]` in the order given; `judge`: `{"model", "engine",
  "dtype"}`; `constitution`; `settings`: the sampling and judging settings; `this_run`: counts
  and seconds of the run that wrote the file.
- `sets`: `{set: {"prompts": n, "axis": "harmlessness" | "helpfulness"}}`.
- `per_model[label]`:
  - `harmlessness`: 1 - harmful rate on red_team (judge); `helpful_rate`: helpful rate on
    helpful (judge); `over_refusal`: `{set: judge refusal rate}` for helpful and borderline;
    `string_refusal`: `{set: string-match refusal rate}`;
  - `sets[set]`: `n`, `judged`, `classes` `{harmful, refusal, helpful}` (share of answers whose
    most probable class it is), `mean_probs` (mean judge probability of each class),
    `string_refusal_rate`, `words` and `tokens` `{"mean", "median"}` (answer lengths);
  - `ability`: `{"mc": {"accuracy", "accuracy_norm", "n", "chance"}, "text": {"perplexity",
    "nll_per_token", "tokens", "paragraphs"}}` or null (`--no-ability`, openai engine).
- `pairwise[set]`: `[{"a", "b", "n", "win_rate", "ci": [lo, hi], "hard_win_rate", "hard_ci",
  "identical", "skipped"}]` for every model `a` listed after `b`: `win_rate` is the mean
  P(a's answer better), `hard_win_rate` the share of prompts where a is preferred (ties 1/2).
- `elo[axis]`: `{"sets", "comparisons", "ratings": {label: {"elo", "ci": [lo, hi]}}}`, axis
  harmlessness (red_team) or helpfulness (helpful + borderline): the Bradley-Terry
  maximum-likelihood fit over the soft outcomes, on the Elo scale (400 points = odds of 10:1),
  the first model at 0 (`cai.eval_metrics.bradley_terry`).
- `examples[set]`: the first `--examples` prompts with each model's answer and class.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from cai import ROOT, records
from cai import ability as abilities
from cai import constitution as constitutions
from cai.config import as_dict, opt
from cai.errors import CaiError
from cai.eval_judge import TEMPLATE as CLASSIFY_TEMPLATE
from cai.eval_judge import classify, compare
from cai.eval_summary import SETS, answer_id, classify_id, pair_id, summarize
from cai.feedback import Feedback
from cai.generation import EngineConfig, SamplingParams, engine_kwargs, make_generator
from cai.models import DEFAULT_MODEL, resolve
from cai.prompts import Templates

ANSWERS, JUDGMENTS, ABILITY, METRICS = ("answers.jsonl", "judgments.jsonl", "ability.jsonl",
                                        "metrics.json")
MC_FILE, TEXT_FILE = "neutral_mc.jsonl", "neutral_text.txt"
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
    judge_engine: str | None = opt(None, "judge engine (default: --engine)")
    judge_dtype: str = opt("float32", "hf/vllm weights of the judge (float32: bfloat16 logits "
                                      "quantize soft labels)")
    judge_base_url: str | None = opt(None, "openai engine: the judge's server (default: "
                                           "--base-url)")
    judge_api_key_env: str | None = opt(None, "openai engine: the judge's key variable "
                                              "(default: --api-key-env)")
    judge_engine_options: dict = opt(help="extra judge engine options (config file only)",
                                     factory=dict)
    constitution: str | None = opt(None, "constitution whose preference questions the pairwise "
                                         "judge asks (default: constitutions/default.yaml)")
    helpful_principles: list[str] = opt(help="preference ids asked on the helpful and borderline "
                                             "sets", factory=lambda: ["more-helpful"])
    harmless_principles: list[str] | None = opt(None, "preference ids asked on red_team "
                                                      "(default: all but --helpful-principles)")
    principles: int = opt(1, "preference questions per comparison, averaged")
    few_shot: int = opt(2, "judging demonstrations (constitution's preference_examples) in front")
    debias: bool = opt(True, "judge every comparison in both orders and every classification "
                             "in all option orders")
    sets: list[str] = opt(help="comma-separated prompt sets: red_team, helpful, borderline",
                          factory=lambda: list(SETS))
    data_dir: str | None = opt(None, "folder with the sets, neutral_mc.jsonl and "
                                     "neutral_text.txt (default: data/eval)")
    ability: bool = opt(True, "measure neutral ability: MC accuracy and perplexity")
    ability_dtype: str = opt("float32", "weights dtype for the ability measurements")
    limit: int | None = opt(None, "only the first N prompts of each set")
    ability_limit: int | None = opt(None, "only the first N multiple-choice questions and text "
                                          "paragraphs (default: all)")
    chunk_size: int | None = opt(None, "prompts per engine call and per append (default: "
                                       "--batch-size for hf, 64 for vllm and openai)")
    max_new_tokens: int = opt(256, "longest answer, in tokens")
    temperature: float = opt(0.7, "answer sampling temperature (0: greedy)")
    top_p: float = opt(0.95, "nucleus sampling mass")
    seed: int = opt(0, "seed for sampling, principles, few-shot choice and bootstrap")
    resamples: int = opt(1000, "bootstrap resamples for the confidence intervals")
    confidence: float = opt(0.95, "confidence level of the intervals")
    examples: int = opt(3, "example prompts per set shown in the report")
    report: bool = opt(True, "write report.md, report.html and the charts")
    prompts_dir: str | None = opt(None, "folder with your own feedback.j2 / judge_classify.j2")

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
                          ("batch_size", 1),
                          ("chunk_size", 1), ("max_new_tokens", 1), ("resamples", 10),
                          ("examples", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise CaiError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
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


def fingerprint(name: str, engine: str) -> str:
    """What identifies a model's weights: for a local folder, the sizes of its weight files and
    a sample of 64 KiB blocks spread through each (so a retrained model in the same folder is
    noticed, a copied one is not); for a served model, its name."""
    if engine == "openai":
        return name
    folder = resolve(name)
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if not (f.suffix in (".safetensors", ".bin") or f.name == "config.json"):
            continue
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            for k in range(16):
                fh.seek(size * k // 16)
                h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]


def _free_memory() -> None:
    """Collect a dropped model before loading the next (one model at a time is in memory)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


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
        items = records.load_prompts(str(data / f"{name}.jsonl"))
        sets[name] = items[:cfg.limit] if cfg.limit else items
    mc, paragraphs = [], []
    if cfg.ability:
        mc = abilities.load_mc(data / MC_FILE)[:cfg.ability_limit]
        paragraphs = abilities.load_text(data / TEXT_FILE)[:cfg.ability_limit]
    constitution = constitutions.load(cfg.constitution)
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
                         response_b="?", options=["harmful", "refusal", "helpful"])
    hashes = {f.name: records.file_sha256(f) for f in sorted(data.iterdir())
              if f.name in {f"{s}.jsonl" for s in SETS} | {MC_FILE, TEXT_FILE}}
    return {"sets": sets, "mc": mc, "paragraphs": paragraphs, "constitution": constitution,
            "pools": {"harmlessness": harmless, "helpfulness": helpful}, "templates": templates,
            "hashes": hashes}


def _read(path: Path) -> dict:
    return {str(r["id"]): r for r in records.read_jsonl(path, repair=True)}


# --------------------------------------------------------------------------------------------
# Answers and ability, one model at a time


def _answer(gen, model: dict, todo: list[tuple[str, dict]], cfg: EvalConfig, writer,
            answers: dict) -> int:
    """Generate the missing answers of one model, chunk by chunk; returns how many."""
    tokenizer = getattr(gen, "tokenizer", None)
    bar = tqdm(total=len(todo), desc=f"answers {model['label']}", unit="answer",
               dynamic_ncols=True)
    try:
        for begin in range(0, len(todo), cfg.chunk_size):
            chunk = todo[begin:begin + cfg.chunk_size]
            seed = zlib.crc32(f"{cfg.seed}:{chunk[0][0]}:{chunk[0][1]['id']}".encode())
            texts = gen.chat([[{"role": "user", "content": it["prompt"]}] for _, it in chunk],
                             SamplingParams(max_new_tokens=cfg.max_new_tokens,
                                            temperature=cfg.temperature, top_p=cfg.top_p,
                                            seed=seed))
            rows = []
            for (set_name, it), text in zip(chunk, texts):
                rows.append({
                    "id": answer_id(model["label"], set_name, it["id"]), "model": model["label"],
                    "set": set_name, "prompt_id": it["id"], "prompt": it["prompt"],
                    "response": text, "words": len(text.split()),
                    "tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"])
                    if tokenizer is not None else None})
            writer.write(rows)
            answers.update((r["id"], r) for r in rows)
            bar.update(len(chunk))
    finally:
        bar.close()
    return len(todo)


def _measure(model: dict, gen, mc: list[dict], paragraphs: list[int], texts: list[str],
             cfg: EvalConfig, writer, scores: dict) -> int:
    """MC log-probs and paragraph NLLs of one model; returns how many items were scored."""
    from cai.models import load_causal_lm, load_tokenizer

    if gen is not None:
        lm, tokenizer = gen.model, gen.tokenizer
    else:
        import torch

        lm, tokenizer = load_causal_lm(model["model"], dtype=cfg.ability_dtype), \
            load_tokenizer(model["model"])
        lm.to("cuda" if torch.cuda.is_available() else "cpu")
    label, rows = model["label"], []
    bar = tqdm(total=len(mc) + len(paragraphs), desc=f"ability {label}", unit="item",
               dynamic_ncols=True)
    try:
        for begin in range(0, len(mc), cfg.chunk_size):
            chunk = mc[begin:begin + cfg.chunk_size]
            logps = abilities.mc_logprobs(lm, tokenizer, chunk, cfg.batch_size)
            rows = [{"id": f"{label}:mc:{q['id']}", "model": label, "kind": "mc",
                     "logprobs": lp} for q, lp in zip(chunk, logps)]
            writer.write(rows)
            scores.update((r["id"], r) for r in rows)
            bar.update(len(chunk))
        if paragraphs:
            nll = abilities.text_nll(lm, tokenizer, [texts[k] for k in paragraphs],
                                     cfg.batch_size)
            rows = [{"id": f"{label}:text:{k}", "model": label, "kind": "text", **s}
                    for k, s in zip(paragraphs, nll)]
            writer.write(rows)
            scores.update((r["id"], r) for r in rows)
            bar.update(len(paragraphs))
    finally:
        bar.close()
    return len(mc) + len(paragraphs)


def _models_pass(models, inputs, cfg, out, answers, scores, stats) -> None:
    """Answers and ability of each model, loading one model at a time, only when needed."""
    measure = cfg.ability and cfg.engine != "openai"
    with records.JsonlWriter(out / ANSWERS) as answer_writer, \
            records.JsonlWriter(out / ABILITY) as ability_writer:
        for model in models:
            label = model["label"]
            todo = [(s, it) for s, items in inputs["sets"].items() for it in items
                    if answer_id(label, s, it["id"]) not in answers]
            mc = [q for q in inputs["mc"] if f"{label}:mc:{q['id']}" not in scores] \
                if measure else []
            paragraphs = [k for k in range(len(inputs["paragraphs"]))
                          if f"{label}:text:{k}" not in scores] if measure else []
            gen = None
            if todo:
                gen = make_generator(cfg.engine, model["model"], **engine_kwargs(cfg))
                tokens0 = gen.stats.generated_tokens
                stats["new_answers"] += _answer(gen, model, todo, cfg, answer_writer, answers)
                stats["generated_tokens"] += gen.stats.generated_tokens - tokens0
                # The answering model also measures ability when it is a transformers model
                # in the ability dtype; otherwise it goes before a copy is loaded.
                if cfg.engine != "hf" or cfg.dtype != cfg.ability_dtype:
                    gen.close()
                    gen = None
                    _free_memory()
            if mc or paragraphs:
                stats["new_ability_items"] += _measure(model, gen, mc, paragraphs,
                                                       inputs["paragraphs"], cfg,
                                                       ability_writer, scores)
            if gen is not None:
                gen.close()
            gen = None
            _free_memory()


# --------------------------------------------------------------------------------------------
# Judging


def _judge_kwargs(cfg: EvalConfig) -> dict:
    if cfg.judge_engine == "openai" and not (cfg.judge_base_url or cfg.base_url or
                                             "base_url" in cfg.judge_engine_options):
        raise CaiError("--judge-engine openai needs --judge-base-url (or --base-url), "
                       "e.g. http://127.0.0.1:8000/v1")
    return engine_kwargs(EngineConfig(
        model=cfg.judge, engine=cfg.judge_engine, dtype=cfg.judge_dtype,
        batch_size=cfg.batch_size, base_url=cfg.judge_base_url or cfg.base_url,
        api_key_env=cfg.judge_api_key_env or cfg.api_key_env, concurrency=cfg.concurrency,
        engine_options=cfg.judge_engine_options))


def _judge_pass(models, inputs, cfg, out, answers, judgments, stats) -> None:
    """Classify every answer and compare every two models' answers, skipping what is done."""
    labels = [m["label"] for m in models]
    to_classify, to_compare = [], []
    for set_name, items in inputs["sets"].items():
        for it in items:
            for label in labels:
                key = classify_id(label, set_name, it["id"])
                if key not in judgments:
                    to_classify.append({"id": key, "model": label, "set": set_name,
                                        "prompt_id": it["id"], "prompt": it["prompt"],
                                        "response": answers[answer_id(label, set_name,
                                                                      it["id"])]["response"]})
            for i in range(len(labels)):
                for j in range(i + 1, len(labels)):
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
    judge = make_generator(cfg.judge_engine, cfg.judge, **_judge_kwargs(cfg))
    feedback = Feedback(inputs["constitution"], inputs["templates"], cfg.few_shot, False,
                        cfg.seed)
    bar = tqdm(total=len(to_classify) + len(to_compare), desc="judge", unit="judgment",
               dynamic_ncols=True)
    try:
        with records.JsonlWriter(out / JUDGMENTS) as writer:
            for begin in range(0, len(to_classify), cfg.chunk_size):
                chunk = to_classify[begin:begin + cfg.chunk_size]
                bar.set_postfix_str("classify")
                results = classify(judge, inputs["templates"], chunk, cfg.debias)
                rows = [{**{k: it[k] for k in ("id", "model", "set", "prompt_id")},
                         "kind": "classify", **res} for it, res in zip(chunk, results)]
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
                    for t, res in zip(tasks, compare(judge, feedback, pool, tasks,
                                                     cfg.principles, cfg.debias, cfg.seed)):
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
    engine_kwargs(cfg)  # engine options are checked before any model runs
    _judge_kwargs(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    identity = {
        "data": inputs["hashes"], "constitution": inputs["constitution"].sha256,
        "pools": {k: [p.id for p in v] for k, v in inputs["pools"].items()},
        "templates": records.text_sha256(inputs["templates"].fingerprint(TEMPLATES)),
        "judge": judge_name, "judge_fingerprint": judge_fingerprint,
        "judge_engine": cfg.judge_engine, "judge_dtype": cfg.judge_dtype,
        **{k: getattr(cfg, k) for k in ("engine", "dtype", "max_new_tokens", "temperature",
                                        "top_p", "seed", "principles", "few_shot", "debias",
                                        "ability_dtype")},
    }
    known = {}
    if (out / records.MANIFEST).is_file():
        known = json.loads((out / records.MANIFEST).read_text()).get("models", {})
    manifest = records.Manifest(out, "eval", identity, as_dict(cfg))
    for m in models:
        old = known.get(m["label"])
        if old and (old["model"], old["fingerprint"]) != (m["model"], m["fingerprint"]):
            raise CaiError(f"{out}: label '{m['label']}' was model {old['model']} (fingerprint "
                           f"{old['fingerprint']}), now {m['model']} ({m['fingerprint']}); use "
                           "another label or --out")
        known[m["label"]] = {"model": m["model"], "fingerprint": m["fingerprint"]}
    manifest.save(status="running", models=known)

    answers, judgments, scores = _read(out / ANSWERS), _read(out / JUDGMENTS), _read(out / ABILITY)
    stats = {"new_answers": 0, "generated_tokens": 0, "new_ability_items": 0, "new_judgments": 0}
    try:
        _models_pass(models, inputs, cfg, out, answers, scores, stats)
        _judge_pass(models, inputs, cfg, out, answers, judgments, stats)
    finally:
        manifest.add_run(**stats)
    stats["wall_seconds"] = round(time.time() - started, 2)
    metrics = summarize(
        [{k: m[k] for k in ("label", "model", "engine")} for m in models], inputs["sets"],
        answers, judgments, scores, inputs["mc"], len(inputs["paragraphs"]),
        resamples=cfg.resamples, seed=cfg.seed, confidence=cfg.confidence,
        example_count=cfg.examples,
        extra={"judge": {"model": judge_name, "engine": cfg.judge_engine,
                         "dtype": cfg.judge_dtype},
               "constitution": inputs["constitution"].name,
               "settings": {k: getattr(cfg, k) for k in (
                   "limit", "max_new_tokens", "temperature", "top_p", "seed", "principles",
                   "few_shot", "debias", "resamples", "confidence", "helpful_principles")}
               | {"harmless_principles": identity["pools"]["harmlessness"]},
               "this_run": stats})
    records.atomic_write_text(out / METRICS, json.dumps(metrics, indent=2, ensure_ascii=False)
                              + "\n")
    if cfg.report:
        from cai.report import write_report

        write_report(metrics, out)
    manifest.save(status="complete")
    return metrics
