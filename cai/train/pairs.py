"""Preference pairs for `cai train dpo` and `cai train rm`: records, tokens, batches, metrics.

Records, in the formats TRL, Axolotl and LLaMA-Factory read:
- conversational: `{"prompt": [messages], "chosen": [assistant messages], "rejected": [...]}`
  (`cai label` output, whose `p_chosen` is the AI soft label P(chosen better));
- standard: `{"prompt": str, "chosen": str, "rejected": str}` (a user turn and two answers);
- implicit prompt: `{"chosen": [conversation], "rejected": [conversation]}`: the messages both
  share at the start are the prompt.

Tokens. Each side is `prompt + completion` rendered with the chat template and tokenized once.
For DPO the labels mark the completion's assistant tokens with their end-of-turn token (the SFT
masking of `data.tokenize_conversation`), and the template's whitespace after the last one is
cut off; for the reward model the whole rendered conversation is kept, since the score is read at
its last token. A pair too long for `max_length` loses the start of its prompt, never the end of
an answer (`tokenize_pairs`). A batch stacks the B chosen rows over the B rejected rows,
right-padded, so both sides go through the model in one forward: `input_ids` (2B, T).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from transformers import Trainer

from cai.foundation.errors import CaiError
from cai.foundation.inputs import read_rows
from cai.train.data import Collator, tokenize_conversation
from cai.train.losses import IGNORE_INDEX

SIDES = ("chosen", "rejected")


# --------------------------------------------------------------------------------------------
# Reading


def as_messages(value, role: str, where: str, key: str) -> list[dict]:
    """A text (one message of `role`) or a list of {role, content} messages, checked."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in value):
        raise CaiError(f"{where}: '{key}' must be a text or a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def read_pair(row, where: str, label_column: str = "p_chosen") -> dict:
    """One record as {prompt, chosen, rejected: messages, p_chosen: float or None}."""
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise CaiError(f"{where}: a preference record needs 'chosen' and 'rejected' (and "
                       "'prompt')")
    chosen = as_messages(row["chosen"], "assistant", where, "chosen")
    rejected = as_messages(row["rejected"], "assistant", where, "rejected")
    if row.get("prompt") is not None:
        prompt = as_messages(row["prompt"], "user", where, "prompt")
    else:  # implicit prompt: the messages both conversations start with
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    for side, messages in (("chosen", chosen), ("rejected", rejected)):
        if not any(m["role"] == "assistant" for m in messages):
            raise CaiError(f"{where}: '{side}' has no assistant message")
    p = row.get(label_column)
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float))
                          or not 0 <= p <= 1):
        raise CaiError(f"{where}: '{label_column}' must be a probability in [0, 1], got {p!r}")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "p_chosen": None if p is None else float(p), "where": where}


def load_pairs(spec: str, split: str = "train", limit: int | None = None,
               label_column: str = "p_chosen", need_labels: bool = False) -> list[dict]:
    """Preference pairs from a .jsonl, a `cai label` folder or dataset:NAME_OR_DIR."""
    rows = read_rows(spec, split, "a .jsonl or a `cai label` folder")
    pairs = [read_pair(row, where, label_column)
             for where, row in (rows[:limit] if limit is not None else rows)]
    if not pairs:
        raise CaiError(f"{spec}: no preference pairs")
    if need_labels:
        missing = next((p["where"] for p in pairs if p["p_chosen"] is None), None)
        if missing:
            raise CaiError(f"{missing}: no '{label_column}' for the soft label (set "
                           "soft_labels: false to train on hard labels)")
    return pairs


# --------------------------------------------------------------------------------------------
# Tokenizing and batching


def whole_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The token ids of a whole rendered conversation (what the reward model scores)."""
    return tokenize_conversation(tokenizer, messages, assistant_only=False)[0]


def side_tokens(tokenizer, prompt: list[dict], completion: list[dict], whole: bool = False):
    """(ids, labels, start) of prompt + completion; `start` is the index of the completion's
    first assistant token (what comes before it is the prompt and the turn's header).

    labels mark the completion's assistant tokens (None with `whole`). For DPO the template's
    tokens after the last of them are cut (nothing there is scored); the reward model keeps the
    whole rendered conversation, since its score is read at the last token.
    """
    ids, labels = tokenize_conversation(tokenizer, prompt + completion, first_target=len(prompt))
    targets = [i for i, x in enumerate(labels) if x != IGNORE_INDEX]
    start = targets[0] if targets else len(ids)
    if whole:
        return ids, None, start
    last = targets[-1] if targets else -1
    return ids[:last + 1], labels[:last + 1], start


@dataclass
class PairCounts:
    """What tokenizing a set of pairs kept and dropped (`tokenize_pairs`)."""

    kept: int = 0
    tokens: int = 0
    prompt_cut: int = 0     # kept, with the prompt cut from the left
    too_long: int = 0       # dropped: a completion longer than max_length (or "drop" mode)
    identical: int = 0      # dropped: chosen and rejected are the same tokens

    def summary(self) -> str:
        text = f"{self.kept} pairs, {self.tokens} tokens"
        if self.prompt_cut:
            text += f"; {self.prompt_cut} prompts cut from the left to fit max_length"
        if self.too_long:
            text += f"; {self.too_long} dropped (over max_length)"
        if self.identical:
            text += f"; {self.identical} dropped (chosen and rejected identical)"
        return text


def tokenize_pairs(tokenizer, pairs: list[dict], max_length: int, truncation: str = "cut",
                   whole: bool = False) -> tuple[list[dict], str]:
    """Tokenized pairs and a one-line summary of counts (`PairCounts`).

    An example is `{chosen_ids, rejected_ids, p_chosen, length}` plus `chosen_labels`,
    `rejected_labels` unless `whole` (the reward model's form).

    A pair longer than `max_length` keeps its completions whole: with `truncation="cut"` the
    prompt loses its first tokens, the same number on both sides so both answers are read after
    the same context; a pair whose completion alone does not fit is dropped, and so is every
    long pair with `"drop"`. A pair whose two sides are the same tokens teaches nothing (and would
    count as a tie in accuracy and calibration): dropped too.
    """
    examples, counts = [], PairCounts()
    for pair in pairs:
        sides = {side: side_tokens(tokenizer, pair["prompt"], pair[side], whole)
                 for side in SIDES}
        for side, (_, labels, _) in sides.items():
            if labels is not None and all(x == IGNORE_INDEX for x in labels[1:]):
                raise CaiError(f"{pair['where']}: the {side} completion has no token to score")
        cut = max(len(ids) - max_length for ids, _, _ in sides.values())
        if cut > 0 and (truncation == "drop" or any(cut > start for _, _, start in
                                                    sides.values())):
            counts.too_long += 1
            continue
        cut = max(cut, 0)
        ex = {}
        for side, (ids, labels, _) in sides.items():
            ex[f"{side}_ids"] = ids[cut:]
            if labels is not None:
                ex[f"{side}_labels"] = labels[cut:]
        if ex["chosen_ids"] == ex["rejected_ids"]:
            counts.identical += 1
            continue
        ex["p_chosen"] = pair["p_chosen"]
        ex["length"] = max(len(ex["chosen_ids"]), len(ex["rejected_ids"]))
        examples.append(ex)
        counts.kept += 1
        counts.prompt_cut += cut > 0
        counts.tokens += len(ex["chosen_ids"]) + len(ex["rejected_ids"])
    return examples, counts.summary()


def fit_scored(ids: list[int], max_length: int | None) -> list[int]:
    """The tokens the reward model reads of a conversation: its last `max_length` (the score is
    read at the last token, so a long prompt loses its start, never the answer's end)."""
    return ids[-max_length:] if max_length and len(ids) > max_length else ids


@dataclass
class PairCollator:
    """B pairs -> `input_ids`, `attention_mask` (and `labels`) of shape (2B, T): the chosen rows
    first, then the rejected rows, right-padded; `p_chosen` (B,) when every pair has one, and
    the reference log-probs (B,) once they are attached."""

    pad_token_id: int

    def __call__(self, batch: list[dict]) -> dict:
        labelled = "chosen_labels" in batch[0]
        rows = [{"input_ids": ex[f"{side}_ids"],
                 "labels": ex[f"{side}_labels"] if labelled else ex[f"{side}_ids"]}
                for side in SIDES for ex in batch]
        out = Collator(self.pad_token_id)(rows)
        if not labelled:
            del out["labels"]
        if all(ex.get("p_chosen") is not None for ex in batch):
            out["p_chosen"] = torch.tensor([ex["p_chosen"] for ex in batch], dtype=torch.float32)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in batch[0]:
                out[key] = torch.tensor([ex[key] for ex in batch], dtype=torch.float32)
        return out


def build(data_cfg, tokenizer, label_column: str, need_labels: bool, whole: bool, log=print,
          augment=None):
    """(train examples, eval examples or None) from the `data:` section; `augment` maps the
    training pairs (after the held-out ones are split off) to the pairs to train on."""
    if data_cfg.packing:
        raise CaiError("data.packing does not apply to preference pairs (each batch holds the "
                       "chosen and the rejected rows of its pairs); set it to false")
    pairs = load_pairs(data_cfg.path, data_cfg.split, data_cfg.limit, label_column, need_labels)
    held_out = None
    if data_cfg.eval_path:
        held_out = load_pairs(data_cfg.eval_path, data_cfg.split, None, label_column,
                              need_labels)
    elif data_cfg.eval_fraction:
        order = list(range(len(pairs)))
        random.Random(data_cfg.seed).shuffle(order)
        n_eval = max(1, round(len(order) * data_cfg.eval_fraction))
        held_out = [pairs[i] for i in sorted(order[:n_eval])]
        pairs = [pairs[i] for i in sorted(order[n_eval:])]
    if augment:
        pairs = augment(pairs)
    train, summary = tokenize_pairs(tokenizer, pairs, data_cfg.max_length, data_cfg.truncation,
                                    whole)
    if not train:
        raise CaiError(f"{data_cfg.path}: no pair left after truncation to "
                       f"{data_cfg.max_length} tokens")
    log(f"train: {summary}")
    evaluation = None
    if held_out:
        evaluation, summary = tokenize_pairs(tokenizer, held_out, data_cfg.max_length,
                                             data_cfg.truncation, whole)
        log(f"eval: {summary}")
    return train, evaluation or None


def check_eval(args, evaluation, source: str) -> None:
    """A one-line error instead of the Trainer's traceback: evaluation asked for, no eval data."""
    if not evaluation and args.eval_strategy != "no":
        raise CaiError(f"{source}: training.eval_strategy is '{args.eval_strategy.value}' but "
                       "there are no eval pairs (set data.eval_path or data.eval_fraction, or "
                       "training.eval_strategy: no)")


# --------------------------------------------------------------------------------------------
# The trainers' shared part


def label_agreement(margins: torch.Tensor, target: torch.Tensor) -> tuple:
    """Per pair: does the model prefer the side the soft label prefers (pairs with t != 1/2),
    and |s(margin) - t|, the gap between the model's and the label's P(chosen better)."""
    decided = target != 0.5
    agree = ((margins > 0) == (target > 0.5)).float()
    return agree, decided, (torch.sigmoid(margins) - target).abs()


class PairTrainer(Trainer):
    """`transformers.Trainer` for losses with one value per pair.

    The loss of a micro-batch is the mean over its pairs, and the Trainer divides it by the
    accumulation steps (equal micro-batches: the mean over the step). Logged metrics are summed
    as tensors during the steps (no device sync per step) and averaged over every process at
    logging time. Without packing, pairs of similar length are batched together
    (`group_by_length`, on the longer side of each pair).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.tokens_seen = 0  # non-padding tokens trained on by this process
        self._sums: dict[str, dict[str, list]] = {"train": {}, "eval": {}}

    def record(self, name: str, values: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add per-pair `values` (where `mask`) to the running mean of metric `name`."""
        values = values.detach().float()
        mask = torch.ones_like(values) if mask is None else mask.float()
        sums = self._sums["train" if self.model.training else "eval"]
        total, count = sums.get(name, (0.0, 0.0))
        sums[name] = (total + (values * mask).sum(), count + mask.sum())

    def log(self, logs: dict, start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        sums = self._sums[mode]
        if sums:
            names = sorted(sums)
            stacked = torch.stack([torch.stack([torch.as_tensor(sums[k][0], dtype=torch.float32),
                                                torch.as_tensor(sums[k][1], dtype=torch.float32)])
                                   .to(self.args.device) for k in names])  # (metrics, 2)
            stacked = self.accelerator.reduce(stacked, reduction="sum").tolist()
            prefix = "eval_" if mode == "eval" else ""
            for name, (total, count) in zip(names, stacked):
                if count:
                    logs[prefix + name] = round(total / count, 6)
            sums.clear()
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy == "group_by_length":
            from transformers.trainer_pt_utils import LengthGroupedSampler

            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                lengths=[ex["length"] for ex in dataset])
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        if self.args.train_sampling_strategy == "group_by_length":
            # the Trainer would group by `input_ids` length, which pairs do not have
            return torch.utils.data.SequentialSampler(eval_dataset) \
                if self.args.world_size <= 1 else None  # None: accelerate shards in order
        return super()._get_eval_sampler(eval_dataset)

    def count_tokens(self, inputs: dict) -> None:
        if self.model.training and "n_tokens" in inputs:
            self.tokens_seen = self.tokens_seen + inputs["n_tokens"]  # a tensor: no sync

