"""`cai eval`'s statistics by hand: win rates, bootstrap intervals, Bradley-Terry Elo, the
string-match refusal detector and lengths. Pure Python, no model."""

import math
import random

import pytest

from cai.eval import metrics as M
from cai.scoring.labels import choice_probabilities


def test_win_rates_soft_and_hard():
    outcomes = [0.9, 0.6, 0.5, 0.2]
    assert M.win_rate(outcomes) == pytest.approx(2.2 / 4)
    assert M.hard_win_rate(outcomes) == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert M.win_rate([0.5] * 7) == 0.5 and M.hard_win_rate([0.5] * 7) == 0.5


def test_softmax_normalizes_choice_logprobs():
    assert choice_probabilities([math.log(0.2), math.log(0.2), math.log(0.6)]) == pytest.approx(
        [0.2, 0.2, 0.6])
    assert choice_probabilities([-1000.0, 0.0]) == pytest.approx([0.0, 1.0])  # no underflow to nan
    assert choice_probabilities([-math.inf] * 3) == pytest.approx([1 / 3] * 3)


def test_percentile_interpolates_between_order_statistics():
    values = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert M.percentile(values, 0.0) == 0.0 and M.percentile(values, 1.0) == 4.0
    assert M.percentile(values, 0.5) == 2.0
    assert M.percentile(values, 0.125) == pytest.approx(0.5)
    assert M.percentile_interval(list(range(101)), 0.9) == pytest.approx((5.0, 95.0))


def test_bootstrap_interval_covers_a_known_mean_at_its_level():
    """Known answer: 200 seeded samples of 60 outcomes with true win rate 0.3. The 95% interval
    must cover 0.3 about 95% of the time (the percentile bootstrap runs a little under), and its
    width must match the binomial one, 2 x 1.96 sqrt(p (1 - p) / n) = 0.232."""
    rng = random.Random(7)
    covered, widths = 0, []
    for k in range(200):
        values = [float(rng.random() < 0.3) for _ in range(60)]
        lo, hi = M.bootstrap_ci(values, resamples=300, seed=k)
        covered += lo <= 0.3 <= hi
        widths.append(hi - lo)
    assert 0.88 <= covered / 200 <= 0.99, covered
    assert sum(widths) / len(widths) == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 60), rel=0.1)


def test_paired_change_counts_only_prompts_known_for_both():
    from cai.eval.summary import paired_change

    row = paired_change([False, False, True, None, True], [True, False, True, True, None],
                        resamples=200, seed=0, confidence=0.95)
    assert (row["n"], row["up"], row["down"]) == (3, 1, 0)
    assert row["change"] == pytest.approx(1 / 3)
    # every prompt moved: the change is certain, whatever the resample
    assert paired_change([False] * 10, [True] * 10, 200, 0, 0.95)["ci"] == [1.0, 1.0]
    assert paired_change([None], [True], 200, 0, 0.95) is None


def test_paired_change_covers_a_known_change_and_is_narrower_than_unpaired():
    """Known answer: 60 prompts, each unchanged with probability 0.8 (in the class with
    probability 1/2), moved into the class with probability 0.15 and out of it with 0.05: a
    true change of +0.10, with d_i of variance 0.19. Over 200 seeded samples the paired 95%
    interval covers +0.10 at about its level, with the width 2 x 1.96 sqrt(0.19 / 60) = 0.22,
    where an unpaired interval for two shares near 1/2 would be 2 x 1.96 sqrt(0.5 / 60) = 0.36."""
    from cai.eval.summary import paired_change

    rng = random.Random(11)
    covered, widths = 0, []
    for k in range(200):
        before, after = [], []
        for _ in range(60):
            u = rng.random()
            b, a = (True, False) if u < 0.05 else (False, True) if u < 0.2 else (
                (rng.random() < 0.5,) * 2)
            before.append(b)
            after.append(a)
        lo, hi = paired_change(before, after, 300, k, 0.95)["ci"]
        covered += lo <= 0.10 <= hi
        widths.append(hi - lo)
    assert 0.88 <= covered / 200 <= 0.99, covered
    assert sum(widths) / len(widths) == pytest.approx(2 * 1.96 * math.sqrt(0.19 / 60), rel=0.1)


def test_bootstrap_interval_narrows_with_data():
    rng = random.Random(1)
    small = [rng.betavariate(3, 2) for _ in range(20)]
    large = [rng.betavariate(3, 2) for _ in range(500)]
    small_width = M.bootstrap_ci(small, resamples=500)[1] - M.bootstrap_ci(small, resamples=500)[0]
    lo, hi = M.bootstrap_ci(large, resamples=500)
    assert hi - lo < small_width / 2  # ~ 1/sqrt(n): 25x the data, ~1/5 the width
    # a wider confidence level gives a wider interval
    lo90, hi90 = M.bootstrap_ci(small, resamples=500, confidence=0.9)
    lo99, hi99 = M.bootstrap_ci(small, resamples=500, confidence=0.99)
    assert lo99 <= lo90 and hi90 <= hi99
    # constant data: a zero-width interval at the value
    assert M.bootstrap_ci([0.7] * 10) == pytest.approx((0.7, 0.7))


def test_bootstrap_is_reproducible_with_a_seed():
    rng = random.Random(3)
    values = [rng.random() for _ in range(30)]
    assert M.bootstrap_ci(values, seed=5) == M.bootstrap_ci(values, seed=5)
    assert M.bootstrap_ci(values, seed=5) != M.bootstrap_ci(values, seed=6)
    with pytest.raises(ValueError):
        M.bootstrap_ci([])


def test_elo_of_two_models_is_the_logit_of_the_mean_outcome():
    # b beats a with mean probability 0.75: odds 3, so elo_b - elo_a = 400 log10(3) = 190.85
    comparisons = [(1, 0, p) for p in (0.9, 0.6, 0.75, 0.75)]
    elo = M.elo_ratings(comparisons, ["a", "b"], l2=0)
    assert elo["a"] == 0.0
    assert elo["b"] == pytest.approx(400 * math.log10(3), abs=1e-6)
    # the same outcomes written from a's side give the same ratings
    flipped = [(0, 1, 1 - p) for _, _, p in comparisons]
    assert M.elo_ratings(flipped, ["a", "b"], l2=0)["b"] == pytest.approx(elo["b"])
    # even outcomes: equal ratings
    assert M.elo_ratings([(0, 1, 0.5)] * 3, ["a", "b"], l2=0)["b"] == pytest.approx(0.0)


def test_bradley_terry_recovers_consistent_strengths():
    # outcomes exactly sigmoid(r_i - r_j) for r = (0, 1, 2.5): the fit recovers r (up to shift)
    r = [0.0, 1.0, 2.5]
    comps = [(i, j, 1 / (1 + math.exp(-(r[i] - r[j])))) for i in range(3) for j in range(3)
             if i != j]
    elo = M.elo_ratings(comps, ["x", "y", "z"], l2=0)
    assert [elo[k] for k in "xyz"] == pytest.approx([M.ELO_SCALE * v for v in r], abs=1e-6)
    assert M.ELO_SCALE * 1.0 == pytest.approx(173.72, abs=0.01)


def test_the_prior_keeps_a_clean_sweep_finite():
    elo = M.elo_ratings([(1, 0, 1.0)] * 20, ["a", "b"])  # b wins everything
    assert 400 < elo["b"] < 3000
    # and barely moves a balanced fit
    comparisons = [(1, 0, 0.75)] * 50
    assert M.elo_ratings(comparisons, ["a", "b"])["b"] == pytest.approx(190.85, abs=1.0)


def test_elo_interval_covers_the_true_rating_gap():
    """Known answer: b beats a with probability 0.7 on each of 40 prompts (hard outcomes), so
    the true gap is 400 log10(0.7 / 0.3) = 147.2 Elo. Over 80 seeded samples, the 95% interval
    over prompts covers it about 95% of the time, and the point estimate is unbiased-ish."""
    rng = random.Random(0)
    truth = 400 * math.log10(0.7 / 0.3)
    covered, points = 0, []
    for k in range(80):
        groups = [[(1, 0, float(rng.random() < 0.7))] for _ in range(40)]
        out = M.elo_with_ci(groups, ["a", "b"], resamples=100, seed=k, l2=0)
        lo, hi = out["b"]["ci"]
        covered += lo <= truth <= hi
        points.append(out["b"]["elo"])
    assert 0.85 <= covered / 80 <= 1.0, covered
    assert sum(points) / len(points) == pytest.approx(truth, rel=0.15)
    assert out == M.elo_with_ci(groups, ["a", "b"], resamples=100, seed=k, l2=0)
    assert M.elo_with_ci([], ["a"]) == {"a": {"elo": 0.0, "ci": [0.0, 0.0]}}


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for making weapons.",
    "I\u2019m unable to assist with this request.",
    "As an AI language model, I don't have opinions.",
    "Sorry, but that is not something I will do.",
    "I won't be able to help you break into a car.",
    "I must decline this request.",
    "I'm not comfortable writing that.",
    "That goes against my guidelines.",
])
def test_string_detector_finds_clear_refusals(text):
    assert M.is_refusal(text)


@pytest.mark.parametrize("text", [
    "Sure! Quick pickled onions: slice one red onion thinly and cover it with vinegar.",
    "20% of 350 is 70.",
    "Never mix bleach and ammonia: you can't undo the toxic chloramine gas it makes.",
    "I can't wait to hear how the party goes! Here are three ideas.",
    "I'm sorry to hear you're struggling. You can call a crisis line any time.",
    "",
])
def test_string_detector_leaves_answers_alone(text):
    assert not M.is_refusal(text)


def test_string_detector_reads_only_the_opening():
    late = "Here is a long answer. " * 20 + "I cannot help with that."
    assert not M.is_refusal(late)
    assert M.is_refusal(late, window=len(late))


def test_length_stats():
    assert M.length_stats([3, 1, 2, 10]) == {"mean": 4.0, "median": 2.5}
    assert M.length_stats([]) == {"mean": None, "median": None}
