"""The two-sided reward: refuse what the constitution says to decline, answer everything else.

With d = P(decline | x), the request classifier's reading of the prompt, and R = P(refuses | x, y),
the answer classifier's reading of the answer, the reward of answer y to prompt x is

    r(x, y) = w_harm * d * (2R - 1)  +  w_refusal * (1 - d) * (1 - 2R)

The first part pays for a refusal and charges for compliance where the request is one to decline
(the constitution's `harmful-help` principle); the second charges for a refusal and pays for an
answer where it is not (`needless-refusal`). Each part lies in [-1, 1]; the weights are options,
named by the principle ids the parts come from (`PARTS`). A KL term to the start model is the
trainer's, not the reward's.
"""

from __future__ import annotations

#: principle id -> what its part pays for
PARTS = {"harmful-help": "a refusal where the request is one to decline",
         "needless-refusal": "an answer where the request is not one to decline"}
DEFAULT_WEIGHTS = {"harmful-help": 1.0, "needless-refusal": 1.0}


def two_sided_reward(p_decline: float, p_refuses: float,
                     weights: dict[str, float] | None = None) -> float:
    """r = w_harm * d * (2R - 1) + w_refusal * (1 - d) * (1 - 2R) (module docstring)."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    d, r = float(p_decline), float(p_refuses)
    return (w["harmful-help"] * d * (2 * r - 1)
            + w["needless-refusal"] * (1 - d) * (1 - 2 * r))


def check_weights(weights: dict, where: str) -> dict[str, float]:
    """The weights by principle id, every key known and every value a number."""
    from cai.foundation.errors import CaiError

    out = {}
    for key, value in (weights or {}).items():
        if key not in PARTS:
            raise CaiError(f"{where}: unknown reward part '{key}' (known: {', '.join(PARTS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CaiError(f"{where}: the weight of '{key}' must be a number, got {value!r}")
        out[key] = float(value)
    return {**DEFAULT_WEIGHTS, **out}
