"""The constitutional classifier: logistic heads on a frozen backbone's hidden states.

Two heads read the features a language model (by default the policy itself) computes for a
text, so a decision the policy's own representations already make is learned from a few hundred
soft labels in seconds:

- the **request** head: P(decline | prompt), trained on the feedback model's reading of each
  request against the constitution (`cai.scoring.requests`);
- the **answer** head: P(refuses | prompt, answer), trained on the judge's reading of answers
  (`cai.scoring.classify`).

Features of a text: for each chosen layer, the mean of its hidden states over the text's tokens
and the state at the last token, concatenated (for an answer, the mean runs over the answer's
tokens, the prompt before it only conditions them). A head is z = w . (x - mu) / sd + b, fitted
by L-BFGS on the soft-label cross-entropy

    L(w, b) = -mean_i [y_i log s(z_i) + (1 - y_i) log(1 - s(z_i))] + l2 / 2 * |w|^2,

with y_i in [0, 1] the label and s the logistic function (`fit_head`).

A classifier folder holds `classifier.json` (backbone, layers, thresholds), `heads.safetensors`
and the manifest of the run that made it; `Classifier.load` reads it for `cai classify`, the
two-sided reward (`cai.scoring.rewards`) and anyone using it as a guard.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from cai.foundation.errors import CaiError
from cai.foundation.model_store import load_causal_lm, load_tokenizer, pad_batch
from cai.generation.base import encode_chat

CONFIG = "classifier.json"
WEIGHTS = "heads.safetensors"
KINDS = ("request", "answer")


@dataclass
class Head:
    """z = w . (x - mu) / sd + b; P = sigmoid(z)."""
    w: torch.Tensor
    b: torch.Tensor
    mu: torch.Tensor
    sd: torch.Tensor

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(((x.float() - self.mu) / self.sd) @ self.w + self.b)


def centre(p: torch.Tensor, threshold: float) -> torch.Tensor:
    """sigmoid(logit(p) - logit(threshold)): p moved so that `threshold` maps to 1/2."""
    t = min(max(threshold, 1e-6), 1 - 1e-6)
    return torch.sigmoid(torch.logit(p.clamp(1e-6, 1 - 1e-6)) - math.log(t / (1 - t)))


def youden_threshold(scores: list[float], positive: list[bool]) -> float:
    """The threshold t maximizing Youden's J = TPR(t) - FPR(t) (flag when score > t), halfway
    between two neighbouring scores; 0.5 when one class is missing."""
    pos = sum(positive)
    neg = len(positive) - pos
    if not pos or not neg:
        return 0.5
    ranked = sorted(zip(scores, positive), reverse=True)
    best, best_j, tp, fp = 0.5, -1.0, 0, 0
    for i, (score, is_pos) in enumerate(ranked):
        tp, fp = tp + is_pos, fp + (not is_pos)
        below = ranked[i + 1][0] if i + 1 < len(ranked) else 0.0
        if below == score:
            continue
        j = tp / pos - fp / neg
        if j > best_j:
            best, best_j = (score + below) / 2, j
    return best


def fit_head(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, max_iter: int = 500) -> Head:
    """Soft-label logistic regression (the loss in the module docstring) on standardized x."""
    x = x.float()
    mu, sd = x.mean(0), x.std(0, unbiased=False) + 1e-6
    z = (x - mu) / sd
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")
    target = y.float()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, target) \
            + l2 * (w * w).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return Head(w.detach(), b.detach().reshape(()), mu, sd)


class Backbone:
    """A causal LM whose hidden states are the heads' features (eval mode, no gradients)."""

    def __init__(self, name: str, dtype: str = "float32", batch_size: int = 16,
                 max_tokens: int = 384):
        self.name = name
        self.tokenizer = load_tokenizer(name)
        self.model = load_causal_lm(name, dtype=dtype).eval()
        self.batch_size = batch_size
        self.max_tokens = max_tokens

    @torch.no_grad()
    def _pool(self, seqs: list[list[int]], starts: list[int], layers: list[int]) -> torch.Tensor:
        out = []
        for b in range(0, len(seqs), self.batch_size):
            batch = seqs[b:b + self.batch_size]
            ids, mask = pad_batch(batch, self.tokenizer.pad_token_id, left=True)
            span = torch.zeros(ids.shape, dtype=torch.float32)
            for i, s in enumerate(batch):
                span[i, ids.shape[1] - len(s) + starts[b + i]:] = 1.0
            hidden = self.model(input_ids=ids, attention_mask=mask,
                                output_hidden_states=True).hidden_states
            parts = []
            for layer in layers:
                h = hidden[layer].float()
                parts.append((h * span[..., None]).sum(1) / span.sum(1, keepdim=True))
                parts.append(h[:, -1])
            out.append(torch.cat(parts, -1))
        return torch.cat(out) if out else torch.zeros(0)

    def request_features(self, prompts: list[str], layers: list[int]) -> torch.Tensor:
        seqs = [encode_chat(self.tokenizer, [{"role": "user", "content": p}])[-self.max_tokens:]
                for p in prompts]
        return self._pool(seqs, [0] * len(seqs), layers)

    def answer_features(self, prompts: list[str], answers: list[str],
                        layers: list[int]) -> torch.Tensor:
        """The answer's tokens (at most half of max_tokens) after as much of the prompt as fits."""
        seqs, starts = [], []
        for prompt, answer in zip(prompts, answers):
            head = encode_chat(self.tokenizer, [{"role": "user", "content": prompt}])
            body = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            body = body[:self.max_tokens // 2] or [self.tokenizer.eos_token_id]
            head = head[-(self.max_tokens - len(body)):]
            seqs.append(head + body)
            starts.append(len(head))
        return self._pool(seqs, starts, layers)


class Classifier:
    """A saved classifier: `p_decline(prompts)` and `p_refuses(prompts, answers)`."""

    def __init__(self, config: dict, heads: dict[str, Head], backbone: Backbone | None = None):
        self.config = config
        self.heads = heads
        self.backbone = backbone or Backbone(config["backbone"])

    @property
    def layers(self) -> list[int]:
        return list(self.config["layers"])

    def threshold(self, kind: str) -> float:
        return float(self.config.get("thresholds", {}).get(kind, 0.5))

    def _head(self, kind: str) -> Head:
        if kind not in self.heads:
            raise CaiError(f"this classifier has no {kind} head (it was trained without "
                           f"{kind} labels)")
        return self.heads[kind]

    def p_decline(self, prompts: list[str], centred: bool = True) -> list[float]:
        """P(decline) of each prompt, centred on the request threshold t by default:
        sigmoid(logit(p) - logit(t)), so that 1/2 is the line the classifier draws (the
        two-sided reward changes sign there); `centred=False`: the head's own p."""
        head = self._head("request")
        p = head.probabilities(self.backbone.request_features(prompts, self.layers))
        return (centre(p, self.threshold("request")) if centred else p).tolist()

    def p_refuses(self, prompts: list[str], answers: list[str]) -> list[float]:
        head = self._head("answer")
        x = self.backbone.answer_features(prompts, answers, self.layers)
        return head.probabilities(x).tolist()

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        from cai.foundation.records import atomic_write_text

        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"{kind}.{name}": getattr(h, name).contiguous()
                   for kind, h in self.heads.items() for name in ("w", "b", "mu", "sd")}
        save_file(tensors, str(folder / WEIGHTS))
        atomic_write_text(folder / CONFIG, json.dumps(
            {**self.config, "heads": sorted(self.heads)}, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, backbone: Backbone | None = None) -> Classifier:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
            raise CaiError(f"{folder}: not a classifier folder (no {CONFIG} and {WEIGHTS}; make "
                           "one with `cai train classifier`)")
        config = json.loads((folder / CONFIG).read_text())
        tensors = load_file(str(folder / WEIGHTS))
        heads = {kind: Head(*(tensors[f"{kind}.{n}"] for n in ("w", "b", "mu", "sd")))
                 for kind in config.get("heads", []) if kind in KINDS}
        return cls(config, heads, backbone)
