"""cai.train.losses: DPO family and Bradley-Terry, by hand, soft targets and gradcheck."""

import math

import pytest
import torch

from cai.train.losses import DPO_LOSSES, dpo_loss, preference_loss


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def softplus(x: float) -> float:  # -log s(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


# One pair: policy (chosen, rejected) = (-1, -3), reference (-2, -2): log-ratios d_c = 1,
# d_r = -1, margin z = 2; with beta = 0.5, beta z = 1. A second pair with z = -1 (beta z = -0.5).
PC, PR, RC, RR = t(-1.0, -4.0), t(-3.0, -2.0), t(-2.0, -3.0), t(-2.0, -2.0)
BETA = 0.5


def test_sigmoid_by_hand():
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, BETA)
    # -log s(x) = log(1 + e^-x)
    assert losses.tolist() == pytest.approx([softplus(-1.0), softplus(0.5)], abs=1e-6)
    assert rc.tolist() == pytest.approx([0.5, -0.5])  # beta * (policy - reference)
    assert rr.tolist() == pytest.approx([-0.5, 0.0])


def test_hinge_by_hand():
    losses, _, _ = dpo_loss(PC, PR, RC, RR, 0.25, "hinge")
    # beta z = 0.5 -> 1 - 0.5; beta z = -0.25 -> 1.25
    assert losses.tolist() == pytest.approx([0.5, 1.25])
    losses, _, _ = dpo_loss(PC, PR, RC, RR, 1.0, "hinge")  # beta z = 2 >= 1: no loss
    assert losses[0].item() == 0.0


def test_ipo_by_hand_averages_log_ratios_per_token():
    # pair 1: d_c = 1 over 2 tokens, d_r = -1 over 4: z' = 0.5 + 0.25 = 0.75; 1/(2 beta) = 1
    # pair 2: d_c = -1 over 1 token, d_r = 0 over 3: z' = -1
    losses, rc, _ = dpo_loss(PC, PR, RC, RR, BETA, "ipo", chosen_lengths=t(2, 1),
                              rejected_lengths=t(4, 3))
    assert losses.tolist() == pytest.approx([(0.75 - 1) ** 2, (-1 - 1) ** 2])
    assert rc.tolist() == pytest.approx([0.5, -0.5])  # rewards stay on the summed log-ratios
    # lengths of 1: the paper's Eq. 17 on summed log-ratios, (z - 1/(2 beta))^2
    ones = t(1, 1)
    losses, _, _ = dpo_loss(PC, PR, RC, RR, BETA, "ipo", chosen_lengths=ones,
                            rejected_lengths=ones)
    assert losses.tolist() == pytest.approx([(2 - 1) ** 2, (-1 - 1) ** 2])
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(PC, PR, RC, RR, BETA, "ipo")


def test_robust_by_hand():
    e = 0.1
    losses, _, _ = dpo_loss(PC, PR, RC, RR, BETA, "robust", label_smoothing=e)
    # [-(1-e) log s(x) + e log s(-x)] / (1 - 2e) = [(1-e) sp(-x) - e sp(x)] / (1 - 2e)
    want = [((1 - e) * softplus(-x) - e * softplus(x)) / (1 - 2 * e) for x in (1.0, -0.5)]
    assert losses.tolist() == pytest.approx(want, abs=1e-6)
    assert want[0] == pytest.approx((0.9 * 0.3132617 - 0.1 * 1.3132617) / 0.8, abs=1e-6)
    # e = 0 is plain DPO
    plain, _, _ = dpo_loss(PC, PR, RC, RR, BETA)
    assert dpo_loss(PC, PR, RC, RR, BETA, "robust")[0].tolist() == pytest.approx(plain.tolist())
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, BETA, "robust", label_smoothing=0.5)


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="sigmoid, hinge, ipo, robust"):
        dpo_loss(PC, PR, RC, RR, BETA, "kto")


def test_soft_target_is_the_cross_entropy_by_hand():
    losses, _, _ = dpo_loss(PC, PR, RC, RR, BETA, target=t(0.75, 0.2))
    # -t log s(bz) - (1-t) log s(-bz) with bz = 1 and -0.5
    want = [0.75 * softplus(-1.0) + 0.25 * softplus(1.0),
            0.2 * softplus(0.5) + 0.8 * softplus(-0.5)]
    assert losses.tolist() == pytest.approx(want, abs=1e-6)
    assert want[0] == pytest.approx(0.5632617, abs=1e-6)


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_soft_target_one_equals_plain(loss_type):
    kw = dict(label_smoothing=0.2 if loss_type == "robust" else 0.0,
              chosen_lengths=t(2, 1), rejected_lengths=t(4, 3))
    plain, _, _ = dpo_loss(PC, PR, RC, RR, BETA, loss_type, **kw)
    soft, _, _ = dpo_loss(PC, PR, RC, RR, BETA, loss_type, target=t(1.0, 1.0), **kw)
    assert torch.allclose(soft, plain)
    # t = 0 is the hard loss with chosen and rejected swapped
    flipped, _, _ = dpo_loss(PR, PC, RR, RC, BETA, loss_type, label_smoothing=kw["label_smoothing"],
                             chosen_lengths=t(4, 3), rejected_lengths=t(2, 1))
    zero, _, _ = dpo_loss(PC, PR, RC, RR, BETA, loss_type, target=t(0.0, 0.0), **kw)
    assert torch.allclose(zero, flipped)


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_soft_target_half_has_zero_gradient_at_zero_margin(loss_type):
    policy = t(-2.0, -5.0, dtype=torch.float64).requires_grad_()
    rejected = t(-3.0, -1.0, dtype=torch.float64).requires_grad_()
    # reference = policy: z = 0 for both pairs
    kw = dict(label_smoothing=0.1 if loss_type == "robust" else 0.0,
              chosen_lengths=t(3, 2, dtype=torch.float64),
              rejected_lengths=t(5, 1, dtype=torch.float64))
    losses, _, _ = dpo_loss(policy, rejected, policy.detach(), rejected.detach(), BETA,
                            loss_type, target=t(0.5, 0.5, dtype=torch.float64), **kw)
    losses.sum().backward()
    assert torch.all(policy.grad.abs() < 1e-12) and torch.all(rejected.grad.abs() < 1e-12)
    # ... while the hard label pushes chosen up and rejected down
    policy.grad = rejected.grad = None
    losses, _, _ = dpo_loss(policy, rejected, policy.detach(), rejected.detach(), BETA,
                            loss_type, **kw)
    losses.sum().backward()
    assert torch.all(policy.grad < 0) and torch.all(rejected.grad > 0)


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_dpo_loss_gradcheck(loss_type):
    torch.manual_seed(0)
    args = [torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    target = torch.rand(4, dtype=torch.float64, requires_grad=True)
    lengths = (t(3, 1, 7, 2, dtype=torch.float64), t(2, 5, 1, 4, dtype=torch.float64))

    def f(pc, pr, rc, rr, target):
        return dpo_loss(pc, pr, rc, rr, 0.7, loss_type, target,
                        label_smoothing=0.15 if loss_type == "robust" else 0.0,
                        chosen_lengths=lengths[0], rejected_lengths=lengths[1])[0]

    if loss_type == "hinge":  # keep away from the kink at beta z = 1
        z = (args[0] - args[2]) - (args[1] - args[3])
        assert torch.all((0.7 * z - 1).abs() > 1e-3)
    assert torch.autograd.gradcheck(f, (*args, target))


def test_rewards_are_detached():
    pc = PC.clone().requires_grad_()
    _, rc, _ = dpo_loss(pc, PR, RC, RR, BETA)
    assert not rc.requires_grad


def test_preference_loss_by_hand():
    chosen, rejected = t(2.0, 0.0, 1.0), t(1.0, 0.5, 1.0)  # margins 1, -0.5, 0
    assert preference_loss(chosen, rejected).tolist() == pytest.approx(
        [softplus(-1.0), softplus(0.5), math.log(2)], abs=1e-6)
    soft = preference_loss(chosen, rejected, t(0.75, 1.0, 0.5))
    assert soft.tolist() == pytest.approx(
        [0.75 * softplus(-1.0) + 0.25 * softplus(1.0), softplus(0.5), math.log(2)], abs=1e-6)


def test_preference_loss_soft_targets_and_gradcheck():
    torch.manual_seed(1)
    chosen, rejected = (torch.randn(5, dtype=torch.float64, requires_grad=True) for _ in "ab")
    target = torch.rand(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(preference_loss, (chosen, rejected, target))
    assert torch.allclose(preference_loss(chosen, rejected, torch.ones(5, dtype=torch.float64)),
                          preference_loss(chosen, rejected))
    # t = 1/2 at equal scores: zero gradient; the minimum over the margin is at s(m) = t
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    preference_loss(x, torch.zeros(1, dtype=torch.float64), t(0.5, dtype=torch.float64)).sum() \
        .backward()
    assert x.grad.abs().item() < 1e-12
    m = torch.linspace(-4, 4, 8001, dtype=torch.float64)
    best = m[preference_loss(m, torch.zeros_like(m), torch.full_like(m, 0.8)).argmin()]
    assert torch.sigmoid(best).item() == pytest.approx(0.8, abs=1e-3)
