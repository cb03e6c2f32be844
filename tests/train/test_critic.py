"""The critic's start (`cai.train.ppo.critic`): ridge fit, its strength by cross-validation."""

import pytest
import torch

from cai.train.ppo import critic


def rollout(rows: int, tokens: int, width: int, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, tokens, width, generator=g)
    w = torch.zeros(width)
    w[:3] = torch.tensor([1.0, -2.0, 0.5])  # three features carry the signal
    targets = hidden @ w + noise * torch.randn(rows, tokens, generator=g)
    return hidden, targets, torch.ones(rows, tokens, dtype=torch.bool)


def test_fit_linear_recovers_weights_and_bias():
    hidden, targets, mask = rollout(40, 10, 8, noise=0.0, seed=0)
    w, b = critic.fit_linear(hidden[mask], targets[mask] + 3.0, ridge=1e-6)
    assert torch.allclose(w[:3].float(), torch.tensor([1.0, -2.0, 0.5]), atol=1e-3)
    assert abs(b.item() - 3.0) < 1e-3


def test_cross_validation_picks_a_strong_penalty_when_the_batch_is_as_wide_as_it_is_long():
    """16 answers x 8 tokens = 128 rows for 96 features, and noisy targets: the weak penalty
    fits the noise; cross-validation chooses a stronger one, and that fit predicts a fresh
    rollout better."""
    hidden, targets, mask = rollout(16, 8, 96, noise=2.0, seed=1)
    chosen = critic.choose_ridge(hidden, targets, mask)
    assert chosen > critic.RIDGES[0]
    fresh_h, fresh_t, _ = rollout(16, 8, 96, noise=2.0, seed=2)

    def held_out_error(ridge):
        w, b = critic.fit_linear(hidden[mask], targets[mask], ridge)
        return ((fresh_h.reshape(-1, 96).double() @ w + b - fresh_t.reshape(-1).double()) ** 2
                ).mean().item()

    assert held_out_error(chosen) < held_out_error(critic.RIDGES[0])
    # with plenty of clean data the weakest penalty wins
    hidden, targets, mask = rollout(64, 32, 8, noise=0.01, seed=3)
    assert critic.choose_ridge(hidden, targets, mask) == critic.RIDGES[0]


def test_explained_variance_known_cases():
    returns = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert critic.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    mean = returns[mask].mean()
    assert critic.explained_variance(returns, torch.full_like(returns, mean), mask) == \
        pytest.approx(0.0, abs=1e-12)
    # values off by a constant explain as much: the residual's variance is what counts
    assert critic.explained_variance(returns, returns + 7.0, mask) == pytest.approx(1.0)
    # half-way to the mean leaves a quarter of the variance: 1 - 0.25
    half = (returns + mean) / 2
    assert critic.explained_variance(returns, half, mask) == pytest.approx(0.75)
    # positions outside the mask do not count; constant returns give 0, not a division by 0
    assert critic.explained_variance(returns, returns.masked_fill(~mask, 99.0), mask) == \
        pytest.approx(1.0)
    assert critic.explained_variance(torch.ones(2, 4), torch.zeros(2, 4), mask) == 0.0
