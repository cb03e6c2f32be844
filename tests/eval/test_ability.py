"""cai.eval.ability: MC accuracy and perplexity against a direct, one-sequence-at-a-time
computation on the tiny model, and the neutral data files."""

import math

import pytest
from conftest import ROOT

from cai.eval import ability as A
from cai.foundation.errors import CaiError

DATA = ROOT / "data" / "eval"


@pytest.fixture(scope="module")
def tiny_lm(tiny_model):
    from cai.foundation.model_store import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_model, dtype="float32"), load_tokenizer(tiny_model)


def _direct_logprob(lm, context, target):
    import torch

    with torch.no_grad():
        logits = lm(torch.tensor([context + target])).logits[0].float()      # (T, V)
    logps = torch.log_softmax(logits, dim=-1)
    return sum(logps[len(context) - 1 + k, t].item() for k, t in enumerate(target))


def test_mc_logprobs_and_accuracy_match_a_direct_computation(tiny_lm):
    from cai.generation.base import encode_chat

    lm, tok = tiny_lm
    questions = A.load_mc(DATA / "neutral_mc.jsonl")[:3]
    got = A.mc_logprobs(lm, tok, questions, batch_size=5)  # batches mix questions and lengths
    for q, logps in zip(questions, got):
        context = encode_chat(tok, [{"role": "user", "content": q["question"]}])
        assert len(logps) == len(q["choices"])
        for choice, lp in zip(q["choices"], logps):
            target = tok(choice, add_special_tokens=False)["input_ids"]
            assert lp == pytest.approx(_direct_logprob(lm, context, target), abs=1e-4)
    acc = A.mc_accuracy(questions, got)
    right = sum(max(range(len(lps)), key=lps.__getitem__) == q["answer"]
                for q, lps in zip(questions, got))
    assert acc["accuracy"] == pytest.approx(right / 3) and acc["n"] == 3
    assert acc["chance"] == pytest.approx(0.25)


def test_perplexity_matches_a_direct_computation(tiny_lm):
    lm, tok = tiny_lm
    paragraphs = A.load_text(DATA / "neutral_text.txt")[:3]
    scores = A.text_nll(lm, tok, paragraphs, batch_size=2)
    nll = tokens = 0
    for p, s in zip(paragraphs, scores):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        want = -_direct_logprob(lm, ids[:1], ids[1:])
        assert s["nll"] == pytest.approx(want, rel=1e-5) and s["tokens"] == len(ids) - 1
        nll, tokens = nll + want, tokens + len(ids) - 1
    ppl = A.perplexity(scores)
    assert ppl["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert ppl["paragraphs"] == 3 and ppl["tokens"] == tokens
    # a random tiny model is close to uniform over SmolLM2's 49k-token vocabulary
    assert 1e3 < ppl["perplexity"] < 1e6


def test_mc_accuracy_by_hand():
    qs = [{"choices": ["a", "bbbb"], "answer": 1}, {"choices": ["x", "y", "z"], "answer": 0},
          {"choices": ["p", "q"], "answer": 0}]
    logps = [[-1.0, -2.0], [-0.5, -1.0, -3.0], [-1.0, -1.0]]  # the last is a tie: wrong
    out = A.mc_accuracy(qs, logps)
    assert out["accuracy"] == pytest.approx(1 / 3)
    # per character, "bbbb" has -0.5 against -1.0: right
    assert out["accuracy_norm"] == pytest.approx(2 / 3)
    assert out["chance"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)


def test_bad_neutral_files_name_the_line(tmp_path):
    bad = tmp_path / "mc.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 2}\n{"question": 1}\n')
    with pytest.raises(CaiError, match=r"mc.jsonl:1: 'answer' must be .*\n.*mc.jsonl:2: needs"):
        A.load_mc(bad)
    (tmp_path / "t.txt").write_text("\n \n")
    with pytest.raises(CaiError, match="no text"):
        A.load_text(tmp_path / "t.txt")
