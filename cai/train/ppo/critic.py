"""PPO's critic: a linear value head on the policy's last hidden state, and where it starts.

The value targets are normalized returns: the score shifted and scaled by the starting policy's
statistics (so about mean 0 and std 1 at the start), plus the per-token KL penalty. A head
copied from the preference model's score head would start off by the shift and by a factor of
1/scale, and it would read the hidden states of another network (the preference model is the
base with its own adapter; the critic reads the SFT policy). PPO's clipped value loss then keeps
the values within `cliprange_value` of their sampling-time values each rollout, so a critic that
starts far off stays off (explained variance below 0 for many steps).

So the head starts at zero, and before the first update it is fitted to the first rollout's
returns by ridge regression on the policy's hidden states at the answer tokens (`fit_linear`):
the least-squares head for the features it will read, with no learning rate to tune, and with
the penalty chosen by cross-validation over the rollout's answers (`choose_ridge`), since what
matters is how it predicts the next rollout. From then on it learns with the policy as usual.

That critic reads features chosen for generating text, not for predicting this reward, and on
the embedded model it explains the first rollout and then predicts the next ones worse than
their mean (docs/training.md). `ppo.critic: reward_model` gives the head the preference model's
own judgment instead (`RewardModelCritic`), as Ouyang et al. 2022 start the value function
from the reward model.
"""

from __future__ import annotations

import torch

from cai.train.losses import gae
from cai.train.ppo.rollout import Rollout
from cai.train.rm import answer_prefix


def zero_head(hidden_size: int, device) -> torch.nn.Linear:
    head = torch.nn.Linear(hidden_size, 1).to(device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


def fit_linear(features: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-2):
    """Ridge regression with an unpenalized bias, solved in float64.

        (w, b) = argmin  sum_n (x_n . w + b - y_n)^2 + lam |w|^2
        w = (Xc^T Xc + lam I)^-1 Xc^T yc,   b = mean(y) - mean(x) . w

    with Xc, yc the centred features and targets, and lam = ridge * trace(Xc^T Xc) / H (the
    penalty in units of the features' mean variance, so `ridge` means the same for any width).

    Shape: features (N, H), targets (N,); returns (w (H,), b scalar) float64
    """
    x, y = features.double(), targets.double()
    mx, my = x.mean(0), y.mean()
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * gram.diagonal().mean().clamp(min=1e-12)
    w = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), xc.T @ yc)
    return w, my - mx @ w


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{l >= 0} gamma^l r_{t+l}: the Monte-Carlo returns (GAE with lambda 1 and no
    values), the critic's targets before it knows anything. Shape: (B, T) -> (B, T)"""
    return gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)[1]


def explained_variance(returns: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
                       ) -> float:
    """1 - Var(returns - values) / Var(returns) over the positions in `mask` (0 when the
    returns do not vary): 1 for values that predict the returns, 0 for their mean, below 0
    for worse. Shape: (B, T) each, mask (B, T) bool"""
    r, v = returns[mask].double(), values[mask].double()
    var = r.var(unbiased=False)
    return (1 - (r - v).var(unbiased=False) / var).item() if var > 0 else 0.0


RIDGES = (1e-2, 1e-1, 1.0, 10.0, 100.0)


def choose_ridge(hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                 ridges=RIDGES, folds: int = 4) -> float:
    """The ridge strength whose fit best predicts answers it was not fitted on: `folds`-fold
    cross-validation over the answers (rows), scored by the held-out squared error. A rollout
    has about as many answer tokens as the hidden state has dimensions, so a weak penalty
    interpolates the batch and predicts the next one badly.

    Shape: hidden (B, T, H), targets (B, T), mask (B, T) bool
    """
    rows = len(hidden)
    folds = min(folds, rows)
    if folds < 2:
        return ridges[0]
    errors = []
    for ridge in ridges:
        err = 0.0
        for k in range(folds):
            test = torch.zeros(rows, dtype=torch.bool)
            test[k::folds] = True
            fit_mask, test_mask = mask & ~test[:, None], mask & test[:, None]
            if not fit_mask.any() or not test_mask.any():
                continue
            w, b = fit_linear(hidden[fit_mask], targets[fit_mask], ridge)
            err += ((hidden[test_mask].double() @ w + b - targets[test_mask].double()) ** 2
                    ).sum().item()
        errors.append(err)
    return ridges[min(range(len(ridges)), key=errors.__getitem__)]


@torch.no_grad()
def fit_head(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor, ridge: float | None = None) -> torch.Tensor:
    """Set `head` to the ridge fit of `targets` from `hidden` at the positions in `mask` (the
    ridge strength chosen by `choose_ridge` unless given); returns the head's new values
    (B, T), 0 outside the mask.

    Shape: hidden (B, T, H), targets (B, T), mask (B, T) bool
    """
    if ridge is None:
        ridge = choose_ridge(hidden, targets, mask)
    w, b = fit_linear(hidden[mask], targets[mask], ridge)
    head.weight.copy_(w.to(head.weight.dtype)[None])
    head.bias.fill_(b.item())
    values = hidden.double() @ w + b
    return values.float() * mask


class RewardModelCritic:
    """The value of answer position t from the preference model itself: its score of the
    prompt with answer[:t] as a finished answer (the state before token t), through a
    one-feature linear head, V_t = a * score_t + b.

    A preference model is trained to score finished conversations, read at their last token:
    its states inside an unfinished answer do not carry that score (on the embedded model a
    linear head on them predicted held-out answers' scores worse than their mean), but its
    score of "the answer so far, ended here" does (correlation 0.64 with the final score over
    the answer tokens of 40 of the SFT policy's answers, docs/training.md). At an answer's last
    token (its end-of-sequence token) that prefix is the whole answer, so the value is the
    reward's own score. The head starts at a = 1/scale, b = -shift/scale, the normalized score;
    with `value_warmup` (the default) a and b are then fitted to the first rollout's returns
    (`fit_head`: two numbers, nothing to overfit), which shrinks a toward the prefix score's
    correlation with the return; the value loss goes on from there.

    Cost: one preference-model forward per scored prefix. With `every` k > 1 only the prefixes
    of k, 2k, ... tokens (and the empty one, and the whole answer before its last token) are
    scored, and position t reads the longest scored prefix of at most t tokens: still a
    function of the state, with no look-ahead."""

    hidden_size = 1

    def __init__(self, reward_model, tokenizer, batch_size: int = 8, every: int = 1):
        self.reward_model, self.tokenizer, self.batch_size = reward_model, tokenizer, batch_size
        self.every = every

    @torch.no_grad()
    def start_head(self, head: torch.nn.Linear, shift: float, scale: float) -> None:
        head.weight.fill_(1.0 / scale)
        head.bias.fill_(-shift / scale)

    @torch.no_grad()
    def features(self, rollout: Rollout, messages: list[list[dict]]) -> torch.Tensor:
        """(B, R, 1) float32: the raw score of each answer prefix, 0 past each answer's end."""
        convs, where = [], []
        for b, (msgs, ids) in enumerate(zip(messages, rollout.response_ids)):
            scored = sorted(set(range(0, len(ids), self.every)) | {len(ids) - 1})
            for t in scored:
                text = answer_prefix(self.tokenizer, ids[:t])
                convs.append(msgs + [{"role": "assistant", "content": text}])
                where.append((b, t))
        out = torch.zeros(*rollout.mask.shape, 1)
        for (b, t), s in zip(where, self.reward_model.score(convs, self.batch_size)):
            out[b, t:t + self.every, 0] = s  # held until the next scored prefix
        return out * rollout.mask[..., None]
