"""cai.scoring.labels: the soft-label math, against hand-computed values."""

import math

import pytest

from cai.scoring import labels as L


def test_choice_probability_normalizes_the_two_logprobs():
    assert L.choice_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert L.choice_probability(math.log(0.1), math.log(0.3)) == pytest.approx(0.25)
    assert L.choice_probability(-2.0, -2.0) == 0.5
    assert L.choice_probability(-math.inf, -math.inf) == 0.5  # no information
    assert L.choice_probability(0.0, -math.inf) == 1.0
    assert L.choice_probability(-1000.0, 0.0) == pytest.approx(0.0)  # no overflow
    assert L.choice_probability(0.0, -1000.0) == pytest.approx(1.0)


def test_orders_combine_into_p_first():
    assert L.p_first(0.8, "ab") == 0.8 and L.p_first(0.8, "ba") == pytest.approx(0.2)
    # First shown as (A): P(A) = 0.9; first shown as (B): P(A) = 0.5, so P(first) = 0.5.
    assert L.combine_orders(0.9, L.p_first(0.5, "ba")) == pytest.approx(0.7)
    assert L.combine_orders(0.9, None) == 0.9 and L.combine_orders(None, 0.3) == 0.3
    with pytest.raises(ValueError):
        L.combine_orders(None, None)


def test_clamp_ensemble_and_flips():
    assert L.clamp(0.95, 0.4, 0.6) == 0.6 and L.clamp(0.02, 0.4, 0.6) == 0.4
    assert L.clamp(0.55, 0.4, 0.6) == 0.55
    assert L.ensemble([0.6, 0.8, 0.7]) == pytest.approx(0.7)
    votes = [{"p_ab": 0.8, "p_ba": 0.3},   # slot A wins both times: flips
             {"p_ab": 0.8, "p_ba": 0.6},   # same response both times
             {"p_ab": 0.4, "p_ba": 0.6},   # slot B wins both times: flips
             {"p_ab": 0.7, "p_ba": None}]  # one order only: not counted
    assert L.position_bias_rate(votes) == pytest.approx(2 / 3)
    assert L.position_bias_rate([{"p_ab": 0.7, "p_ba": None}]) is None
    assert not L.flipped(0.5, 0.9)  # no preference in one order is not a flip
    pairs = [[{"p_first": 0.6}, {"p_first": 0.7}], [{"p_first": 0.6}, {"p_first": 0.4}],
             [{"p_first": 0.9}]]
    assert L.principle_agreement(pairs) == 0.5
    assert L.principle_agreement([[{"p_first": 0.9}]]) is None


def test_histogram_accuracy_and_calibration():
    assert L.label_histogram([0.5, 0.55, 0.6, 0.99, 1.0]) == {
        "0.50-0.60": 2, "0.60-0.70": 1, "0.70-0.80": 0, "0.80-0.90": 0, "0.90-1.00": 2}
    assert L.accuracy([0.9, 0.6, 0.4, 0.5]) == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    # Confidences 0.9 (right), 0.9 (right), 0.6 (right), 0.7 (wrong), in bins 9, 9, 6, 7:
    # ECE = 2/4 |1 - 0.9| + 1/4 |1 - 0.6| + 1/4 |0 - 0.7| = 0.05 + 0.1 + 0.175.
    assert L.expected_calibration_error([0.9, 0.9, 0.6, 0.3]) == pytest.approx(0.325)
    assert L.expected_calibration_error([1.0, 1.0]) == 0.0
    assert L.brier_score([1.0, 0.5]) == pytest.approx(0.125)
