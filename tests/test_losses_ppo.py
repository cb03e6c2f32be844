"""PPO/RLOO estimators in cai.train.losses: hand-computed values and known properties."""

import math

import pytest
import torch

from cai.train.losses import (adaptive_kl_coef, entropy_from_logits, gae, kl_penalty,
                              masked_whiten, ppo_policy_loss, ppo_value_loss, rloo_advantages)


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


def test_entropy_and_adaptive_kl():
    assert entropy_from_logits(torch.zeros(2, 4)).tolist() == pytest.approx([math.log(4)] * 2)
    peaked = torch.tensor([0.0, 0.0, 50.0])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)
    # over target: error clipped to +0.2; under target: -0.2 at most
    assert adaptive_kl_coef(0.1, 12.0, 6.0, 10_000, 100) == pytest.approx(0.1 * 1.002)
    assert adaptive_kl_coef(0.1, 0.0, 6.0, 10_000, 100) == pytest.approx(0.1 * 0.998)
    assert adaptive_kl_coef(0.1, 6.6, 6.0, 10_000, 100) == pytest.approx(0.1 * 1.001)
