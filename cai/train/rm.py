"""`cai train rm` and `cai score`: a preference (reward) model trained on AI labels.

Bai et al. 2022 (arXiv:2212.08073, section 4.1): RL-CAI trains a preference model on the
feedback model's labels, as soft targets, and uses its score as the reward for RL. The model is
the base LM with a scalar head (`AutoModelForSequenceClassification`, one output) and a LoRA
adapter (the head is trained in full next to it); the score of a conversation is the head's
output at its last token that is not padding (transformers' own rule, so TRL and transformers
pipelines read the saved model the same way). The loss is Bradley-Terry with soft targets
(`cai.train.losses.preference_loss`); chosen and rejected rows go through the model in one
forward. Evaluation on held-out pairs reports the accuracy and the calibration of
P(chosen better) = s(r_c - r_r).

`load_reward_model(folder).score(conversations)` is the one way to read scores (`cai score`
and PPO use it).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from cai.foundation.errors import CaiError
from cai.foundation.inputs import read_rows
from cai.foundation.model_store import pad_batch
from cai.scoring import labels as label_metrics
from cai.train import common, pairs
from cai.train import config as train_config
from cai.train.config import RMSection, TrainConfig
from cai.train.losses import preference_loss


def answer_prefix(tokenizer, ids: list[int]) -> str:
    """An unfinished answer's first tokens as the text the preference model scores (the
    reward-model critic's prefixes, and `rm.prefix_pairs`' cut answers)."""
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


class RewardTrainer(pairs.PairTrainer):
    """`transformers.Trainer` with the soft Bradley-Terry loss on pairs of scores."""

    def __init__(self, *args, soft_labels: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.soft_labels = soft_labels

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.count_tokens(inputs)
        scores = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       use_cache=False).logits.squeeze(-1).float()  # (2B,)
        chosen, rejected = scores.chunk(2)                            # (B,), (B,)
        p_chosen = inputs.get("p_chosen")
        loss = preference_loss(chosen, rejected, p_chosen if self.soft_labels else None).mean()
        if model.training:  # evaluation reports its metrics through compute_metrics
            margins = chosen - rejected
            self.record("rewards/chosen", chosen)
            self.record("rewards/rejected", rejected)
            self.record("rewards/margins", margins)
            self.record("rewards/accuracies", (margins > 0).float())
            if p_chosen is not None:
                agree, decided, gap = pairs.label_agreement(margins, p_chosen)
                self.record("labels/agreement", agree, decided)
                self.record("labels/abs_error", gap)
        return (loss, torch.stack([chosen, rejected], -1)) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, scores = self.compute_loss(model, inputs, return_outputs=True)  # (B, 2)
        if prediction_loss_only:
            return loss.detach(), None, None
        p_chosen = inputs.get("p_chosen")
        if p_chosen is None:
            p_chosen = torch.full_like(scores[:, 0], float("nan"))  # no soft labels
        return loss.detach(), scores.detach(), p_chosen


def eval_metrics(prediction) -> dict:
    """Accuracy and calibration of P(chosen better) = s(r_c - r_r) on held-out pairs.

    accuracy: fraction with r_c > r_r (ties count half); ece, brier: calibration against the
    pairs' hard label "chosen is better" (`cai.labels`); with AI labels, label_agreement
    (the model and the label prefer the same side, where t != 1/2) and label_abs_error
    (mean |P - t|).
    """
    scores = torch.as_tensor(prediction.predictions, dtype=torch.float64)  # (N, 2)
    target = torch.as_tensor(prediction.label_ids, dtype=torch.float64)    # (N,)
    margins = scores[:, 0] - scores[:, 1]
    p = torch.sigmoid(margins).tolist()
    out = {"accuracy": label_metrics.accuracy(p),
           "ece": label_metrics.expected_calibration_error(p),
           "brier": label_metrics.brier_score(p), "margin": margins.mean().item()}
    known = ~torch.isnan(target)
    if known.any():
        agree, decided, gap = pairs.label_agreement(margins[known], target[known])
        if decided.any():
            out["label_agreement"] = agree[decided].mean().item()
        out["label_abs_error"] = gap.mean().item()
    return {k: round(v, 6) for k, v in out.items()}


def load_config(path: str | None, overrides: list[tuple[str, str]]) -> TrainConfig:
    return train_config.load(path, overrides, "rm", RMSection)


def train(cfg: TrainConfig, resume: bool = False, callbacks=None) -> dict:
    """Run `cai train rm` from a resolved config; returns the training (and eval) metrics."""
    common.check_output(cfg, resume)
    defaults = {"prediction_loss_only": False}
    if cfg.data.group_by_length:
        defaults["train_sampling_strategy"] = "group_by_length"
    args = common.training_arguments(cfg, **defaults)
    model, tokenizer = common.model_and_tokenizer(cfg, num_labels=1)
    log = print if args.process_index == 0 else (lambda *_: None)
    opts = cfg.options
    augment = None
    if opts.prefix_pairs:
        def augment(rows):
            return rows + prefix_pairs(rows, tokenizer, opts.prefix_pairs, cfg.data.seed)
    train_rows, eval_rows = pairs.build(cfg.data, tokenizer, opts.label_column,
                                        opts.soft_labels, whole=True, log=log, augment=augment)
    pairs.check_eval(args, eval_rows, cfg.source)
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_rows,
                            eval_dataset=eval_rows, processing_class=tokenizer,
                            data_collator=pairs.PairCollator(tokenizer.pad_token_id),
                            compute_metrics=eval_metrics, callbacks=callbacks,
                            soft_labels=opts.soft_labels)
    metrics = common.run(trainer, cfg, resume)
    if eval_rows:
        metrics.update(common.evaluate(trainer))
    return metrics


def prefix_pairs(rows: list[dict], tokenizer, copies: int, seed: int = 0) -> list[dict]:
    """`copies` cut versions of each pair: both answers (their last message) cut to their
    first k tokens, the same k for both, drawn (seeded) from 1 .. (shorter answer - 1), and
    decoded as PPO's reward-model critic decodes an unfinished answer. The label is the
    pair's: a refusal and a compliance differ from their first words, and a critic that reads
    the score of "the answer so far" needs those scores to point where the answer ends up
    (a reward model trained on whole answers only scored prefixes with no relation to the
    final score, correlation -0.06, docs/training.md). Measured on the embedded model, the cut
    copies did not raise that correlation (0.30 without, 0.31 with three copies); they did
    act as extra training data (check pairs 0.88 -> 0.98, one seed). Pairs whose answers are
    one token, and cut pairs that come out the same, are left out (the tokenizer drops
    identical pairs too)."""
    rng = random.Random(f"{seed}:prefix")
    out = []
    for pair in rows:
        ids = {side: tokenizer(pair[side][-1]["content"], add_special_tokens=False)["input_ids"]
               for side in pairs.SIDES}
        shorter = min(len(x) for x in ids.values())
        for _ in range(copies if shorter > 1 else 0):
            k = rng.randint(1, shorter - 1)
            cut = {side: pair[side][:-1] + [{
                "role": pair[side][-1]["role"],
                "content": answer_prefix(tokenizer, ids[side][:k])}]
                for side in pairs.SIDES}
            if cut["chosen"] != cut["rejected"]:
                out.append({**pair, **cut, "where": f"{pair['where']} (first {k} tokens)"})
    return out


# --------------------------------------------------------------------------------------------
# Loading and scoring


class RewardModel:
    """A trained reward model: `score(conversations)` -> one float per conversation."""

    def __init__(self, model, tokenizer, max_length: int | None = None):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.device = next(model.parameters()).device

    def prompt_length(self, messages: list[dict]) -> int:
        """Tokens of `messages` plus an empty assistant turn in this model's template: what
        a conversation costs before its answer's first token."""
        return len(pairs.whole_ids(self.tokenizer,
                                   messages + [{"role": "assistant", "content": ""}]))

    @torch.no_grad()
    def score(self, conversations: list[list[dict]], batch_size: int = 8) -> list[float]:
        """The score of each conversation (ending with the assistant turn to judge), read at
        its last token, with the same tokens as in training; past `max_length` the start of
        the prompt is cut, never the answer (`pairs.fit_scored`)."""
        ids = [pairs.fit_scored(pairs.whole_ids(self.tokenizer, c), self.max_length)
               for c in conversations]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = [0.0] * len(ids)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), batch_size):
            part = order[start:start + batch_size]
            batch, mask = pad_batch([ids[i] for i in part], pad, left=False)
            out = self.model(input_ids=batch.to(self.device), attention_mask=mask.to(self.device))
            for i, s in zip(part, out.logits[:, 0].float().tolist()):
                scores[i] = s
        return scores


def load_reward_model(folder, dtype: str = "float32", device: str | None = None) -> RewardModel:
    """A `cai train rm` output folder (adapter + head), or a merged or full classifier folder."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from cai.foundation.model_store import load_tokenizer, resolve, torch_dtype

    folder = Path(folder)
    adapter_file = folder / "adapter_config.json"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is "newly initialized" before the adapter loads
    try:
        if adapter_file.is_file():
            adapter = json.loads(adapter_file.read_text())
            if adapter.get("task_type") != "SEQ_CLS":
                raise CaiError(f"{folder}: a {adapter.get('task_type')} adapter, not a reward "
                               "model (train one with `cai train rm`)")
            base = adapter["base_model_name_or_path"]
            model = AutoModelForSequenceClassification.from_pretrained(
                resolve(base), num_labels=1, dtype=torch_dtype(dtype))
            model = PeftModel.from_pretrained(model, folder).merge_and_unload()
        elif (folder / "config.json").is_file():
            config = AutoConfig.from_pretrained(folder)
            if not any(a.endswith("ForSequenceClassification")
                       for a in config.architectures or []) or config.num_labels != 1:
                raise CaiError(f"{folder}: not a reward model (a classifier with one output)")
            base = folder
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, dtype=torch_dtype(dtype))
        else:
            raise CaiError(f"{folder}: not a reward model folder (no adapter_config.json or "
                           "config.json)")
    finally:
        hf_logging.set_verbosity(verbosity)
    if (folder / "tokenizer_config.json").is_file():  # saved with the model by `cai train rm`
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer = load_tokenizer(base)
    model.config.pad_token_id = tokenizer.pad_token_id
    max_length = None
    resolved = folder / train_config.RESOLVED
    if resolved.is_file():
        import yaml

        max_length = (yaml.safe_load(resolved.read_text()) or {}).get("data", {}).get("max_length")
    if device:
        model = model.to(device)
    elif torch.cuda.is_available():
        model = model.cuda()
    return RewardModel(model.eval(), tokenizer, max_length)


def score_file(model_dir, data, batch_size: int = 8) -> list[dict]:
    """Scores of the records in `data` (a .jsonl): each row's `id` (or line number), and its
    `kind` if it has one, with `score` for prompt + response (or `messages`), or `score_chosen`
    and `score_rejected` for a preference record (chosen/rejected, or better/worse as in
    `data/label_check.jsonl`)."""
    rows = read_rows(str(data), "train", "a .jsonl or a `cai label` folder")
    convs, slots = [], []  # slots: (row index, output key)
    for n, (where, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise CaiError(f"{where}: expected an object")
        if "better" in row and "worse" in row and not ("chosen" in row or "rejected" in row):
            row = {**row, "chosen": row["better"], "rejected": row["worse"]}
        if "chosen" in row and "rejected" in row:
            pair = pairs.read_pair(row, where)
            for side in pairs.SIDES:
                convs.append(pair["prompt"] + pair[side])
                slots.append((n, f"score_{side}"))
        elif "response" in row and "prompt" in row:
            convs.append(pairs.as_messages(row["prompt"], "user", where, "prompt")
                         + pairs.as_messages(row["response"], "assistant", where, "response"))
            slots.append((n, "score"))
        elif "messages" in row:
            convs.append(pairs.as_messages(row["messages"], "user", where, "messages"))
            slots.append((n, "score"))
        else:
            raise CaiError(f"{where}: needs prompt and response, messages, or chosen and "
                           "rejected")
    if not convs:
        raise CaiError(f"{data}: no records to score")
    scores = load_reward_model(model_dir).score(convs, batch_size)
    out = [{"id": row.get("id", n + 1), **({"kind": row["kind"]} if "kind" in row else {})}
           for n, (_, row) in enumerate(rows)]
    for (n, key), s in zip(slots, scores):
        out[n][key] = s if math.isfinite(s) else None
    return out


def ranking_accuracy(scored: list[dict]) -> dict[str, tuple[float, int]]:
    """{"all" or a kind: (accuracy, pairs)} over the preference rows of `score_file` output:
    the share with score_chosen > score_rejected, a tie counting 1/2, computed as the trainer's
    eval_accuracy (`eval_metrics`). Empty when no row is a pair."""
    margins: dict[str, list[float]] = {}
    for row in scored:
        chosen, rejected = row.get("score_chosen"), row.get("score_rejected")
        if chosen is None or rejected is None:
            continue
        for key in ("all", *([str(row["kind"])] if "kind" in row else [])):
            margins.setdefault(key, []).append(chosen - rejected)
    return {k: (label_metrics.accuracy(torch.sigmoid(torch.tensor(v, dtype=torch.float64))
                                       .tolist()), len(v)) for k, v in margins.items()}
