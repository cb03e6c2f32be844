import pytest
import torch

from cai.foundation.errors import CaiError
from cai.generation import SamplingParams, make_generator

CONVS = [[{"role": "user", "content": "Hello there, how are you today?"}],
         [{"role": "user", "content": "Hi"}],
         [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}]]


@pytest.fixture(scope="module")
def gen(tiny_model):
    return make_generator("hf", str(tiny_model), dtype="float32", batch_size=2)


def test_chat_returns_one_answer_per_conversation_in_order(gen):
    params = SamplingParams(max_new_tokens=8, temperature=0)
    together = gen.chat(CONVS, params)
    alone = [gen.chat([c], params)[0] for c in CONVS]
    assert len(together) == 3 and all(isinstance(t, str) for t in together)
    assert together == alone  # greedy: batching and left padding change nothing
    assert gen.stats.generated_tokens > 0 and gen.stats.generation_seconds > 0


def test_seeded_sampling_is_reproducible(gen):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    assert gen.chat(CONVS, params) == gen.chat(CONVS, params)
    other = gen.chat(CONVS, SamplingParams(max_new_tokens=12, temperature=1.0, seed=4))
    assert other != gen.chat(CONVS, params)


def test_choice_logprobs_match_a_full_forward(gen):
    choices = ["(A)", "(B)", " maybe"]
    got = gen.choice_logprobs(CONVS, choices)
    tok, model = gen.tokenizer, gen.model
    for conv, row in zip(CONVS, got):
        prompt = gen.encode(conv)
        for choice, value in zip(choices, row):
            ids = tok(choice, add_special_tokens=False)["input_ids"]
            full = torch.tensor([prompt + ids], device=model.device)
            with torch.no_grad():
                logps = torch.log_softmax(model(full).logits[0].float(), -1)
            expected = sum(logps[len(prompt) - 1 + j, t].item() for j, t in enumerate(ids))
            assert value == pytest.approx(expected, abs=1e-4)
            assert value < 0


def test_prompt_tokens_and_context(gen):
    counts = gen.prompt_tokens(CONVS)
    assert counts[1] < counts[0] < counts[2]
    assert gen.context_length == 4096


def test_bad_engine_and_params():
    with pytest.raises(CaiError, match="unknown engine 'tpu'"):
        make_generator("tpu")
    with pytest.raises(CaiError, match="top_p"):
        SamplingParams(top_p=0)


def test_shared_context_scoring_equals_one_sequence_per_choice(gen):
    """Choices of one question scored from one pass over its context (KV cache copied per
    choice) give the log-probs of scoring each context + choice as its own sequence; choices of
    one, two and three tokens, contexts of different lengths in one batch, and a context used
    once (which takes the plain path)."""
    import random

    from cai.generation.hf import _whole_logprobs, continuation_logprobs, shared_prefix_logprobs

    rng = random.Random(0)
    contexts, targets = [], []
    for _ in range(5):
        context = [rng.randrange(100, 5000) for _ in range(rng.randrange(4, 30))]
        for choice in ([17, 33, 9], [17, 34, 9], [50], [17, 33]):
            contexts.append(context)
            targets.append(choice)
    contexts.append([7, 8, 9])
    targets.append([11, 12])
    pad = gen.tokenizer.pad_token_id
    plain = _whole_logprobs(gen.model, pad, contexts, targets, 4)
    shared = shared_prefix_logprobs(gen.model, pad, contexts, targets, 3)
    mixed = continuation_logprobs(gen.model, pad, contexts, targets, 3)
    assert shared == pytest.approx(plain, abs=1e-4)
    assert mixed == pytest.approx(plain, abs=1e-4)
    assert len(set(round(v, 3) for v in plain)) > 10  # the values depend on the choice


def test_a_shared_head_runs_once_and_changes_nothing(gen):
    """Contexts that start with the same long head (a judge's few-shot turns), two different
    heads, rests of different lengths: scored through the head's cache they give the plain
    log-probs, the model sees each head once per call, and a memo kept from call to call (the
    engine's) runs no head the second time."""
    import random

    from cai.generation import hf

    rng = random.Random(1)
    heads = [[rng.randrange(100, 5000) for _ in range(40)] for _ in range(2)]
    contexts, targets = [], []
    for head in heads:
        for n in (1, 3, 9, 20):
            context = head + [rng.randrange(100, 5000) for _ in range(n)]
            for choice in ([17, 33, 9], [50]):
                contexts.append(context)
                targets.append(choice)
    pad = gen.tokenizer.pad_token_id
    plain = hf._whole_logprobs(gen.model, pad, contexts, targets, 4)
    memo, fed = {}, []
    for _ in range(2):
        seen = []
        hook = gen.model.register_forward_pre_hook(
            lambda module, args, kwargs, seen=seen: seen.append(kwargs["input_ids"].shape),
            with_kwargs=True)
        try:
            shared = hf.shared_prefix_logprobs(gen.model, pad, contexts, targets, 3, memo,
                                               [40] * len(contexts))
        finally:
            hook.remove()
        assert shared == pytest.approx(plain, abs=1e-4)
        fed.append(sum(shape[0] * shape[1] for shape in seen))
    distinct = sum(len(c) for c in set(map(tuple, contexts)))
    assert fed[0] < distinct  # each head ran once, not once per context
    assert fed[1] == fed[0] - 80 and len(memo) == 2


def test_few_shot_scores_do_not_depend_on_the_other_conversations(tiny_model):
    """The head is the conversation's earlier turns, so at batch size 1 a conversation scores
    the same alone, with others, and as a plain single-turn request would."""
    one = make_generator("hf", str(tiny_model), dtype="float32", batch_size=1)
    shots = [{"role": "user", "content": "Is the sky green?"}, {"role": "assistant",
                                                                 "content": "(B)"}] * 4
    convs = [shots + [{"role": "user", "content": q}] for q in ("Is fire cold?", "Is ice hot?")]
    together = one.choice_logprobs(convs, ["(A)", "(B)"])
    alone = [one.choice_logprobs([c], ["(A)", "(B)"])[0] for c in convs]
    assert together == alone
    assert one._head(convs[0], one.encode(convs[0])) > 16
    plain = make_generator("hf", str(tiny_model), dtype="float32", batch_size=1)
    plain._head = lambda conversation, ids: 0  # no head: every context as one sequence
    flat = [v for row in plain.choice_logprobs(convs, ["(A)", "(B)"]) for v in row]
    assert flat == pytest.approx([v for row in together for v in row], rel=1e-4)


def test_per_conversation_seeds_make_each_answer_its_own(tiny_model):
    """With `seeds`, an answer depends on its own seed only: not on the other conversations of
    the call, nor on how they are batched (so a resumed or re-chunked job samples the same)."""
    alone = make_generator("hf", str(tiny_model), dtype="float32", batch_size=1)
    batched = make_generator("hf", str(tiny_model), dtype="float32", batch_size=3)

    def params(seeds):
        return SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seeds=seeds)

    every = alone.chat(CONVS, params([11, 12, 13]))
    assert [alone.chat([c], params([s]))[0] for c, s in zip(CONVS, [11, 12, 13])] == every
    assert alone.chat(CONVS[::-1], params([13, 12, 11])) == every[::-1]
    assert alone.chat(CONVS, params([11, 99, 13]))[1] != every[1]
    # the same conversation twice, two seeds: two different samples
    twice = alone.chat([CONVS[0], CONVS[0]], params([1, 2]))
    assert twice[0] != twice[1]
    # in a batch, padding moves logits only by float rounding: the draws stay the same
    assert batched.chat(CONVS, params([11, 12, 13])) == every


def test_bfloat16_choice_scores_keep_float32_logits(tiny_model):
    """A bfloat16 head rounds logits near 20 to steps of 0.125; the judge's and labeler's scores
    read the head in float32, so they match a float64 head on the same hidden state."""
    gen = make_generator("hf", str(tiny_model), dtype="bfloat16", batch_size=1)
    head = gen.model.get_output_embeddings()
    with torch.no_grad():
        head.weight.mul_(40)  # logits in the tens, where bfloat16's step is 0.0625-0.125
    choices = ["A", "B"]
    ids = [gen.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    assert all(len(i) == 1 for i in ids)
    got = gen.choice_logprobs(CONVS, choices)
    seen = {}
    handle = head.register_forward_hook(lambda m, args, out: seen.update(h=args[0], out=out))
    worst_bf16 = 0.0
    try:
        for conv, row in zip(CONVS, got):
            prompt = torch.tensor([gen.encode(conv)])
            with torch.no_grad():
                gen.model(input_ids=prompt, logits_to_keep=1)
            exact = torch.log_softmax(seen["h"][0, -1].double() @ head.weight.double().T, -1)
            rounded = torch.log_softmax(seen["out"][0, -1].float(), -1)
            for (token,), value in zip(ids, row):
                assert value == pytest.approx(exact[token].item(), abs=2e-3)
                worst_bf16 = max(worst_bf16, abs(rounded[token].item() - exact[token].item()))
    finally:
        handle.remove()
    assert head.weight.dtype == torch.bfloat16
    assert worst_bf16 > 0.01  # the rounding the float32 head avoids is real here
