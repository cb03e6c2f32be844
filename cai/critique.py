"""SL-CAI: answer, critique against a sampled principle, revise; several rounds per prompt.

Bai et al. 2022 (arXiv:2212.08073, section 3): a helpful-only model answers a red-team prompt,
then for each round a principle is drawn at random, the model critiques its latest answer
against it and rewrites the answer. Few-shot demonstrations go in front of each request, since
without them the model loses track of whose answer it is critiquing. The final revisions become
the SFT data (`messages`).

Prompts are handled in chunks: each step of a round (critique, then revision) goes to the engine
as one batch for the whole chunk, and a finished chunk is appended to `OUT/data.jsonl` at once.
A rerun continues after the last finished chunk.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from cai import constitution as constitutions
from cai import records
from cai.config import as_dict, opt
from cai.constitution import Constitution, Principle, sample_principles
from cai.errors import CaiError
from cai.generation import EngineConfig, SamplingParams, engine_kwargs, make_generator
from cai.prompts import Templates

TEMPLATES = ("critique.j2", "revision.j2")


@dataclass
class ReviseConfig(EngineConfig):
    """Options of `cai revise` (also the keys of its `--config` YAML)."""

    prompts: str = opt("", ".jsonl (id, prompt), .txt (one per line) or dataset:NAME_OR_DIR")
    out: str = opt("", "output folder: data.jsonl, manifest.json, skipped.jsonl")
    constitution: str | None = opt(None, "constitution YAML (default: constitutions/default.yaml)")
    principles: list[str] | None = opt(None, "comma-separated critique_revision ids to sample from")
    rounds: int = opt(4, "critique-revision rounds per prompt (the paper used 4)")
    few_shot: int = opt(2, "demonstrations from the constitution in front of each request")
    limit: int | None = opt(None, "only the first N prompts (after sharding)")
    shard: str | None = opt(None, "I/N: this machine's deterministic share of the prompts")
    chunk_size: int | None = opt(None, "prompts per engine call and per append to data.jsonl "
                                       "(default: --batch-size for hf, 64 for vllm and openai)")
    max_new_tokens: int = opt(256, "longest answer, critique or revision, in tokens")
    temperature: float = opt(0.7, "sampling temperature (paper: 1.0; lower keeps a 135M model "
                                  "on topic)")
    top_p: float = opt(0.95, "nucleus sampling mass")
    seed: int = opt(0, "seed for principles, few-shot choice and sampling")
    prompts_dir: str | None = opt(None, "folder with your own critique.j2 / revision.j2")
    prompt_column: str = opt("prompt", "column holding the prompt, for dataset: prompt sets")

    def __post_init__(self):
        if not self.prompts:
            raise CaiError("missing --prompts (a .jsonl, .txt or dataset:NAME)")
        if not self.out:
            raise CaiError("missing --out (the output folder)")
        if self.chunk_size is None:  # hf gains nothing from more than a batch; servers do
            self.chunk_size = self.batch_size if self.engine == "hf" else 64
        for name in ("rounds", "chunk_size", "batch_size"):
            if getattr(self, name) < (0 if name == "rounds" else 1):
                raise CaiError(f"--{name.replace('_', '-')} is too small: {getattr(self, name)}")
        if self.few_shot < 0:
            raise CaiError(f"--few-shot must be >= 0, got {self.few_shot}")


# Openers a model puts before a rewrite ("Sure, here is a revised response:") that are not part
# of the answer itself.
_BOILERPLATE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course|absolutely|alright)\b[,!.]*\s*)?"
    r"(?:(?:here(?:\s+is|\s+are|'s|’s)|below\s+is|i(?:'ve| have)\s+(?:rewritten|revised))\s+"
    r"(?:(?:a|an|the|my|your)\s+)?(?:\w+\s+){0,3}?"
    r"(?:revised|rewritten|new|updated|improved|edited|revision|rewrite)\b[^:\n]{0,60}:"
    r"|(?:revised|rewritten|new|updated|improved)\s+(?:response|answer|reply|version)\s*:"
    r"|revision\s*:|response\s*:)\s*",
    re.IGNORECASE)


def strip_boilerplate(text: str) -> str:
    """The revision without a leading "Here is the revised response:"-style opener or quotes."""
    text = _BOILERPLATE.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    return text


def revision_flag(revision: str, previous: str) -> str | None:
    """'empty' or 'unchanged' when a revision adds nothing, else None."""
    if not revision:
        return "empty"
    if " ".join(revision.split()).lower() == " ".join(previous.split()).lower():
        return "unchanged"
    return None


class Conversations:
    """Builds the chats of one critique-revision job from a constitution and templates."""

    def __init__(self, constitution: Constitution, templates: Templates, few_shot: int, seed: int):
        self.constitution, self.templates = constitution, templates
        self.few_shot, self.seed = few_shot, seed

    def critique_request(self, principle: Principle, prompt: str, response: str) -> str:
        return self.templates.render("critique.j2", principle=principle, prompt=prompt,
                                     response=response)

    def revision_request(self, principle: Principle, prompt: str, response: str,
                         critique: str) -> str:
        return self.templates.render("revision.j2", principle=principle, prompt=prompt,
                                     response=response, critique=critique)

    def demonstrations(self, key: str) -> list[dict]:
        """Few-shot turns in front of each request: whole rounds from the constitution."""
        examples = list(self.constitution.examples)
        if not examples or not self.few_shot:
            return []
        import random

        chosen = random.Random(f"{self.seed}:few-shot:{key}").sample(
            examples, min(self.few_shot, len(examples)))
        turns = []
        for ex in chosen:
            critique, revision = self.constitution.example_requests(ex)
            shown = Principle(id=ex.principle or "example", critique=critique, revision=revision)
            turns += [
                {"role": "user", "content": ex.prompt},
                {"role": "assistant", "content": ex.response},
                {"role": "user", "content": self.critique_request(shown, ex.prompt, ex.response)},
                {"role": "assistant", "content": ex.critique},
                {"role": "user", "content": self.revision_request(shown, ex.prompt, ex.response,
                                                                  ex.critique)},
                {"role": "assistant", "content": ex.revision},
            ]
        return turns

    def critique(self, key, principle, prompt, response) -> list[dict]:
        return self.demonstrations(key) + [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
            {"role": "user", "content": self.critique_request(principle, prompt, response)}]

    def revision(self, key, principle, prompt, response, critique) -> list[dict]:
        return self.critique(key, principle, prompt, response) + [
            {"role": "assistant", "content": critique},
            {"role": "user", "content": self.revision_request(principle, prompt, response,
                                                              critique)}]


def too_long(generator, convs: Conversations, items, principles, cfg) -> dict[str, str]:
    """Ids whose longest request cannot fit the model's context, with the reason.

    The longest request is the revision one: few-shot turns, the prompt, an answer and a
    critique of up to max_new_tokens each, then the revision itself.
    """
    if not generator.context_length:
        return {}
    longest = max(principles, key=lambda p: len(p.critique) + len(p.revision))
    worst = [convs.revision(it["id"], longest, it["prompt"], "", "") if cfg.rounds else
             [{"role": "user", "content": it["prompt"]}] for it in items]
    budget = generator.context_length - (3 if cfg.rounds else 1) * cfg.max_new_tokens
    lengths = generator.prompt_tokens(worst) or []
    return {it["id"]: f"needs {n} prompt tokens + {cfg.max_new_tokens} per generation, over the "
                      f"model's context of {generator.context_length}"
            for it, n in zip(items, lengths) if n > budget}


def revise_chunk(generator, convs: Conversations, items, principles, cfg, model_name,
                 constitution_name, on_step=lambda step: None) -> list[dict]:
    """Initial answers then `rounds` critique-revision rounds for a chunk of prompts.

    `on_step(label)` is called before each engine call, for progress display.
    """
    seed = zlib.crc32(f"{cfg.seed}:{items[0]['id']}".encode())

    def params(step: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p, seed=seed + step)

    prompts = [it["prompt"] for it in items]
    on_step("answer")
    latest = generator.chat([[{"role": "user", "content": p}] for p in prompts], params(0))
    initial = list(latest)
    drawn = [sample_principles(principles, it["id"], cfg.rounds, cfg.seed) for it in items]
    rounds = [[] for _ in items]
    for r in range(cfg.rounds):
        chosen = [d[r] for d in drawn]
        on_step(f"round {r + 1}/{cfg.rounds} critique")
        critiques = generator.chat([convs.critique(it["id"], p, it["prompt"], a)
                                    for it, p, a in zip(items, chosen, latest)], params(2 * r + 1))
        on_step(f"round {r + 1}/{cfg.rounds} revision")
        revisions = generator.chat([convs.revision(it["id"], p, it["prompt"], a, c)
                                    for it, p, a, c in zip(items, chosen, latest, critiques)],
                                   params(2 * r + 2))
        for i, (p, c, raw) in enumerate(zip(chosen, critiques, revisions)):
            revision = strip_boilerplate(raw)
            flag = revision_flag(revision, latest[i])
            rounds[i].append({"principle_id": p.id, "critique": c, "revision": revision,
                              "flag": flag})
            if flag != "empty":
                latest[i] = revision
    out = []
    for it, first, final, rs in zip(items, initial, latest, rounds):
        extra = {k: v for k, v in it.items() if k not in ("id", "prompt")}
        out.append({"id": it["id"], "prompt": it["prompt"], **extra, "initial_response": first,
                    "rounds": rs, "response": final,
                    "messages": [{"role": "user", "content": it["prompt"]},
                                 {"role": "assistant", "content": final}],
                    "model": model_name, "constitution": constitution_name})
    return out


def run(cfg: ReviseConfig, generator=None) -> dict:
    """Run (or resume) a critique-revision job; returns the run's stats."""
    # Everything the job reads is validated before the model loads or anything is generated.
    constitution = constitutions.load(cfg.constitution)
    principles = constitution.restrict("critique_revision", cfg.principles)
    templates = Templates(cfg.prompts_dir)
    for name in TEMPLATES:  # render once with dummy values: a missing variable fails here
        dummy = principles[0]
        templates.render(name, principle=dummy, prompt="?", response="?", critique="?")
    items = records.select_shard(records.load_prompts(cfg.prompts, cfg.prompt_column), cfg.shard)
    if cfg.limit is not None:
        items = items[:cfg.limit]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model_name = str(cfg.model or "smollm2-135m-instruct")
    identity = {
        "prompts": records.file_sha256(cfg.prompts) if Path(cfg.prompts).is_file() else cfg.prompts,
        "constitution": constitution.sha256, "principles": [p.id for p in principles],
        "templates": records.text_sha256(templates.fingerprint(TEMPLATES)),
        "model": model_name, "engine": cfg.engine, "rounds": cfg.rounds, "few_shot": cfg.few_shot,
        "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
        "seed": cfg.seed, "shard": cfg.shard,
    }
    manifest = records.Manifest(out, "revise", identity, as_dict(cfg))
    done = records.done_ids(out)
    todo = [it for it in items if it["id"] not in done]
    manifest.save(status="running", total=len(items))
    if not todo:
        print(f"cai revise: all {len(items)} prompts already done in {out}")
        manifest.save(status="complete")
        return {"written": 0, "skipped": 0}

    generator = generator or make_generator(cfg.engine, cfg.model, **engine_kwargs(cfg))
    convs = Conversations(constitution, templates, cfg.few_shot, cfg.seed)
    skips = too_long(generator, convs, todo, principles, cfg)
    tokens0, seconds0 = generator.stats.generated_tokens, generator.stats.generation_seconds
    written = 0
    with records.JsonlWriter(out / records.SKIPPED) as skipped:
        skipped.write([{"id": i, "reason": r} for i, r in skips.items()])
    todo = [it for it in todo if it["id"] not in skips]
    bar = tqdm(total=len(todo), desc="revise", unit="prompt", dynamic_ncols=True)
    try:
        with records.JsonlWriter(out / records.DATA) as writer:
            def show(step: str) -> None:
                stats = generator.stats
                rate = stats.generated_tokens / max(stats.generation_seconds, 1e-9)
                bar.set_postfix_str(f"{step}, {rate:.1f} tok/s")

            for start in range(0, len(todo), cfg.chunk_size):
                chunk = todo[start:start + cfg.chunk_size]
                writer.write(revise_chunk(generator, convs, chunk, principles, cfg, model_name,
                                          constitution.name, on_step=show))
                written += len(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
        run_stats = {"written": written, "skipped": len(skips),
                     "generated_tokens": generator.stats.generated_tokens - tokens0,
                     "generation_seconds": round(generator.stats.generation_seconds - seconds0, 3)}
        manifest.add_run(**run_stats)
    complete = len(records.done_ids(out)) >= len(items)
    manifest.save(status="complete" if complete else "partial")
    return run_stats
