"""cai.train.losses: hand-computed values and the reduction's properties."""

import math

import torch

from cai.train.losses import IGNORE_INDEX, sft_loss, token_logps, token_mean


def test_token_logps_by_hand():
    # logits [0, ln 2, ln 3]: softmax = [1, 2, 3] / 6
    logits = torch.tensor([[0.0, math.log(2), math.log(3)]] * 3)  # (3, V=3)
    labels = torch.tensor([2, 0, IGNORE_INDEX])
    got = token_logps(logits, labels)
    assert got.shape == (3,)
    assert torch.allclose(got, torch.tensor([math.log(3 / 6), math.log(1 / 6), 0.0]))


def test_sft_loss_by_hand_token_mean():
    # two sequences, V=4; softmax of [ln a, ln b, ...] is [a, b, ...] / (a + b + ...)
    logits = torch.zeros(2, 3, 4)
    logits[0, 0] = torch.tensor([math.log(3), 0, 0, 0])  # p(0) = 3/6 = 1/2
    logits[0, 1] = torch.tensor([0, 0, math.log(5), 0])  # p(1) = 1/8
    logits[1, 2] = torch.tensor([0, 0, 0, math.log(5)])  # p(3) = 5/8
    labels = torch.tensor([[0, 1, IGNORE_INDEX],
                           [IGNORE_INDEX, IGNORE_INDEX, 3]])
    # targets: -log p = log 2, log 8, log 8/5 -> mean over the 3 target tokens
    expected = (math.log(2) + math.log(8) + math.log(8 / 5)) / 3
    assert math.isclose(sft_loss(logits, labels).item(), expected, rel_tol=1e-6)
    # a sequence-mean would give ((log 2 + log 6) / 2 + log 4) / 2: not what sft_loss computes
    assert not math.isclose(sft_loss(logits, labels).item(),
                            ((math.log(2) + math.log(8)) / 2 + math.log(8 / 5)) / 2, rel_tol=1e-3)


def test_sft_loss_with_num_items_divides_by_it():
    logits = torch.zeros(1, 2, 4)
    labels = torch.tensor([[1, 2]])
    assert math.isclose(sft_loss(logits, labels, num_items=8).item(), 2 * math.log(4) / 8,
                        rel_tol=1e-6)


def test_all_ignored_gives_zero_not_nan():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.full((2, 3), IGNORE_INDEX)
    loss = sft_loss(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_micro_batches_with_step_count_sum_to_whole_batch_loss():
    """Gradient accumulation property: sum over micro-batches of sft_loss(.., N_step) equals
    sft_loss of the whole batch, for uneven target counts per micro-batch."""
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 11)
    labels = torch.randint(0, 11, (4, 6))
    labels[0, :5] = IGNORE_INDEX
    labels[2, 1:] = IGNORE_INDEX
    n = (labels != IGNORE_INDEX).sum()
    parts = sum(sft_loss(logits[i:i + 1], labels[i:i + 1], n) for i in range(4))
    assert torch.allclose(parts, sft_loss(logits, labels), atol=1e-6)


def test_token_mean_default_count():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([True, False, True, False])
    assert token_mean(values, mask).item() == 2.0
    assert token_mean(values, mask, 4).item() == 1.0
