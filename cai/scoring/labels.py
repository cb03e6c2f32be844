"""Soft-label math for AI feedback: pure functions of probabilities, checked by hand in tests.

From the labeler's log-probs of "(A)" and "(B)" to a soft preference label (Bai et al. 2022,
arXiv:2212.08073, section 4.1), the two presentation orders combined against position bias
(Lee et al. 2023, arXiv:2309.00267), principle ensembles, and the calibration metrics of the
labeler quality check.
"""

from __future__ import annotations

import math


def choice_probabilities(logps: list[float]) -> list[float]:
    """The choices' log-probs normalized over the choices: P(i) = exp(l_i) / sum_j exp(l_j).

    Total over whatever an engine returns: a NaN log-prob counts as an impossible choice
    (-inf); when every choice is impossible there is no preference (uniform); choices at +inf
    share the whole mass.
    """
    clean = [-math.inf if math.isnan(lp) else lp for lp in logps]
    top = max(clean)
    if top == -math.inf or top == math.inf:
        winners = [lp == top for lp in clean]
        return [w / sum(winners) for w in winners]
    exps = [math.exp(lp - top) for lp in clean]
    total = sum(exps)
    return [e / total for e in exps]


def choice_probability(logp_a: float, logp_b: float) -> float:
    """P(A) from the two choices' log-probs, normalized over the two (Bai et al. 2022, 4.1):
    P(A) = exp(la) / (exp(la) + exp(lb)) = sigmoid(la - lb), by `choice_probabilities`. Two
    impossible (or NaN) choices carry no preference and give 0.5."""
    return choice_probabilities([logp_a, logp_b])[0]


def p_first(p_a: float, order: str) -> float:
    """P(first response better) from P("(A)"): order "ab" shows the first as (A), "ba" as (B)."""
    return p_a if order == "ab" else 1.0 - p_a


def combine_orders(p_ab: float | None, p_ba: float | None) -> float:
    """Position debiasing (Lee et al. 2023, 2.1): the mean of P(first better) over the orders
    scored. `p_ab` is P(first better) with the first shown as (A), `p_ba` with it shown as (B)."""
    scored = [p for p in (p_ab, p_ba) if p is not None]
    if not scored:
        raise ValueError("no order was scored")
    return sum(scored) / len(scored)


def clamp(p: float, low: float, high: float) -> float:
    """Chain-of-thought labels clamped to [low, high]; Bai et al. 2022 (4.1) used [0.4, 0.6]."""
    return min(max(p, low), high)


def ensemble(ps: list[float]) -> float:
    """The mean over principles of P(first better) (Bai et al. 2022, 4.1: principle ensembling)."""
    return sum(ps) / len(ps)


def flipped(p_ab: float, p_ba: float) -> bool:
    """True when the preferred response changes with the order, i.e. the same slot wins both."""
    return (p_ab - 0.5) * (p_ba - 0.5) < 0


def position_bias_rate(votes: list[dict]) -> float | None:
    """Fraction of votes scored in both orders whose preferred response flips with the order
    (Lee et al. 2023 report 18% for a large judge and 56% for the smallest). None if none."""
    both = [v for v in votes if v.get("p_ab") is not None and v.get("p_ba") is not None]
    if not both:
        return None
    return sum(flipped(v["p_ab"], v["p_ba"]) for v in both) / len(both)


def _side(p: float) -> int:
    return (p > 0.5) - (p < 0.5)


def principle_agreement(vote_lists: list[list[dict]]) -> float | None:
    """Fraction of pairs with two or more principles on which every principle prefers the same
    response (all p_first on the same side of 0.5). None when no pair had two principles."""
    multi = [vs for vs in vote_lists if len(vs) >= 2]
    if not multi:
        return None
    return sum(len({_side(v["p_first"]) for v in vs}) == 1 for vs in multi) / len(multi)


def label_histogram(ps: list[float], bins: int = 5) -> dict[str, int]:
    """Counts of p_chosen in `bins` equal bins over [0.5, 1] (the last bin includes 1)."""
    counts = [0] * bins
    for p in ps:
        counts[min(max(int((p - 0.5) * 2 * bins + 1e-9), 0), bins - 1)] += 1
    edges = [0.5 + i / (2 * bins) for i in range(bins + 1)]
    return {f"{lo:.2f}-{hi:.2f}": n for lo, hi, n in zip(edges, edges[1:], counts)}


def accuracy(p_correct: list[float]) -> float:
    """Fraction of pairs where the known better response gets p > 0.5 (an exact tie counts half)."""
    return sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in p_correct) / len(p_correct)


def expected_calibration_error(p_correct: list[float], bins: int = 10) -> float:
    """Top-label expected calibration error of binary choices, `bins` equal bins over [0, 1]
    (Guo et al. 2017, arXiv:1706.04599, section 2).

    For each pair the predicted response is the one with p > 0.5, its confidence max(p, 1 - p)
    and it is right when it is the known better one. ECE = sum_b (n_b / N) |acc_b - conf_b|.
    Confidences lie in [0.5, 1], so only the upper half of the bins fill.
    """
    groups: dict[int, list[tuple[float, float]]] = {}
    for p in p_correct:
        conf = max(p, 1.0 - p)
        right = 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
        groups.setdefault(min(int(conf * bins + 1e-9), bins - 1), []).append((conf, right))
    total = len(p_correct)
    return sum(len(g) / total * abs(sum(r for _, r in g) / len(g) - sum(c for c, _ in g) / len(g))
               for g in groups.values())


def brier_score(p_correct: list[float]) -> float:
    """Mean squared error of the probability given to the known better response: mean (1 - p)^2."""
    return sum((1.0 - p) ** 2 for p in p_correct) / len(p_correct)
