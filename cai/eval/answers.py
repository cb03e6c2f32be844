"""`cai eval`'s first pass: each model's answers to the prompt sets and its neutral ability,
one model in memory at a time, appended to the caches as they come."""

from __future__ import annotations

import gc

from tqdm.auto import tqdm

from cai.eval import ability as abilities
from cai.eval.config import EvalConfig
from cai.eval.summary import answer_id
from cai.foundation import records
from cai.generation import Generator, SamplingParams, engine_kwargs, item_seeds, make_generator

ANSWERS, ABILITY = "answers.jsonl", "ability.jsonl"


def _free_memory() -> None:
    """Collect a dropped model before loading the next (one model at a time is in memory)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _answer(gen: Generator, model: dict, todo: list[tuple[str, dict]], cfg: EvalConfig, writer,
            answers: dict) -> int:
    """Generate the missing answers of one model, chunk by chunk; returns how many."""
    tokenizer = getattr(gen, "tokenizer", None)
    bar = tqdm(total=len(todo), desc=f"answers {model['label']}", unit="answer",
               dynamic_ncols=True)
    try:
        for begin in range(0, len(todo), cfg.chunk_size):
            chunk = todo[begin:begin + cfg.chunk_size]
            seeds = item_seeds(cfg.seed, (f"{set_name}:{it['id']}" for set_name, it in chunk))
            texts = gen.chat([[{"role": "user", "content": it["prompt"]}] for _, it in chunk],
                             SamplingParams(max_new_tokens=cfg.max_new_tokens,
                                            temperature=cfg.temperature, top_p=cfg.top_p,
                                            seeds=seeds))
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


def _measure(model: dict, gen: Generator | None, mc: list[dict], paragraphs: list[int],
             texts: list[str], cfg: EvalConfig, writer, scores: dict) -> int:
    """MC log-probs and paragraph NLLs of one model; returns how many items were scored."""
    from cai.foundation.model_store import load_causal_lm, load_tokenizer

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


def models_pass(models, inputs, cfg, out, answers, scores, stats) -> None:
    """Answers and ability of each model, loading one model at a time, only when needed."""
    measure = cfg.ability and cfg.policy.engine != "openai"
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
                gen = make_generator(cfg.policy.engine, model["model"], **engine_kwargs(
                    cfg.policy, cfg.batch_size, cfg.concurrency))
                tokens0 = gen.stats.generated_tokens
                stats["new_answers"] += _answer(gen, model, todo, cfg, answer_writer, answers)
                stats["generated_tokens"] += gen.stats.generated_tokens - tokens0
                # The answering model also measures ability when it is a transformers model
                # in the ability dtype; otherwise it goes before a copy is loaded.
                if cfg.policy.engine != "hf" or cfg.policy.dtype != cfg.ability_dtype:
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
