"""cai.train.losses, by hand: the token log-probs and reduction of SFT, the DPO family and
Bradley-Terry (soft targets, gradcheck), and the PPO/RLOO estimators (known properties)."""

import math

import pytest
import torch

from cai.train.losses import (
    DPO_LOSSES,
    IGNORE_INDEX,
    adaptive_kl_coef,
    dpo_loss,
    entropy_from_logits,
    gae,
    grpo_advantages,
    kl_penalty,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    preference_loss,
    rloo_advantages,
    sft_loss,
    token_kl,
    token_logps,
    token_mean,
)

# --------------------------------------------------------------------------------------------
# SFT: token log-probs and the token mean


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


def test_token_kl_by_hand_and_its_gradient_is_soft_cross_entropy():
    ref = torch.tensor([[0.5, 0.25, 0.25]]).log()          # p_ref (1, 3)
    pol = torch.tensor([[0.25, 0.25, 0.5]]).log()          # p (1, 3)
    want = 0.5 * math.log(0.5 / 0.25) + 0.25 * 0 + 0.25 * math.log(0.25 / 0.5)
    assert token_kl(pol + 7.0, ref - 3.0).item() == pytest.approx(want, abs=1e-6)  # shift-free
    assert token_kl(ref, ref).item() == pytest.approx(0.0, abs=1e-7)
    logits = torch.randn(4, 5, 11, generator=torch.Generator().manual_seed(0),
                         requires_grad=True)
    ref_logits = torch.randn(4, 5, 11, generator=torch.Generator().manual_seed(1))
    kl = token_kl(logits, ref_logits)
    assert kl.shape == (4, 5) and (kl >= 0).all()
    kl.sum().backward()  # d KL / d logits = p - p_ref
    assert torch.allclose(logits.grad, logits.softmax(-1) - ref_logits.softmax(-1), atol=1e-6)


def test_reverse_token_kl_by_hand_and_it_charges_a_new_mode_more_than_forward():
    """KL(policy || ref) by hand; its gradient is p * (log p - log p_ref - KL); and on a token
    the reference almost never gives (a refusal leaking onto a benign prompt) the reverse
    direction costs many times what the forward one does."""
    ref = torch.tensor([[0.5, 0.25, 0.25]]).log()
    pol = torch.tensor([[0.25, 0.25, 0.5]]).log()
    want = 0.25 * math.log(0.25 / 0.5) + 0.25 * 0 + 0.5 * math.log(0.5 / 0.25)
    assert token_kl(pol + 7.0, ref - 3.0, reverse=True).item() == pytest.approx(want, abs=1e-6)
    skewed = torch.tensor([[0.7, 0.2, 0.1]]).log()
    assert token_kl(skewed, ref, reverse=True).item() != pytest.approx(
        token_kl(skewed, ref).item(), abs=1e-3)  # not symmetric: the direction matters
    logits = torch.randn(4, 5, 11, generator=torch.Generator().manual_seed(0),
                         requires_grad=True)
    ref_logits = torch.randn(4, 5, 11, generator=torch.Generator().manual_seed(1))
    kl = token_kl(logits, ref_logits, reverse=True)
    assert kl.shape == (4, 5) and (kl >= 0).all()
    kl.sum().backward()
    p, logp, ref_logp = logits.softmax(-1), logits.log_softmax(-1), ref_logits.log_softmax(-1)
    grad = p * (logp - ref_logp - kl.detach().unsqueeze(-1))
    assert torch.allclose(logits.grad, grad, atol=1e-5)
    # the base gives token 0 a millionth; the policy has moved a tenth of its mass there
    base = torch.tensor([[1e-6, 0.5 - 5e-7, 0.5 - 5e-7]]).log()
    leaked = torch.tensor([[0.1, 0.45, 0.45]]).log()
    forward, reverse = token_kl(leaked, base).item(), token_kl(leaked, base, reverse=True).item()
    assert forward == pytest.approx(-math.log(0.9), rel=1e-3)
    assert reverse > 10 * forward


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


# --------------------------------------------------------------------------------------------
# DPO family and Bradley-Terry


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


# --------------------------------------------------------------------------------------------
# PPO/RLOO estimators


def test_gae_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 9.0]])
    values = torch.tensor([[0.5, 1.0, 0.0], [1.0, 2.0, 7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: delta = [1 + 1 - .5, 0 + 0 - 1, 2] = [1.5, -1, 2]; A2 = 2, A1 = -1 + .5*2 = 0,
    #        A0 = 1.5 + .5*0 = 1.5; G = A + V = [2, 1, 2]
    # row 1 ends after 2 tokens (the 9 and the 7 are outside): delta = [0 + 2 - 1, 3 - 2] = [1, 1]
    #        A1 = 1, A0 = 1 + .5*1 = 1.5; G = [2.5, 3, 0]
    assert torch.allclose(adv, torch.tensor([[1.5, 0.0, 2.0], [1.5, 1.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[2.0, 1.0, 2.0], [2.5, 3.0, 0.0]]))


def test_gae_lambda_one_is_monte_carlo_and_discount():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    future = rewards.flip(1).cumsum(1).flip(1)  # sum_{s >= t} r_s
    assert torch.allclose(ret, future, atol=1e-5)
    assert torch.allclose(adv, future - values, atol=1e-5)
    # gamma 0.5, lam 0: one-step TD error
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=0.0)
    next_v = torch.cat([values[:, 1:], torch.zeros(3, 1)], 1)
    assert torch.allclose(adv, rewards + 0.5 * next_v - values, atol=1e-6)


def test_ppo_policy_loss_clips_both_ways():
    old = torch.zeros(1, 4)
    new = torch.tensor([[math.log(1.5), math.log(0.5), 0.0, 5.0]])
    adv = torch.tensor([[1.0, -2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss, stats = ppo_policy_loss(new, old, adv, mask, clip=0.2)
    # token 1: rho 1.5 > 1.2, A > 0: max(-1.5, -1.2) = -1.2 (clipped)
    # token 2: rho 0.5 < 0.8, A < 0: max(1.0, 1.6) = 1.6 (clipped); token 3: rho 1: -3
    assert loss.item() == pytest.approx((-1.2 + 1.6 - 3.0) / 3)
    assert stats["clip_frac"].item() == pytest.approx(2 / 3)
    k3 = [(1.5 - 1 - math.log(1.5)), (0.5 - 1 - math.log(0.5)), 0.0]
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / 3, rel=1e-5)
    # gradient flows only through unclipped tokens (token 3 here)
    new = new.clone().requires_grad_(True)
    ppo_policy_loss(new, old, adv, mask, clip=0.2)[0].backward()
    assert torch.allclose(new.grad, torch.tensor([[0.0, 0.0, -1.0, 0.0]]))


def test_ppo_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 4.0]])
    old = torch.zeros(1, 3)
    returns = torch.ones(1, 3)
    mask = torch.tensor([[True, True, False]])
    loss, stats = ppo_value_loss(values, old, returns, mask, clip=0.2)
    # token 1: err 0, clipped V = 0.2 -> 0.64 (larger); token 2: err 1 both ways
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.0) / 2)
    assert stats["clip_frac"].item() == pytest.approx(0.5)


def test_kl_estimators_properties():
    torch.manual_seed(0)
    pi = torch.softmax(torch.randn(6), 0)
    ref = torch.softmax(torch.randn(6), 0)
    exact = (pi * (pi.log() - ref.log())).sum().item()
    samples = torch.multinomial(pi, 200_000, replacement=True)
    logp, ref_logp = pi.log()[samples][None], ref.log()[samples][None]
    k1, k2, k3 = (kl_penalty(logp, ref_logp, k) for k in ("k1", "k2", "k3"))
    assert (k3 >= 0).all() and (k2 >= 0).all()
    assert (k1 < 0).any()  # k1 is negative on some tokens, its mean is not
    assert k1.mean().item() == pytest.approx(exact, abs=0.02)
    assert k3.mean().item() == pytest.approx(exact, abs=0.02)
    assert k3.var() < k1.var()
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_penalty(logp, ref_logp, "k4")


def test_masked_whiten():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    out = masked_whiten(values, mask)
    kept = out[mask]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert kept.std().item() == pytest.approx(1.0, abs=1e-4)  # Bessel-corrected, as computed
    assert (out[~mask] == 0).all()
    # shift_mean=False: scale only, the mean stays 3
    assert masked_whiten(values, mask, shift_mean=False)[mask].mean().item() == pytest.approx(3.0)


def test_rloo_advantages():
    adv = rloo_advantages(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    assert torch.allclose(adv, torch.tensor([[-1.5, 0.0, 1.5], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(3, 1))


def test_grpo_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0],    # mean 1/2, std sqrt(1/3) (Bessel)
                            [2.0, 0.0, 1.0, 1.0],    # mean 1, std sqrt(2/3)
                            [3.0, 3.0, 3.0, 3.0]])   # every answer alike: no signal
    # GRPO: (r - mean) / std, here with eps 0: 0.5 / sqrt(1/3) = sqrt(3) / 2, 1 / sqrt(2/3)
    h, s = math.sqrt(3) / 2, math.sqrt(1.5)
    got = grpo_advantages(rewards, eps=0.0)
    assert got[:2].tolist() == [pytest.approx([h, -h, -h, h]), pytest.approx([s, -s, 0, 0])]
    # the default eps (1e-4) only keeps the all-equal group finite: 0 there, not nan
    assert grpo_advantages(rewards).tolist() == [
        pytest.approx([h, -h, -h, h], rel=1e-3), pytest.approx([s, -s, 0, 0], rel=1e-3),
        [0.0, 0.0, 0.0, 0.0]]
    # Dr. GRPO: r - mean, no division
    assert grpo_advantages(rewards, scale_by_std=False).tolist() == [
        [0.5, -0.5, -0.5, 0.5], [1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    # RLOO on the same rewards: r_i - mean of the other three = 4/3 (r_i - mean)
    assert rloo_advantages(rewards).tolist() == [
        pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3]), pytest.approx([4 / 3, -4 / 3, 0, 0]),
        [0.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="grpo needs at least 2 samples"):
        grpo_advantages(torch.ones(3, 1))


def test_entropy_and_adaptive_kl():
    assert entropy_from_logits(torch.zeros(2, 4)).tolist() == pytest.approx([math.log(4)] * 2)
    peaked = torch.tensor([0.0, 0.0, 50.0])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)
    # over target: error clipped to +0.2; under target: -0.2 at most
    assert adaptive_kl_coef(0.1, 12.0, 6.0, 10_000, 100) == pytest.approx(0.1 * 1.002)
    assert adaptive_kl_coef(0.1, 0.0, 6.0, 10_000, 100) == pytest.approx(0.1 * 0.998)
    assert adaptive_kl_coef(0.1, 6.6, 6.0, 10_000, 100) == pytest.approx(0.1 * 1.001)
