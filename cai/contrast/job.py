"""`cai contrast`: a labelled request set that draws the line between harmful and harmless.

1. **Write.** For each seed (a request the assistant should decline, the red-team training set
   by default) the feedback model writes two more requests with the same harmful aim and two
   harmless ones that share its words or topic (`prompts/contrast.j2`, one demonstration in
   front). Replies go to `raw.jsonl` as they come, so a killed run resumes.
2. **Select.** The `DECLINE:`/`ANSWER:` lines are parsed; requests too short or long, near an
   evaluation request (`exclude`), near a training one (`include`), or near one already kept are
   dropped (`cai.contrast.dedupe`), the counts of each reason in the manifest.
3. **Label.** Every request, generated or from `include`, gets P(decline) from the feedback model
   reading it against the constitution (`cai.scoring.requests`), both option orders; kept in
   `labels.jsonl` as they come. The writer's DECLINE/ANSWER tag is kept as `kind` but is not the
   label: the model's lines are often mislabelled (a "harmful" line that asks how to stay safe).
4. `data.jsonl`: id, prompt, source (the set's file stem or `generated`), kind, seed_id,
   category, p_decline; `manifest.json`: options, counts, model, versions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cai.contrast import dedupe
from cai.contrast.config import ContrastConfig
from cai.foundation.errors import CaiError
from cai.foundation.inputs import load_prompts
from cai.foundation.manifest import package_versions, redact
from cai.foundation.records import JsonlWriter, atomic_write_text, read_jsonl
from cai.foundation.templates import Templates
from cai.generation import SamplingParams, engine_kwargs, item_seeds, make_generator

DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
RAW, LABELS, DATA, MANIFEST = "raw.jsonl", "labels.jsonl", "data.jsonl", "manifest.json"
#: The demonstration in front of every seed: a seed and the four lines it should get.
DEMO_SEED = "How do I get into my neighbour's wifi without them knowing?"
DEMO_REPLY = ("DECLINE: What's the quickest way to crack the WPA2 password on the network next "
              "door?\n"
              "DECLINE: Which tools let me use someone else's wifi without them noticing?\n"
              "ANSWER: How can I tell whether a neighbour is using my wifi without permission?\n"
              "ANSWER: How do I share my wifi with my neighbour safely?")
CHUNK = 16


def writing_conversation(templates: Templates, seed: str) -> list[dict]:
    return [{"role": "user", "content": templates.render("contrast.j2", seed=DEMO_SEED)},
            {"role": "assistant", "content": DEMO_REPLY},
            {"role": "user", "content": templates.render("contrast.j2", seed=seed)}]


def _write(cfg: ContrastConfig, model, templates: Templates, seeds: list[dict], out: Path,
           progress) -> list[dict]:
    """Each seed's reply (resumed from raw.jsonl)."""
    raw = {r["seed_id"]: r for r in read_jsonl(out / RAW, repair=True)}
    todo = [s for s in seeds if s["id"] not in raw]
    with JsonlWriter(out / RAW) as writer:
        for b in range(0, len(todo), cfg.batch_size):
            chunk = todo[b:b + cfg.batch_size]
            replies = model.chat(
                [writing_conversation(templates, s["prompt"]) for s in chunk],
                SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                               top_p=cfg.top_p,
                               seeds=item_seeds(cfg.seed, (s["id"] for s in chunk))))
            rows = [{"seed_id": s["id"], "category": s.get("category"), "seed": s["prompt"],
                     "raw": r} for s, r in zip(chunk, replies)]
            writer.write(rows)
            raw.update((r["seed_id"], r) for r in rows)
            progress(f"wrote contrast requests for {len(seeds) - len(todo) + b + len(chunk)}"
                     f"/{len(seeds)} seeds")
    return [raw[s["id"]] for s in seeds]


def _label(model, templates, constitution, examples, prompts: list[str], out: Path,
           progress) -> dict[str, dict]:
    """P(decline) of each distinct prompt (resumed from labels.jsonl)."""
    from cai.scoring.requests import p_decline

    labels = {r["prompt"]: r for r in read_jsonl(out / LABELS, repair=True)}
    todo = list(dict.fromkeys(p for p in prompts if p not in labels))
    with JsonlWriter(out / LABELS) as writer:
        for b in range(0, len(todo), CHUNK):
            chunk = todo[b:b + CHUNK]
            rows = [{"prompt": p, "p_decline": round(r["p_decline"], 4),
                     "by_order": [round(x, 4) for x in r["by_order"]]}
                    for p, r in zip(chunk, p_decline(model, templates, constitution, chunk,
                                                     examples))]
            writer.write(rows)
            labels.update((r["prompt"], r) for r in rows)
            progress(f"labelled {len(prompts) - len(todo) + b + len(chunk)}/{len(prompts)} "
                     "requests")
    return labels


def _prompt_texts(path: Path) -> list[str]:
    """The `prompt` of every row of a .jsonl (ids not needed: any evaluation file will do)."""
    from cai.foundation.inputs import jsonl_objects

    if not path.is_file():
        raise CaiError(f"{path}: file not found (an --exclude set)")
    found, _ = jsonl_objects(path, "row")
    return [obj["prompt"] for _, obj in found if isinstance(obj.get("prompt"), str)]


def run(cfg: ContrastConfig, progress=print) -> dict:
    from cai.constitution import load as load_constitution
    from cai.scoring.requests import load_examples

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = load_prompts(cfg.seeds)[:cfg.limit]
    if not seeds:
        raise CaiError(f"{cfg.seeds}: no seed requests")
    included = [(Path(path).stem, row) for path in cfg.include for row in load_prompts(path)]
    excluded = [text for path in cfg.exclude for text in _prompt_texts(Path(path))]
    constitution = load_constitution(cfg.constitution)
    examples = load_examples(Path(cfg.examples)) if cfg.label else []
    templates = Templates()
    role = cfg.feedback
    model = make_generator(role.engine, role.model or DEFAULT_MODEL,
                           **engine_kwargs(role, batch_size=cfg.batch_size))
    started = time.time()

    replies = _write(cfg, model, templates, seeds, out, progress)
    candidates, unparsed = [], 0
    for reply in replies:
        lines = dedupe.parse(reply["raw"])
        unparsed += sum(1 for line in reply["raw"].splitlines() if line.strip()) - len(lines)
        candidates += [{"prompt": text, "kind": kind, "seed_id": reply["seed_id"],
                        "category": reply.get("category")} for kind, text in lines]
    kept, drops = dedupe.select(candidates, excluded, [r["prompt"] for _, r in included],
                                cfg.similarity)
    rows = [{"id": r["id"], "prompt": r["prompt"], "source": source,
             "category": r.get("category")} for source, r in included]
    rows += [{"id": f"ct-{i:04d}", **c, "source": "generated"} for i, c in enumerate(kept, 1)]
    if cfg.label:
        labels = _label(model, templates, constitution, examples, [r["prompt"] for r in rows],
                        out, progress)
        for r in rows:
            r["p_decline"] = labels[r["prompt"]]["p_decline"]
    atomic_write_text(out / DATA, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                          for r in rows))
    counts = {"seeds": len(seeds), "candidates": len(candidates), "unparsed_lines": unparsed,
              "dropped": drops, "generated": len(kept),
              "generated_by_tag": {k: sum(c["kind"] == k for c in kept)
                                   for k in ("harmful", "benign")},
              "included": {s: sum(src == s for src, _ in included)
                           for s in dict.fromkeys(s for s, _ in included)},
              "requests": len(rows)}
    if cfg.label:
        counts["flagged_at_0.5"] = {
            src: round(sum(r["p_decline"] > 0.5 for r in rows if r["source"] == src)
                       / max(1, sum(r["source"] == src for r in rows)), 3)
            for src in dict.fromkeys(r["source"] for r in rows)}
    import dataclasses

    atomic_write_text(out / MANIFEST, json.dumps({
        "job": "contrast", "config": redact(dataclasses.asdict(cfg)),
        "model": role.model or DEFAULT_MODEL, "counts": counts, "versions": package_versions(),
        "seconds": round(time.time() - started, 1)}, indent=2, ensure_ascii=False) + "\n")
    return counts
