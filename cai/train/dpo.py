"""`cai train dpo`: direct preference optimization on AI preference labels (RL-CAI without PPO).

Rafailov et al. 2023 (arXiv:2305.18290): the policy pi is trained on pairs (prompt, chosen,
rejected) to raise beta * (log pi(y_c) - log ref(y_c)) - beta * (log pi(y_r) - log ref(y_r)),
where ref is the model before training; `cai.train.losses.dpo_loss` holds the loss family
(sigmoid, ipo, hinge, robust) and the soft targets: with `dpo.soft_labels`, the AI label
P(chosen better) that `cai label` writes as `p_chosen` (Bai et al. 2022, section 4.1).

How the work is done:
- a sequence log-prob is the sum of the completion tokens' log-probs; only the positions that
  predict a completion token go through the LM head (`logits_to_keep` with a boolean mask);
- chosen and rejected rows of a batch go through the model in one forward, (2B, T);
- the reference is the same model with the LoRA adapter disabled (no second copy in memory).
  Its log-probs are computed once, before training, in one pass over the train and eval pairs,
  and cached in the output folder under a hash of the model, the tokens and the precision, so a
  resumed or repeated run reuses them. With full fine-tuning (no adapter) the pass runs on the
  model before its first step, which is the reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from cai.foundation.errors import CaiError
from cai.foundation.model_store import fingerprint
from cai.train import common, pairs
from cai.train import config as train_config
from cai.train.config import DPOSection, TrainConfig
from cai.train.losses import IGNORE_INDEX, dpo_loss, token_logps

CACHE_VERSION = 1  # bump when the way reference log-probs are computed changes


def sequence_logps(model, batch: dict, keep_logits: bool | None = None):
    """(log-probs (N,), completion token counts (N,)) of the N rows of `batch`.

    `keep_logits`: project only the completion positions through the LM head (None: where the
    model and transformers support it, see `common.accepts_logits_to_keep`).

    log p(y) = sum over the completion tokens t of log p(y_t | y_<t), the labels holding the
    completion tokens and -100 elsewhere (prompt, template, padding).
    """
    labels = batch["labels"]                                          # (N, T)
    targets = labels[:, 1:]                                           # (N, T-1) next tokens
    keep = targets != IGNORE_INDEX                                    # (N, T-1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "use_cache": False}
    if keep_logits is None:
        keep_logits = common.accepts_logits_to_keep(model)
    if keep_logits:
        logits = model(**inputs, logits_to_keep=F.pad(keep, (0, 1))).logits  # (K, V)
        per_token = token_logps(logits, targets[keep])                      # (K,)
        rows = keep.nonzero()[:, 0]                                         # (K,)
        logps = per_token.new_zeros(labels.size(0)).index_add(0, rows, per_token)
    else:
        logits = model(**inputs).logits[:, :-1]                             # (N, T-1, V)
        logps = token_logps(logits, targets).sum(-1)
    return logps, keep.sum(-1)


class DPOTrainer(pairs.PairTrainer):
    """`transformers.Trainer` with cai's DPO loss on precomputed reference log-probs."""

    def __init__(self, *args, dpo: DPOSection, **kwargs):
        super().__init__(*args, **kwargs)
        self.dpo = dpo
        self.keep_logits = common.accepts_logits_to_keep(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.count_tokens(inputs)
        logps, counts = sequence_logps(model, inputs, self.keep_logits)  # (2B,), (2B,)
        chosen_logps, rejected_logps = logps.chunk(2)
        chosen_n, rejected_n = counts.chunk(2)
        p_chosen = inputs.get("p_chosen")
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen_logps, rejected_logps, inputs["ref_chosen_logps"], inputs["ref_rejected_logps"],
            self.dpo.beta, self.dpo.loss_type, p_chosen if self.dpo.soft_labels else None,
            label_smoothing=self.dpo.label_smoothing, chosen_lengths=chosen_n,
            rejected_lengths=rejected_n)
        margins = chosen_rewards - rejected_rewards
        self.record("rewards/chosen", chosen_rewards)
        self.record("rewards/rejected", rejected_rewards)
        self.record("rewards/margins", margins)
        self.record("rewards/accuracies", (margins > 0).float())
        self.record("logps/chosen", chosen_logps)
        self.record("logps/rejected", rejected_logps)
        if p_chosen is not None:
            agree, decided, gap = pairs.label_agreement(margins, p_chosen)
            self.record("labels/agreement", agree, decided)
            self.record("labels/abs_error", gap)
        loss = losses.mean()
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---------------------------------------------------------------------------------------
    # The reference

    @torch.no_grad()
    def reference_logps(self, examples: list[dict], batch_size: int) -> torch.Tensor:
        """(n, 2) reference log-probs (chosen, rejected) of `examples`: the adapter disabled, in
        eval mode; each process scores a share, then all are gathered."""
        from accelerate.utils import gather_object
        from peft import PeftModel
        from tqdm.auto import tqdm

        model = self.accelerator.unwrap_model(self.model)
        device = model.get_input_embeddings().weight.device
        adapter = model.disable_adapter() if isinstance(model, PeftModel) else \
            contextlib.nullcontext()
        mine = list(range(self.args.process_index, len(examples), self.args.world_size))
        mine.sort(key=lambda i: examples[i]["length"])  # little padding
        collate = self.data_collator
        was_training, found = model.training, []
        model.eval()
        try:
            with adapter, self.accelerator.autocast():
                for start in tqdm(range(0, len(mine), batch_size), desc="reference log-probs",
                                  disable=not self.is_local_process_zero()
                                  or self.args.disable_tqdm):
                    part = mine[start:start + batch_size]
                    batch = collate([examples[i] for i in part])
                    batch = {k: v.to(device) for k, v in batch.items()}
                    logps, _ = sequence_logps(model, batch, self.keep_logits)
                    found += zip(part, logps.float().view(2, -1).T.tolist())
        finally:
            model.train(was_training)
        values = torch.zeros(len(examples), 2, dtype=torch.float64)
        for i, pair in gather_object(found):
            values[i] = torch.tensor(pair)
        return values

    def attach_reference(self, cache: Path | None, key: str, batch_size: int, log=print) -> None:
        """Put `ref_chosen_logps` / `ref_rejected_logps` into every train and eval example,
        from `cache` (a folder) when it holds them for `key`, else computed and saved there."""
        from accelerate.utils import broadcast_object_list

        for name, examples in (("train", self.train_dataset), ("eval", self.eval_dataset)):
            if not examples:
                continue
            path = cache / f"ref_logps-{name}-{key}.pt" if cache else None
            saved = [torch.load(path, weights_only=True) if path and path.is_file()
                     and self.args.process_index == 0 else None]
            values = broadcast_object_list(saved)[0]  # process 0's file, for every process
            if values is not None:
                log(f"{name}: reference log-probs from {path}")
            else:
                values = self.reference_logps(examples, batch_size)
                if path and self.args.process_index == 0:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".tmp{os.getpid()}")
                    torch.save(values, tmp)
                    os.replace(tmp, path)  # whole or absent, never half a file
            if len(values) != len(examples):
                raise CaiError(f"{path}: holds {len(values)} pairs, the data {len(examples)}; "
                               "delete it")
            for ex, (chosen, rejected) in zip(examples, values.tolist()):
                ex["ref_chosen_logps"], ex["ref_rejected_logps"] = chosen, rejected


def reference_key(cfg, examples: list[dict]) -> str:
    """A hash of what the reference log-probs depend on: the base model (`models.fingerprint`:
    its files' names, sizes and times), its precision and quantization, and every token id and
    label of the pairs."""
    h = hashlib.sha256(json.dumps({
        "version": CACHE_VERSION, "model": fingerprint(cfg.model.name),
        "dtype": cfg.model.dtype, "attn": cfg.model.attn_implementation,
        "quantization": dataclasses.asdict(cfg.quantization),
        "autocast": [bool(cfg.training.get("bf16")), bool(cfg.training.get("fp16"))],
    }, sort_keys=True).encode())
    for ex in examples:
        h.update(json.dumps([ex[k] for k in ("chosen_ids", "chosen_labels", "rejected_ids",
                                             "rejected_labels")]).encode())
    return h.hexdigest()[:16]


def load_config(path: str | None, overrides: list[tuple[str, str]]) -> TrainConfig:
    return train_config.load(path, overrides, "dpo", DPOSection)


def train(cfg: TrainConfig, resume: bool = False, callbacks=None) -> dict:
    """Run `cai train dpo` from a resolved config; returns the training (and eval) metrics.

    `callbacks`: extra `transformers.TrainerCallback`s (the benchmark times steps with one).
    """
    common.check_output(cfg, resume)
    defaults = {}
    if cfg.data.group_by_length:
        defaults["train_sampling_strategy"] = "group_by_length"
    args = common.training_arguments(cfg, **defaults)
    model, tokenizer = common.model_and_tokenizer(cfg)
    if cfg.options.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    log = print if args.process_index == 0 else (lambda *_: None)
    opts = cfg.options
    train_rows, eval_rows = pairs.build(cfg.data, tokenizer, opts.label_column,
                                        opts.soft_labels, whole=False, log=log)
    pairs.check_eval(args, eval_rows, cfg.source)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_rows,
                         eval_dataset=eval_rows, processing_class=tokenizer,
                         data_collator=pairs.PairCollator(tokenizer.pad_token_id),
                         callbacks=callbacks, dpo=opts)
    key = reference_key(cfg, train_rows + (eval_rows or []))
    trainer.attach_reference(cfg.output_dir if opts.cache_reference else None, key,
                             opts.ref_batch_size or args.per_device_eval_batch_size, log)
    metrics = common.run(trainer, cfg, resume)
    if eval_rows:
        metrics.update(common.evaluate(trainer))
    return metrics
