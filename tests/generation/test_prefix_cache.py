"""KV-cache reuse between the hf engine's calls: the plan by hand, then the engine's answers with
reuse on against a fresh computation, on a tiny float32 model."""

import pytest

from cai.generation import SamplingParams
from cai.generation.hf import HFGenerator
from cai.generation.prefix_cache import INVALID, plan_reuse

X = INVALID


def test_plan_reuses_the_longest_cached_prefix_of_each_sequence():
    cached = [[X, X, 1, 2, 3, 4, 9, X],    # row 0 holds 1 2 3 4 9 (columns 2-6)
              [5, 6, 7, 8, 1, 2, X, X]]    # row 1 holds 5 6 7 8 1 2 (columns 0-5)
    sequences = [[5, 6, 7, 8, 1, 2, 3],    # extends row 1
                 [1, 2, 3, 4, 7, 7],       # leaves row 0 after four tokens
                 [1, 2, 3, 4, 9]]          # is row 0: its last token must still be fed
    plan = plan_reuse(cached, sequences, min_tokens=2)
    assert plan.rows == [1, 0, 0]
    assert plan.reused == [6, 4, 4]
    assert plan.keep == 6                  # the last reused column is 5 in both rows
    assert plan.mask == [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]


def test_plan_declines_when_little_would_be_reused():
    cached = [[1, 2, 3, 4, 5, 6]]
    assert plan_reuse(cached, [[1, 2, 9, 9, 9, 9, 9, 9]], min_tokens=1) is None  # 2 of 8 tokens
    assert plan_reuse(cached, [[1, 2, 3, 4, 9, 9, 9, 9]], min_tokens=1) is not None  # 4 of 8
    assert plan_reuse(cached, [[1, 2, 3, 4, 9, 9, 9, 9]], min_tokens=5) is None  # 4 a row
    assert plan_reuse(cached, [[7, 8]], min_tokens=1) is None
    assert plan_reuse([], [[1, 2]]) is None


LONG = ("Here is a long request that every later turn repeats, so that the cache has something "
        "worth keeping: please explain step by step how a bicycle gear system works, what the "
        "chain does, and why riders change gears when they climb a steep hill in the rain.")


def conversations(step: int, answers: list[str]) -> list[list[dict]]:
    """Three chats like a critique-revision job: a request, then the request with its answer
    and a follow-up, then the request with a different answer (shares only the first turn)."""
    firsts = [f"{LONG} Case {i}." + " More detail." * i for i in range(3)]
    if step == 0:
        return [[{"role": "user", "content": f}] for f in firsts]
    if step == 1:
        return [[{"role": "user", "content": f}, {"role": "assistant", "content": a},
                 {"role": "user", "content": "Critique that answer."}]
                for f, a in zip(firsts, answers)]
    return [[{"role": "user", "content": f}, {"role": "assistant", "content": "Something else."},
             {"role": "user", "content": "Rewrite it."}] for f in firsts]


@pytest.mark.parametrize("batch_size", [3, 2])
def test_reused_cache_gives_the_answers_of_a_fresh_pass(tiny_model, batch_size):
    on = HFGenerator(str(tiny_model), dtype="float32", batch_size=batch_size)
    off = HFGenerator(str(tiny_model), dtype="float32", batch_size=batch_size,
                      reuse_prefix=False)
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    # An extra end token, the third token of a greedy answer, makes rows end at different steps
    # (a random model rarely says end of sequence), so the cache holds columns past an end.
    probe = off.generate_ids(conversations(0, []), greedy)
    for gen in (on, off):
        gen.eos_token_ids = gen.eos_token_ids + [probe[0][2]]
    answers = []
    for step in range(3):
        convs = conversations(step, answers)
        got, want = on.generate_ids(convs, greedy), off.generate_ids(convs, greedy)
        assert got == want, f"step {step}"
        answers = [on.tokenizer.decode(t, skip_special_tokens=True) for t in got]
    assert any(len(t) < 8 for t in got)
    assert on.prefix.reused_tokens > 0.5 * on.prefix.prompt_tokens / 3
    assert off.prefix.reused_tokens == 0
    # A next chunk's first requests share only the chat template's system turn: no reuse.
    before = on.prefix.reused_tokens
    fresh = [[{"role": "user", "content": f"A new question {i}?"}] for i in range(3)]
    assert on.generate_ids(fresh, greedy) == off.generate_ids(fresh, greedy)
    assert on.prefix.reused_tokens == before


def test_seeded_sampling_with_reuse_matches_a_fresh_pass(tiny_model):
    on = HFGenerator(str(tiny_model), dtype="float32", batch_size=3)
    off = HFGenerator(str(tiny_model), dtype="float32", batch_size=3, reuse_prefix=False)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=5)
    first = conversations(0, [])
    answers = on.chat(first, params)
    assert answers == off.chat(first, params)
    before = on.prefix.reused_tokens
    second = conversations(1, answers)
    assert on.chat(second, params) == off.chat(second, params)
    assert on.prefix.reused_tokens > before


def test_growing_cache_layers_match_transformers_own_cache(tiny_model):
    """300 greedy steps, so the preallocated buffer is outgrown and copied at least once."""
    import torch
    from transformers import AutoModelForCausalLM

    from cai.foundation.model_store import pad_batch
    from cai.generation.prefix_cache import GrowingLayer, cache_kwarg, new_cache

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids, mask = pad_batch([[5, 6, 7, 8, 9] * 4, [11, 12, 13]], pad_id=0)
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=300, min_new_tokens=300,
                  do_sample=False, pad_token_id=0)
    cache = new_cache(model)
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    got = model.generate(**common, **{cache_kwarg(): cache})
    want = model.generate(**common)
    assert got.shape == (2, 320) and torch.equal(got, want)
    assert cache.get_seq_length() == 319
    assert cache.layers[0]._key_buffer.shape[-2] > 319  # reallocated past the first 276
