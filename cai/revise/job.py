"""SL-CAI: answer, critique against a sampled principle, revise, check; several rounds a prompt.

Bai et al. 2022 (arXiv:2212.08073, section 3): a helpful-only model (the *policy*) answers a
red-team prompt, then for each round a principle is drawn at random, a *feedback model* (by
default the policy itself, as in the paper) critiques the latest answer against it and rewrites
the answer. Few-shot demonstrations go in front of each request. The final revisions become the
SFT data (`messages`), mixed with the policy's own answers to ordinary requests
(`--helpful-prompts`) so that the SFT model keeps its helpfulness (the paper's SL-CAI model was
trained on revisions and on helpful samples).

The critique request quotes the conversation it critiques, so a feedback model that did not
write the answer knows what it is judging. Each round's revision is checked by a *gate*
(`cai.revise.gate`): the feedback model compares it with the answer it replaces on the
constitution's preference questions, in both orders (`cai.scoring.preference.score`); a revision
it does not prefer is not taken (both are kept in the record, with the score). Revisions the
gate prefers to the first answer also make preference pairs (`pairs.jsonl`, revision chosen
over initial answer) for DPO or a preference model.

Prompts are handled in chunks: each step of a round goes to the engines as one batch for the
whole chunk, and a finished chunk is appended to `OUT/data.jsonl` at once. A rerun continues
after the last finished chunk.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from cai import constitution as constitutions
from cai.constitution import Constitution, Principle, sample_principles
from cai.foundation import lock, records
from cai.foundation.inputs import helpful_sample, load_prompts, source_id, sources_id
from cai.foundation.manifest import Manifest, text_sha256
from cai.foundation.model_store import DEFAULT_MODEL
from cai.foundation.options import as_dict
from cai.foundation.shards import select_shard
from cai.foundation.templates import Templates
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
from cai.revise.config import ReviseConfig
from cai.revise.gate import Gate, make_gate, revision_flag, round_outcome, strip_boilerplate

TEMPLATES = ("critique.j2", "revision.j2")
PAIRS = "pairs.jsonl"


class Conversations:
    """Builds the chats of one critique-revision job from a constitution and templates.

    A critique chat is the demonstrations, then one user turn that quotes the conversation and
    asks the critique question; the revision chat continues it with the critique and the
    revision request, so it extends the critique chat token for token (the hf engine reuses the
    cached prefix).
    """

    def __init__(self, constitution: Constitution, templates: Templates, few_shot: int, seed: int):
        self.constitution, self.templates = constitution, templates
        self.few_shot, self.seed = few_shot, seed
        #: the demonstrations' revisions: a revision that repeats one is flagged 'copied'
        self.revisions = tuple(ex.revision for ex in constitution.examples) if few_shot else ()

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
        chosen = random.Random(f"{self.seed}:few-shot:{key}").sample(
            examples, min(self.few_shot, len(examples)))
        turns = []
        for ex in chosen:
            critique, revision = self.constitution.example_requests(ex)
            shown = Principle(id=ex.principle or "example", critique=critique, revision=revision)
            turns += [
                {"role": "user", "content": self.critique_request(shown, ex.prompt, ex.response)},
                {"role": "assistant", "content": ex.critique},
                {"role": "user", "content": self.revision_request(shown, ex.prompt, ex.response,
                                                                  ex.critique)},
                {"role": "assistant", "content": ex.revision},
            ]
        return turns

    def critique(self, key, principle, prompt, response) -> list[dict]:
        return self.demonstrations(key) + [
            {"role": "user", "content": self.critique_request(principle, prompt, response)}]

    def revision(self, key, principle, prompt, response, critique) -> list[dict]:
        return self.critique(key, principle, prompt, response) + [
            {"role": "assistant", "content": critique},
            {"role": "user", "content": self.revision_request(principle, prompt, response,
                                                              critique)}]


def too_long(policy: Generator, feedback: Generator, convs: Conversations, items: list[dict],
             principles, cfg: ReviseConfig) -> dict[str, str]:
    """Ids whose longest request cannot fit a model's context, with the reason.

    The policy's request is the prompt alone; the feedback model's longest is the revision one:
    few-shot turns, the prompt, an answer and a critique of up to max_new_tokens each, then the
    revision itself.
    """
    out = {}
    checks = [(policy, [[{"role": "user", "content": it["prompt"]}] for it in items], 1)]
    if cfg.rounds:
        longest = max(principles, key=lambda p: len(p.critique) + len(p.revision))
        checks.append((feedback, [convs.revision(it["id"], longest, it["prompt"], "", "")
                                  for it in items], 3))
    for model, worst, generations in checks:
        if not model.context_length:
            continue
        budget = model.context_length - generations * cfg.max_new_tokens
        for it, n in zip(items, model.prompt_tokens(worst) or []):
            if n > budget and it["id"] not in out:
                out[it["id"]] = (f"needs {n} prompt tokens + {cfg.max_new_tokens} per generation, "
                                 f"over the model's context of {model.context_length}")
    return out


def revise_chunk(policy: Generator, feedback: Generator, convs: Conversations, items: list[dict],
                 principles, cfg: ReviseConfig, names: dict, gate: Gate | None = None,
                 on_step: Callable[[str], None] = lambda step: None) -> list[dict]:
    """Initial answers (policy), then `rounds` critique-revision rounds (feedback model), each
    revision checked by the gate, for a chunk of prompts.

    `on_step(label)` is called before each engine call, for progress display. Each prompt's
    sampling seeds come from (seed, prompt id, step) alone, so chunking and resuming never
    change its text.
    """

    def params(step: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p,
                              seeds=item_seeds(cfg.seed, (f"{it['id']}:{step}" for it in items)))

    on_step("answer")
    latest = policy.chat([[{"role": "user", "content": it["prompt"]}] for it in items], params(0))
    initial = list(latest)
    drawn = [sample_principles(principles, it["id"], cfg.rounds, cfg.seed) for it in items]
    rounds = [[] for _ in items]
    for r in range(cfg.rounds):
        chosen = [d[r] for d in drawn]
        on_step(f"round {r + 1}/{cfg.rounds} critique")
        critiques = feedback.chat([convs.critique(it["id"], p, it["prompt"], a)
                                   for it, p, a in zip(items, chosen, latest)], params(2 * r + 1))
        on_step(f"round {r + 1}/{cfg.rounds} revision")
        revisions = feedback.chat([convs.revision(it["id"], p, it["prompt"], a, c)
                                   for it, p, a, c in zip(items, chosen, latest, critiques)],
                                  params(2 * r + 2))
        steps = []
        for i, (p, c, raw) in enumerate(zip(chosen, critiques, revisions)):
            revision = strip_boilerplate(raw)
            steps.append({"principle_id": p.id, "critique": c, "revision": revision,
                          "flag": revision_flag(revision, latest[i], convs.revisions)})
        asked = [i for i, st in enumerate(steps) if st["flag"] is None] if gate else []
        if asked:
            on_step(f"round {r + 1}/{cfg.rounds} gate")
        verdicts = dict(zip(asked, gate.judge(feedback, [
            {"key": f"{items[i]['id']}:gate:{r}", "prompt": items[i]["prompt"],
             "first": steps[i]["revision"], "second": latest[i]} for i in asked]))) if gate else {}
        for i, st in enumerate(steps):
            st.update(round_outcome(st["flag"], verdicts.get(i)))
            if st["accepted"]:
                latest[i] = st["revision"]
            rounds[i].append(st)
    # P(final better than initial): the gate's verdict when a single round's revision was taken
    # (it was compared with the initial answer), else asked now.
    p_final: list[float | None] = [None] * len(items)
    if gate:
        again = []
        for i, rs in enumerate(rounds):
            if latest[i] == initial[i]:
                continue
            if len(rs) == 1 and rs[0]["decided_by"] == "gate":
                p_final[i] = rs[0]["gate"]["p_revision"]
            else:
                again.append(i)
        if again:
            on_step("final gate")
        for i, p in zip(again, gate.p_better(feedback, [
                {"key": f"{items[i]['id']}:gate:final", "prompt": items[i]["prompt"],
                 "first": latest[i], "second": initial[i]} for i in again])):
            p_final[i] = None if p is None else round(p, 4)
    out = []
    for it, first, final, rs, p in zip(items, initial, latest, rounds, p_final):
        extra = {k: v for k, v in it.items() if k not in ("id", "prompt")}
        # With the gate on, a prompt none of whose revisions was taken has only its unrevised
        # answer: SFT must not learn that, so it gets no `messages` (the SFT reader skips it).
        kept = not gate or final != first
        out.append({"id": it["id"], "prompt": it["prompt"], **extra, "kind": "revision",
                    "initial_response": first, "rounds": rs, "response": final,
                    "p_response": p,
                    "messages": [{"role": "user", "content": it["prompt"]},
                                 {"role": "assistant", "content": final}] if kept else None,
                    **names})
    return out


def helpful_chunk(policy: Generator, items: list[dict], cfg: ReviseConfig, names: dict
                  ) -> list[dict]:
    """The policy's own answers to ordinary prompts: SFT samples that keep it helpful."""
    answers = policy.chat([[{"role": "user", "content": it["prompt"]}] for it in items],
                          SamplingParams(max_new_tokens=cfg.max_new_tokens,
                                         temperature=helpful_temperature(cfg), top_p=cfg.top_p,
                                         seeds=item_seeds(cfg.seed, (it["id"] for it in items))))
    return [{"id": it["id"], "prompt": it["prompt"], "kind": "helpful", "response": a,
             "messages": [{"role": "user", "content": it["prompt"]},
                          {"role": "assistant", "content": a}], **names}
            for it, a in zip(items, answers)]


def helpful_temperature(cfg: ReviseConfig) -> float:
    return cfg.temperature if cfg.helpful_temperature is None else cfg.helpful_temperature


def summarize(rows: list[dict], threshold: float) -> dict:
    """The manifest's counts over everything in the output folder."""
    steps = [st for r in rows for st in r.get("rounds", [])]
    gated = [st for st in steps if "gate" in st]
    return {"revised_prompts": sum(r.get("kind") != "helpful" for r in rows),
            "helpful_samples": sum(r.get("kind") == "helpful" for r in rows),
            "revisions": len(steps),
            "accepted": sum(st["gate"]["accepted"] for st in gated),
            "rejected": sum(not st["gate"]["accepted"] for st in gated),
            "unchanged": sum(st["flag"] == "unchanged" for st in steps),
            "empty": sum(st["flag"] == "empty" for st in steps),
            "copied": sum(st["flag"] == "copied" for st in steps),
            "changed_final": sum(r.get("kind") != "helpful" and
                                 r["response"] != r["initial_response"] for r in rows),
            "pairs": len(preference_pairs(rows, threshold))}


def preference_pairs(rows: list[dict], threshold: float) -> list[dict]:
    """Revision chosen over initial answer, where the gate preferred the final revision: the
    `prompt`/`chosen`/`rejected` records `cai train dpo` and `cai train rm` read."""
    return [{"id": r["id"], "prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["response"]}],
             "rejected": [{"role": "assistant", "content": r["initial_response"]}],
             "p_chosen": r["p_response"], "source": "revise", "model": r.get("model"),
             "feedback_model": r.get("feedback_model"), "constitution": r.get("constitution")}
            for r in rows if r.get("p_response") is not None and r["p_response"] > threshold]


def feedback_role(cfg: ReviseConfig) -> Role:
    """The feedback model's role: the policy's model unless it names its own (the paper's
    setting), on the policy's engine, server and key unless given its own."""
    role = beside(cfg.feedback, cfg.policy, "feedback")
    return dataclasses.replace(role, model=role.model or cfg.policy.model)


def make_engines(cfg: ReviseConfig, policy: Generator | None = None,
                 feedback: Generator | None = None) -> tuple[Generator, Generator]:
    """(policy, feedback model), built unless given; one generator when both are the same model
    on the same engine with the same options (the paper's setting)."""
    fb = feedback_role(cfg)
    fb_kwargs = engine_kwargs(fb, cfg.batch_size, cfg.concurrency)
    policy_kwargs = engine_kwargs(cfg.policy, cfg.batch_size, cfg.concurrency)
    same = (str(cfg.policy.model or DEFAULT_MODEL), cfg.policy.engine, policy_kwargs) == \
        (str(fb.model or DEFAULT_MODEL), fb.engine, fb_kwargs)
    if policy is None:
        policy = make_generator(cfg.policy.engine, cfg.policy.model, **policy_kwargs)
    if feedback is None:
        feedback = policy if same else make_generator(fb.engine, fb.model, **fb_kwargs)
    return policy, feedback


def run(cfg: ReviseConfig, generator: Generator | None = None,
        feedback: Generator | None = None) -> dict:
    """Run (or resume) a critique-revision job; returns the run's stats. `generator` is the
    policy, `feedback` the feedback model (default: built from the options)."""
    # Everything the job reads is validated before a model loads or anything is generated.
    constitution = constitutions.load(cfg.constitution)
    principles = constitution.restrict("critique_revision", cfg.principles)
    templates = Templates(cfg.prompts_dir)
    for name in TEMPLATES:  # render once with dummy values: a missing variable fails here
        templates.render(name, principle=principles[0], prompt="?", response="?", critique="?")
    gate = make_gate(cfg, constitution, templates)
    # both models' engine options fail here, before a load
    policy_kwargs = engine_kwargs(cfg.policy, cfg.batch_size, cfg.concurrency)
    fb = feedback_role(cfg)
    fb_kwargs = engine_kwargs(fb, cfg.batch_size, cfg.concurrency)
    items = select_shard(load_prompts(cfg.prompts, cfg.prompt_column), cfg.shard)
    if cfg.limit is not None:
        items = items[:cfg.limit]
    helpful = helpful_sample(cfg.helpful_prompts, cfg.helpful_ratio, len(items),
                             column=cfg.prompt_column, shard=cfg.shard, seed=cfg.seed)
    out = Path(cfg.out)
    names = {"model": str(cfg.policy.model or DEFAULT_MODEL),
             "feedback_model": str(cfg.feedback.model or cfg.policy.model or DEFAULT_MODEL),
             "constitution": constitution.name}
    identity = {
        "prompts": source_id(cfg.prompts, cfg.prompt_column),
        "prompt_column": cfg.prompt_column,
        "constitution": constitution.sha256, "principles": [p.id for p in principles],
        "templates": text_sha256(templates.fingerprint(TEMPLATES + ("feedback.j2",))),
        "model": names["model"], "rounds": cfg.rounds,
        **engine_identity("policy", cfg.policy, policy_kwargs),
        "few_shot": cfg.few_shot, "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed, "shard": cfg.shard,
        "limit": cfg.limit,
        "feedback_model": names["feedback_model"],
        **engine_identity("feedback", fb, fb_kwargs),
        "gate": [p.id for p in gate.pool] + [cfg.gate_questions, cfg.gate_threshold]
        if gate else None,
        **({"gate_compliance": [cfg.gate_max_complies, "checked first", text_sha256(
            templates.fingerprint(("judge_refusal.j2",)) + repr(gate.examples))]}
           if gate and gate.max_complies is not None else {}),
        "helpful": [sources_id(cfg.helpful_prompts, cfg.prompt_column), cfg.helpful_ratio,
                    helpful_temperature(cfg)] if helpful else None,
    }
    with lock.hold(out):  # no second job appends to this folder meanwhile
        manifest = Manifest(out, "revise", identity, as_dict(cfg))
        done = records.done_ids(out)
        todo = [it for it in items if it["id"] not in done]
        todo_helpful = [it for it in helpful if it["id"] not in done]
        manifest.expect(it["id"] for it in items + helpful)
        manifest.save(status="running")
        if not todo and not todo_helpful:
            print(f"cai revise: all {len(items) + len(helpful)} prompts already done in {out}")
            _finish(out, manifest, cfg)
            return {"written": 0, "skipped": 0}

        policy, feedback = make_engines(cfg, generator, feedback)
        engines = [policy] if feedback is policy else [policy, feedback]
        convs = Conversations(constitution, templates, cfg.few_shot, cfg.seed)
        skips = too_long(policy, feedback, convs, todo, principles, cfg)
        start = [(g.stats.generated_tokens, g.stats.generation_seconds) for g in engines]
        written = 0
        with records.JsonlWriter(out / records.SKIPPED) as skipped:
            skipped.write([{"id": i, "reason": r} for i, r in skips.items()])
        todo = [it for it in todo if it["id"] not in skips]
        bar = tqdm(total=len(todo) + len(todo_helpful), desc="revise", unit="prompt",
                   dynamic_ncols=True)
        try:
            with records.JsonlWriter(out / records.DATA) as writer:
                def show(step: str) -> None:
                    tokens = sum(g.stats.generated_tokens for g in engines)
                    seconds = sum(g.stats.generation_seconds for g in engines)
                    bar.set_postfix_str(f"{step}, {tokens / max(seconds, 1e-9):.1f} tok/s")

                for begin in range(0, len(todo), cfg.chunk_size):
                    chunk = todo[begin:begin + cfg.chunk_size]
                    writer.write(revise_chunk(policy, feedback, convs, chunk, principles, cfg,
                                              names, gate, on_step=show))
                    written += len(chunk)
                    bar.update(len(chunk))
                for begin in range(0, len(todo_helpful), cfg.chunk_size):
                    chunk = todo_helpful[begin:begin + cfg.chunk_size]
                    show("helpful answers")
                    writer.write(helpful_chunk(policy, chunk, cfg, names))
                    written += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
            run_stats = {"written": written, "skipped": len(skips),
                         "generated_tokens": sum(g.stats.generated_tokens - s[0]
                                                 for g, s in zip(engines, start)),
                         "generation_seconds": round(sum(g.stats.generation_seconds - s[1]
                                                         for g, s in zip(engines, start)), 3)}
            manifest.add_run(**run_stats)
        _finish(out, manifest, cfg)
        return run_stats


def _finish(out: Path, manifest, cfg: ReviseConfig) -> None:
    """pairs.jsonl and the manifest's summary, from every record in the folder."""
    rows = records.read_jsonl(out / records.DATA)
    pairs = preference_pairs(rows, cfg.gate_threshold)
    records.atomic_write_text(out / PAIRS, "".join(records.json_line(p) for p in pairs))
    manifest.save(status=manifest.status(records.done_ids(out)),
                  summary=summarize(rows, cfg.gate_threshold))
