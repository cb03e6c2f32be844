"""`cai train rs`: rejection-sampling fine-tuning on a two-sided reward, no value network.

Each round:

1. **Sample** K answers per prompt from the current policy (the start model in round 1, the
   previous round's merged model after), on a pool that mixes prompt sets in chosen numbers
   (`rs.prompts`: `PATH` or `PATH:N`, N drawn at random with the config's seed).
2. **Grade** each answer with the two-sided reward (`cai.scoring.rewards.two_sided_reward`):
   the constitutional classifier's P(decline) of the prompt and P(refuses) of the answer, so a
   refusal is paid where the request is one to decline and charged where it is not.
3. **Choose** the best of the K per prompt (`best_of`); a prompt whose best reward is under
   `rs.min_reward` gives no row (no sample did the right thing).
4. **Fine-tune** on the chosen answers with `cai train sft` (the `sft:` options of this section,
   such as the KL term to the start model, apply), into `OUTPUT_DIR/round-N`; the last round's
   adapter is also the run's result in OUTPUT_DIR.

`OUTPUT_DIR/round-N/samples.jsonl` keeps every answer with its reward and `chosen.jsonl` the
rows trained on; a killed run resumes at the step it was in (sampling is redone for a round
whose samples were not all written; training resumes from its checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from cai.foundation.errors import CaiError
from cai.foundation.options import opt
from cai.train import config as train_config
from cai.train.config import SFTSection, TrainConfig

SAMPLES, CHOSEN, DONE = "samples.jsonl", "chosen.jsonl", "round.json"


@dataclass
class RSSection(SFTSection):
    classifier: str = opt("", "constitutional classifier folder (`cai train classifier`) that "
                              "grades the answers")
    reward_weights: dict = opt(factory=dict, help="weight of each reward part by principle id "
                                                  "(harmful-help, needless-refusal; default 1)")
    prompts: list[str] = opt(factory=list, help="the prompt pool: PATH (every prompt) or "
                                                "PATH:N (N drawn at random), one entry per set")
    samples: int = opt(4, minimum=2, help="answers sampled per prompt (K)")
    rounds: int = opt(1, minimum=1, help="sample-grade-train rounds")
    temperature: float = opt(1.0, minimum=0, help="sampling temperature")
    top_p: float = opt(1.0, minimum=0, help="nucleus sampling")
    max_new_tokens: int = opt(96, minimum=1, help="longest sampled answer, in tokens")
    min_reward: float = opt(0.0, help="a prompt whose best answer scores under this gives no row")
    generation_batch_size: int = opt(32, minimum=1, help="sequences per generate call")

    def __post_init__(self):
        super().__post_init__()
        from cai.scoring.rewards import check_weights

        check_weights(self.reward_weights, "rs.reward_weights")


def load_config(path: str | None, overrides: list[tuple[str, str]]) -> TrainConfig:
    cfg = train_config.load(path, overrides, "rs", RSSection)
    if not cfg.options.classifier:
        raise CaiError(f"{cfg.source}: missing rs.classifier (a `cai train classifier` folder)")
    if not cfg.options.prompts:
        raise CaiError(f"{cfg.source}: missing rs.prompts (the prompt pool: PATH or PATH:N)")
    return cfg


def best_of(rewards: list[float], min_reward: float) -> int | None:
    """Index of the highest reward (the first on ties), or None when it is under min_reward."""
    if not rewards:
        return None
    best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
    return best if rewards[best] >= min_reward else None


def prompt_pool(entries: list[str], seed: int) -> list[dict]:
    """`PATH` or `PATH:N` entries: every prompt of a set, or N drawn at random (seeded)."""
    from cai.foundation.inputs import load_prompts

    pool, seen = [], set()
    for entry in entries:
        path, _, count = entry.rpartition(":") if entry.rsplit(":", 1)[-1].isdigit() \
            else (entry, "", "")
        rows = load_prompts(path)
        if count:
            rows = random.Random(f"{seed}:{path}").sample(rows, min(int(count), len(rows)))
        source = Path(path).stem
        for r in rows:
            if r["prompt"] not in seen:
                seen.add(r["prompt"])
                pool.append({"id": f"{source}:{r['id']}", "prompt": r["prompt"],
                             "source": source})
    if not pool:
        raise CaiError("rs.prompts: the pool is empty")
    return pool


def sample_and_grade(model: str, pool: list[dict], opts: RSSection, dtype: str, seed: int,
                     folder: Path, log) -> list[dict]:
    """Every prompt's K answers with their rewards, written to folder/samples.jsonl."""
    from tqdm.auto import tqdm

    from cai.foundation.records import atomic_write_text
    from cai.generation import SamplingParams, item_seeds, make_generator
    from cai.scoring.classifier import Classifier
    from cai.scoring.rewards import two_sided_reward

    path = folder / SAMPLES
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if len(rows) == len(pool):
            return rows
    k = opts.samples
    generator = make_generator("hf", model, dtype=dtype, batch_size=opts.generation_batch_size)
    keys = [f"{p['id']}:{j}" for p in pool for j in range(k)]
    chats = [[{"role": "user", "content": p["prompt"]}] for p in pool for _ in range(k)]
    answers: list[str] = []
    step = opts.generation_batch_size * 4
    with tqdm(total=len(chats), desc="rs: sampling", unit="answer") as bar:
        for b in range(0, len(chats), step):  # in slices, for the progress bar
            part = chats[b:b + step]
            answers += generator.chat(part, SamplingParams(
                max_new_tokens=opts.max_new_tokens, temperature=opts.temperature,
                top_p=opts.top_p, seeds=item_seeds(seed, keys[b:b + step])))
            bar.update(len(part))
    generator.close()
    log(f"cai train rs: sampled {len(answers)} answers to {len(pool)} prompts")
    clf = Classifier.load(opts.classifier)
    declines = clf.p_decline([p["prompt"] for p in pool])
    refusals = clf.p_refuses([p["prompt"] for p in pool for _ in range(k)], answers)
    rows = []
    for i, p in enumerate(pool):
        cands = []
        for j in range(k):
            r = refusals[i * k + j]
            cands.append({"response": answers[i * k + j], "p_refuses": round(r, 4),
                          "reward": round(two_sided_reward(declines[i], r,
                                                           opts.reward_weights), 4)})
        rows.append({**p, "p_decline": round(declines[i], 4), "candidates": cands})
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def choose(rows: list[dict], min_reward: float) -> list[dict]:
    """The SFT rows: each prompt's best answer, where it reaches min_reward."""
    out = []
    for r in rows:
        best = best_of([c["reward"] for c in r["candidates"]], min_reward)
        if best is not None:
            out.append({"id": r["id"], "kind": r["source"], "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["candidates"][best]["response"]}]})
    return out


def train(cfg: TrainConfig, resume: bool = False, callbacks=None) -> dict:
    """Run `cai train rs` from a resolved config; returns the last round's metrics and counts."""
    from cai.foundation.records import atomic_write_text
    from cai.train import sft
    from cai.train.export import export

    opts = cfg.options
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    train_config.save_resolved(cfg, out)
    pool = prompt_pool(opts.prompts, cfg.training.get("seed", 0))
    model = cfg.model.name or "smollm2-135m-instruct"
    sft_fields = {f.name for f in dataclasses.fields(SFTSection)}
    sft_opts = SFTSection(**{k: v for k, v in dataclasses.asdict(opts).items()
                             if k in sft_fields})
    summary: dict = {"rounds": []}
    metrics: dict = {}
    for n in range(1, opts.rounds + 1):
        folder = out / f"round-{n}"
        folder.mkdir(exist_ok=True)
        state = folder / DONE
        if state.is_file():
            done = json.loads(state.read_text())
            summary["rounds"].append(done["summary"])
            metrics, model = done["metrics"], done["model"]
            continue
        rows = sample_and_grade(model, pool, opts, cfg.model.dtype,
                                cfg.training.get("seed", 0) + n, folder, print)
        chosen = choose(rows, opts.min_reward)
        if not chosen:
            raise CaiError(f"cai train rs: round {n}: no prompt's best answer reached "
                           f"rs.min_reward {opts.min_reward}")
        atomic_write_text(folder / CHOSEN, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                   for r in chosen))
        round_cfg = dataclasses.replace(
            cfg, algo="sft", options=sft_opts,
            model=dataclasses.replace(cfg.model, name=model),
            data=dataclasses.replace(cfg.data, path=str(folder / CHOSEN)),
            training={**cfg.training, "output_dir": str(folder / "sft")})
        metrics = sft.train(round_cfg, resume=(folder / "sft").is_dir(), callbacks=callbacks)
        info = round_summary(rows, chosen)
        summary["rounds"].append(info)
        print(f"cai train rs: round {n}: {info}")
        merged = folder / "merged"
        if n < opts.rounds:
            shutil.rmtree(merged, ignore_errors=True)
            export(folder / "sft", merged, merge=True)
            model = str(merged)
        atomic_write_text(state, json.dumps({"summary": info, "metrics": metrics,
                                             "model": model}) + "\n")
    last = out / f"round-{opts.rounds}" / "sft"
    for f in last.iterdir():  # the run's result: the last round's adapter, where sft puts it
        if f.is_file():
            shutil.copy2(f, out / f.name)
    atomic_write_text(out / "rs_summary.json", json.dumps(summary, indent=2) + "\n")
    return {**metrics, "rs_rounds": summary["rounds"]}


def round_summary(rows: list[dict], chosen: list[dict]) -> dict:
    """Per prompt source: prompts, rows kept, mean best reward, share of chosen that refuse."""
    by: dict = {}
    kept = {r["id"] for r in chosen}
    for r in rows:
        s = by.setdefault(r["source"], {"prompts": 0, "kept": 0, "best_reward": 0.0,
                                        "chosen_refuses": 0})
        best = max(r["candidates"], key=lambda c: c["reward"])
        s["prompts"] += 1
        s["best_reward"] += best["reward"]
        if r["id"] in kept:
            s["kept"] += 1
            s["chosen_refuses"] += best["p_refuses"] > 0.5
    for s in by.values():
        s["best_reward"] = round(s["best_reward"] / s["prompts"], 3)
    return by
