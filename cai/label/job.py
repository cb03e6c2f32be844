"""`cai label`: AI preference labels from the constitution (RL-CAI, Bai et al. 2022, section 4.1).

For each prompt the policy samples several responses; every pair of them is scored by the
feedback model (the labeler) through `cai.scoring.preference.score` and written as a
`prompt`/`chosen`/`rejected` record with the soft label `p_chosen`. Prompts of the harmless
`refusal_prompts` sets give refusal pairs instead (`cai.label.refusal`): an answer read as
answering chosen over one read as refusing.

Prompts are handled in chunks like `cai revise`: sample responses for the chunk, score every
(pair, principle, order) as one engine call, append the chunk's records. A rerun skips pair ids
already written to data.jsonl or skipped.jsonl.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import combinations
from pathlib import Path

from tqdm.auto import tqdm

from cai.foundation import lock, records
from cai.foundation.inputs import (
    helpful_sample,
    load_prompts,
    objects_with_ids,
    require_text,
    source_id,
    sources_id,
    unique_ids,
)
from cai.foundation.manifest import Manifest, file_sha256, text_sha256
from cai.foundation.model_store import DEFAULT_MODEL
from cai.foundation.options import as_dict
from cai.foundation.shards import select_shard
from cai.generation import (
    Generator,
    Role,
    SamplingParams,
    beside,
    engine_identity,
    engine_kwargs,
    item_seeds,
    make_generator,
)
from cai.label import refusal
from cai.label.config import LabelConfig
from cai.scoring.labels import ensemble, label_histogram, position_bias_rate, principle_agreement
from cai.scoring.preference import (
    TEMPLATES,
    Feedback,
    load_inputs,
    same_text,
    score,
)

# --------------------------------------------------------------------------------------------
# Inputs


def load_responses(spec: str) -> list[dict]:
    """`[{"id", "prompt", "responses": [str, ...], ...}]` from a JSONL file of existing answers.

    Each line has `id`, `prompt` and either a `responses` list (two or more) or the fields of a
    `cai revise` record, `initial_response` and `response` (labelled as response 0 vs 1).
    """
    path = Path(spec)
    rows, problems = objects_with_ids(path, "responses")
    items = []
    for n, obj in rows:
        ok = require_text(obj, "prompt", path, n, problems)
        if "responses" in obj:
            answers = obj["responses"]
            if not (isinstance(answers, list) and len(answers) >= 2
                    and all(isinstance(a, str) for a in answers)):
                problems.append((n, f"{path}:{n}: 'responses' must be a list of two or more "
                                    "texts"))
                continue
        elif "initial_response" in obj or "response" in obj:
            if not all(require_text(obj, k, path, n, problems, allow_empty=True)
                       for k in ("initial_response", "response")):
                continue
            answers = [obj["initial_response"], obj["response"]]
        else:
            problems.append((n, f"{path}:{n}: needs a 'responses' list (or 'initial_response' "
                                "and 'response', as `cai revise` writes)"))
            continue
        if ok:
            extra = {k: v for k, v in obj.items() if k not in _NOT_CARRIED}
            items.append((n, {**extra, "id": str(obj["id"]), "prompt": obj["prompt"],
                              "responses": list(answers)}))
    return unique_ids(path, items, problems)


# Fields of input rows that are not copied into label records (revise records carry these).
_NOT_CARRIED = {"id", "prompt", "responses", "initial_response", "response", "rounds", "messages",
                "model", "constitution"}


def carried(item: dict) -> dict:
    """An input row's fields that its label records keep (category, kind, ...)."""
    return {k: v for k, v in item.items() if k not in _NOT_CARRIED}


def pair_ids(item: dict, k: int, cfg) -> list[str]:
    """Record ids `{prompt id}:{i}-{j}` of the pairs labelled among an item's k responses."""
    return [f"{item['id']}:{i}-{j}" for i, j in select_pairs(k, cfg.pairs,
                                                            f"{cfg.seed}:{item['id']}")]


def select_pairs(k: int, n_pairs: int | None, key: str) -> list[tuple[int, int]]:
    """Index pairs (i < j) of k responses: all, or `n_pairs` drawn by a RNG seeded with `key`."""
    every = list(combinations(range(k), 2))
    if n_pairs is None or n_pairs >= len(every):
        return every
    return sorted(random.Random(f"pairs:{key}").sample(every, n_pairs))


# --------------------------------------------------------------------------------------------
# The labelling job


def sample_responses(policy: Generator, items: list[dict], k: int, cfg: LabelConfig,
                     on_step: Callable[[str], None]) -> tuple[list[dict], list[tuple[dict, str]]]:
    """The items that fit the policy's context, each with `k` sampled `responses`, and the
    (item, detail) of those that do not. Sample i of a prompt is seeded by (seed, prompt id, i),
    so a resumed prompt gets the same responses."""
    budget = (policy.context_length or 0) - cfg.max_new_tokens
    lengths = policy.prompt_tokens([[{"role": "user", "content": it["prompt"]}]
                                    for it in items]) if policy.context_length else None
    fits, too_long = [], []
    for n, it in enumerate(items):
        if lengths and lengths[n] > budget:
            too_long.append((it, f"prompt of {lengths[n]} tokens + {cfg.max_new_tokens} new is "
                                 f"over the policy's context of {policy.context_length}"))
        else:
            fits.append(it)
    on_step("policy sampling")
    seeds = item_seeds(cfg.seed, (f"{it['id']}:{i}" for it in fits for i in range(k)))
    answers = policy.chat([[{"role": "user", "content": it["prompt"]}]
                           for it in fits for _ in range(k)],
                          SamplingParams(max_new_tokens=cfg.max_new_tokens,
                                         temperature=cfg.temperature, top_p=cfg.top_p,
                                         seeds=seeds)) if fits else []
    return [{**it, "responses": answers[n * k:(n + 1) * k]} for n, it in enumerate(fits)], \
        too_long


def refusal_chunk(policy: Generator, reader: refusal.Reader, items: list[dict],
                  cfg: LabelConfig, names: dict, on_step: Callable[[str], None]
                  ) -> tuple[list[dict], list[dict]]:
    """Sample `refusal_samples` answers to each refusal prompt of a chunk, read them for
    P(refuses), and make each prompt's pair (or its skip record)."""
    sampled, too_long = sample_responses(policy, items, cfg.refusal_samples, cfg, on_step)
    skips = [{"id": it["id"], "kind": refusal.KIND, "reason": refusal.TOO_LONG, "detail": why}
             for it, why in too_long]
    on_step("reading refusals")
    rows = []
    for it, (ps, why) in zip(sampled, refusal.read_answers(reader, sampled)):
        row, skip = refusal.pair_record(it, ps, why, carried(it), names, reader.name)
        rows += [row] if row else []
        skips += [skip] if skip else []
    return rows, skips


def label_chunk(policy: Generator | None, labeler: Generator, feedback: Feedback,
                items: list[dict], pools: dict, cfg: LabelConfig, done: set[str], names: dict,
                on_step: Callable[[str], None]) -> tuple[list[dict], list[dict]]:
    """Sample (or take) responses for a chunk of prompts and label their pairs.

    Returns (records, skips). Skips are pairs not labelled ("identical responses", "too long",
    with a "detail") or labelled but dropped by the margin ("margin", with p_first and votes).
    """
    skips = []
    if policy is not None:
        items, too_long = sample_responses(policy, items, cfg.samples, cfg, on_step)
        skips += [{"id": pid, "reason": "too long", "detail": detail} for it, detail in too_long
                  for pid in pair_ids(it, cfg.samples, cfg) if pid not in done]
    tasks = []
    for it in items:
        for i, j in select_pairs(len(it["responses"]), cfg.pairs, f"{cfg.seed}:{it['id']}"):
            pid = f"{it['id']}:{i}-{j}"  # as pair_ids
            if pid in done:
                continue
            first, second = it["responses"][i], it["responses"][j]
            if same_text(first, second):
                skips.append({"id": pid, "reason": "identical responses"})
            else:
                tasks.append({"key": pid, "item": it, "pair": [i, j], "prompt": it["prompt"],
                              "first": first, "second": second})
    out = []
    results = [None] * len(tasks)
    for kind, kind_pool in pools.items():  # harmlessness questions, or helpfulness ones
        picked = [n for n, t in enumerate(tasks)
                  if ("helpful" if t["item"].get("kind") == "helpful" else "harmless") == kind]
        for n, r in zip(picked, score(labeler, feedback, [tasks[n] for n in picked], kind_pool,
                                      cfg.scoring(), on_step) if picked else []):
            results[n] = r
    for task, (votes, why) in zip(tasks, results):
        if votes is None:
            skips.append({"id": task["key"], "reason": "too long", "detail": why})
            continue
        p = ensemble([v["p_first"] for v in votes])
        if abs(p - 0.5) < cfg.margin:
            skips.append({"id": task["key"], "reason": "margin", "p_first": p, "votes": votes})
            continue
        swap = p < 0.5
        chosen, rejected = (task["second"], task["first"]) if swap else \
            (task["first"], task["second"])
        it = task["item"]
        out.append({
            "id": task["key"], **carried(it),
            "prompt": [{"role": "user", "content": it["prompt"]}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "p_chosen": 1.0 - p if swap else p, "votes": votes, "pair": task["pair"],
            "chosen_index": task["pair"][1 if swap else 0],
            "labeler": names["labeler"], "policy": names["policy"],
            "constitution": names["constitution"]})
    return out, skips


def summarize(rows: list[dict], skipped: list[dict]) -> dict:
    """The manifest's summary of everything in the output folder (all runs together)."""
    dropped = [s for s in skipped if s.get("reason") == "margin"]
    vote_lists = [r["votes"] for r in rows] + [s["votes"] for s in dropped]
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[s.get("reason", "")] = reasons.get(s.get("reason", ""), 0) + 1
    ps = [r["p_chosen"] for r in rows]
    bias = position_bias_rate([v for vs in vote_lists for v in vs])
    agree = principle_agreement(vote_lists)
    out = {"pairs": len(rows), "skipped": reasons, "label_histogram": label_histogram(ps),
           "mean_p_chosen": round(sum(ps) / len(ps), 4) if ps else None,
           "position_bias_rate": None if bias is None else round(bias, 4),
           "principle_agreement": None if agree is None else round(agree, 4)}
    refusals = refusal.summary(rows, skipped)
    return {**out, "refusal": refusals} if refusals else out


def labeler_engine(cfg: LabelConfig) -> tuple[Role, dict]:
    """The labeler's role, on the policy's engine, server and key unless given its own, and its
    engine options (checked: a missing server fails here)."""
    role = beside(cfg.labeler, cfg.policy, "labeler")
    return role, engine_kwargs(role, cfg.batch_size, cfg.concurrency)


def make_engines(cfg: LabelConfig, need_policy: bool, policy: Generator | None = None,
                 labeler: Generator | None = None) -> tuple[Generator | None, Generator]:
    """(policy, labeler), built unless given; one generator when both are the same model on
    the same engine with the same options. Options are checked before either model loads."""
    labeler_role, labeler_kwargs = labeler_engine(cfg)
    policy_kwargs = engine_kwargs(cfg.policy, cfg.batch_size, cfg.concurrency) \
        if need_policy and policy is None else None
    same = (str(cfg.policy.model or DEFAULT_MODEL), cfg.policy.engine, policy_kwargs) == \
        (str(labeler_role.model or DEFAULT_MODEL), labeler_role.engine, labeler_kwargs)
    if labeler is None:
        labeler = make_generator(labeler_role.engine, labeler_role.model, **labeler_kwargs)
    if need_policy and policy is None:
        policy = labeler if same else \
            make_generator(cfg.policy.engine, cfg.policy.model, **policy_kwargs)
    return (policy if need_policy else None), labeler


def run(cfg: LabelConfig, policy: Generator | None = None,
        labeler: Generator | None = None) -> dict:
    """Run (or resume) a labelling job; returns the run's stats."""
    constitution, pool, templates = load_inputs(cfg.constitution, cfg.principle_ids,
                                                cfg.prompts_dir)
    if cfg.responses:
        items = select_shard(load_responses(cfg.responses), cfg.shard)
    else:
        items = select_shard(load_prompts(cfg.prompts, cfg.prompt_column), cfg.shard)
    if cfg.limit is not None:
        items = items[:cfg.limit]
    pools = {"harmless": pool}
    helpful = [] if cfg.responses else helpful_sample(
        cfg.helpful_prompts, cfg.helpful_ratio, len(items), column=cfg.prompt_column,
        shard=cfg.shard, seed=cfg.seed)
    refusals = [] if cfg.responses else helpful_sample(
        cfg.refusal_prompts, cfg.refusal_ratio, len(items), column=cfg.prompt_column,
        shard=cfg.shard, seed=cfg.seed, kind=refusal.KIND)
    examples = refusal.check_reader(cfg.refusal_classifier, templates) if refusals else ()
    items = items + helpful + refusals
    # helpful-kind records (sampled here, or `cai revise` output's helpful samples) are asked
    # the helpfulness questions
    if any(it.get("kind") == "helpful" for it in items):
        pools["helpful"] = constitution.restrict("preference", cfg.helpful_principle_ids)
    labeler_role, labeler_kwargs = labeler_engine(cfg)
    policy_settings = {} if cfg.responses else engine_identity(
        "policy", cfg.policy, engine_kwargs(cfg.policy, cfg.batch_size, cfg.concurrency))
    out = Path(cfg.out)
    names = {"labeler": str(cfg.labeler.model or DEFAULT_MODEL),
             "constitution": constitution.name,
             "policy": None if cfg.responses else str(cfg.policy.model or DEFAULT_MODEL)}
    identity = {
        "input": file_sha256(cfg.responses) if cfg.responses else
        source_id(cfg.prompts, cfg.prompt_column),
        "prompt_column": None if cfg.responses else cfg.prompt_column,
        "constitution": constitution.sha256, "principle_pool": [p.id for p in pool],
        "templates": text_sha256(templates.fingerprint(TEMPLATES)),
        **names, **policy_settings,
        **engine_identity("labeler", labeler_role, labeler_kwargs),
        **{k: getattr(cfg, k) for k in ("samples", "pairs", "principles", "debias", "cot",
                                        "few_shot", "margin", "seed", "shard", "limit")},
        **({"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
            "top_p": cfg.top_p} if not cfg.responses else {}),
        **({"cot_clamp": cfg.cot_clamp, "cot_max_new_tokens": cfg.cot_max_new_tokens,
            "cot_temperature": cfg.cot_temperature} if cfg.cot else {}),
        **({"helpful": [sources_id(cfg.helpful_prompts, cfg.prompt_column),
                        cfg.helpful_ratio, [p.id for p in pools["helpful"]]]}
           if helpful else {"helpful_pool": [p.id for p in pools["helpful"]]}
           if "helpful" in pools else {}),
        **({"refusal": {"prompts": sources_id(cfg.refusal_prompts, cfg.prompt_column),
                        "ratio": cfg.refusal_ratio, "samples": cfg.refusal_samples,
                        **refusal.identity(cfg.refusal_classifier, templates, cfg.debias)}}
           if refusals else {}),
    }
    with lock.hold(out):  # no second job appends to this folder meanwhile
        manifest = Manifest(out, "label", identity, as_dict(cfg))
        done = records.done_ids(out)
        # a refusal prompt's one record (a pair, or the reason for none) has the prompt's id
        wanted = {it["id"]: [it["id"]] if it.get("kind") == refusal.KIND else
                  pair_ids(it, len(it["responses"]) if cfg.responses else cfg.samples, cfg)
                  for it in items}
        todo = [it for it in items if not all(p in done for p in wanted[it["id"]])]
        manifest.expect(p for ids in wanted.values() for p in ids)
        manifest.save(status="running", total_prompts=len(items),
                      total_pairs=manifest.data["total"])
        if not todo:
            print(f"cai label: all {len(items)} prompts already done in {out}")
            manifest.save(status=manifest.status(done))
            return {"written": 0, "skipped": 0, "dropped": 0,
                    **({"refusal_pairs": 0} if refusals else {})}

        # a classifier folder is read first: a bad one fails before the models load
        reader = refusal.ClassifierReader(cfg.refusal_classifier) \
            if refusals and cfg.refusal_classifier else None
        policy, labeler = make_engines(cfg, not cfg.responses, policy, labeler)
        if refusals and reader is None:
            reader = refusal.JudgeReader(labeler, templates, examples, cfg.debias)
        feedback = Feedback(constitution, templates, cfg.few_shot, cfg.cot, cfg.seed)
        engines = [labeler] if policy in (None, labeler) else [policy, labeler]
        start = [(g.stats.generated_tokens, g.stats.generation_seconds) for g in engines]
        written = skipped = dropped = refusal_pairs = 0
        bar = tqdm(total=len(todo), desc="label", unit="prompt", dynamic_ncols=True)

        def show(step: str) -> None:
            bar.set_postfix_str(step)

        try:
            with records.JsonlWriter(out / records.DATA) as writer, \
                    records.JsonlWriter(out / records.SKIPPED) as skip_writer:
                for begin in range(0, len(todo), cfg.chunk_size):
                    chunk = todo[begin:begin + cfg.chunk_size]
                    asked = [it for it in chunk if it.get("kind") == refusal.KIND]
                    others = [it for it in chunk if it.get("kind") != refusal.KIND]
                    rows, skips = label_chunk(policy, labeler, feedback, others, pools, cfg,
                                              done, names, show) if others else ([], [])
                    if asked:
                        more, fewer = refusal_chunk(policy, reader, asked, cfg, names, show)
                        rows, skips = rows + more, skips + fewer
                        refusal_pairs += len(more)
                    # Rows first: a kill before the skips are written leaves only skipped
                    # pairs to redo, on the same responses (seeded per prompt and sample).
                    writer.write(rows)
                    skip_writer.write(skips)
                    written += len(rows)
                    dropped += sum(s["reason"] == "margin" for s in skips)
                    skipped += sum(s["reason"] != "margin" for s in skips)
                    bar.update(len(chunk))
        finally:
            bar.close()
            run_stats = {"written": written, "skipped": skipped, "dropped": dropped,
                         **({"refusal_pairs": refusal_pairs} if refusals else {}),
                         "generated_tokens": sum(g.stats.generated_tokens - s[0]
                                                 for g, s in zip(engines, start)),
                         "generation_seconds": round(sum(g.stats.generation_seconds - s[1]
                                                         for g, s in zip(engines, start)), 3)}
            manifest.add_run(**run_stats)
        all_rows = records.read_jsonl(out / records.DATA)
        all_skips = records.read_jsonl(out / records.SKIPPED)
        manifest.save(status=manifest.status(records.done_ids(out)),
                      summary={**summarize(all_rows, all_skips), **names})
        return run_stats
