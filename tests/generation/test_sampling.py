"""cai.generation.sampling: the drawn tokens follow the nucleus distribution exactly."""

import pytest
import torch

from cai.generation.sampling import SampleProcessor, sample


def nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The reference distribution, written the slow, obvious way: sort, cut, renormalize."""
    p = torch.softmax(logits.double() / temperature, -1)
    order = torch.argsort(p, descending=True)
    kept, mass = [], 0.0
    for i in order.tolist():
        kept.append(i)
        mass += p[i].item()
        if mass >= top_p:
            break
    out = torch.zeros_like(p)
    out[kept] = p[kept] / p[kept].sum()
    return out


@pytest.mark.parametrize("top_p,candidates", [(1.0, 256), (0.9, 256), (0.6, 256),
                                              (0.97, 5)])  # 5: the nucleus is not inside them
def test_draws_follow_the_nucleus_distribution(top_p, candidates):
    torch.manual_seed(0)
    logits = torch.randn(40) * 2
    want = nucleus(logits, 0.8, top_p)
    n = 40_000
    draws = sample(logits.expand(n, -1), 0.8, top_p, candidates=candidates)
    got = torch.bincount(draws, minlength=40).double() / n
    assert (got[want == 0] == 0).all()  # never outside the nucleus
    assert torch.allclose(got, want, atol=0.01)


def test_seeded_and_one_hot_processor():
    logits = torch.randn(3, 50)
    torch.manual_seed(7)
    a = sample(logits, 1.0, 0.9)
    torch.manual_seed(7)
    assert torch.equal(a, sample(logits, 1.0, 0.9))
    torch.manual_seed(7)
    scores = SampleProcessor(1.0, 0.9)(None, logits)
    assert torch.equal(scores.argmax(-1), a)
    assert (scores.isinf().sum(-1) == 49).all()  # only the drawn token survives
