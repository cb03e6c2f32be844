"""`cai train sft`: supervised fine-tuning on conversations (SL-CAI's last step).

Bai et al. 2022 (arXiv:2212.08073, section 3.1): after the critique-revision rounds, the model
is fine-tuned on its own final revisions (`cai revise` output, `messages`). The loss is the
token-mean negative log-likelihood of the assistant tokens (`cai.train.losses.sft_loss`),
normalized by the number of target tokens in the whole optimizer step, so gradient
accumulation and data parallelism do not change it.

With `sft.kl_coef` > 0 the loss gains that times the token-mean KL(base || model) of the
next-token distributions at the same tokens (`cai.train.losses.token_kl`; KL(model || base)
with `sft.kl_direction: reverse`), the base being the model with its LoRA adapter off (no
second copy; one extra no-grad forward a step). Imitating the policy's own greedy or
low-temperature answers sharpens its distribution and costs neutral ability (docs/results.md);
the KL term pulls it back wherever the data teaches nothing new.

`sft.kl_only_kinds: [helpful]` goes one step further for the rows of those kinds (`cai revise`
marks each row `revision` or `helpful`): their tokens leave the NLL and keep only the KL term,

    L = (1/N) [ sum_{t not anchored} -log p(y_t | y_<t) + c * sum_t KL_t(base || model) ]

with N all target tokens (KL_t(model || base) with `kl_direction: reverse`). The policy's own
helpful answers then say "answer this prompt the way the base did", the whole next-token
distribution at every position, rather than "make this sampled answer more likely", which is
what sharpened the model; the revisions are still imitated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer

from cai.foundation.errors import CaiError
from cai.train import common, data
from cai.train import config as train_config
from cai.train.config import SFTSection, TrainConfig
from cai.train.losses import IGNORE_INDEX, sft_loss, token_kl, token_mean


class SFTTrainer(Trainer):
    """`transformers.Trainer` with cai's masked token-mean NLL.

    Only the positions that predict a target token go through the LM head (`logits_to_keep`
    with a boolean mask), which skips the vocabulary projection for prompts and padding.
    """

    # The loss is divided by the step's target-token count (num_items_in_batch), so the Trainer
    # must neither divide it again by the accumulation steps ...
    loss_is_scaled_for_ga = True

    def __init__(self, *args, kl_coef: float = 0.0, kl_reverse: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # ... and must count those tokens for every step
        self.keep_logits = common.accepts_logits_to_keep(self.model)
        self.tokens_seen = 0  # non-padding tokens trained on by this process
        self.kl_coef = kl_coef
        self.kl_reverse = kl_reverse
        self.kl_sum = 0.0  # the KL term's values since the last log (as micro-batch losses)
        self.kl_logged_at = 0  # the step of that log

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n_tokens = inputs.pop("n_tokens", None)
        anchor = inputs.pop("anchor", None)                           # (B, T) or None
        labels = inputs.pop("labels")                                 # (B, T)
        targets = labels[:, 1:]                                       # (B, T-1) next tokens
        keep = targets != IGNORE_INDEX                                # (B, T-1)
        kept = {"logits_to_keep": F.pad(keep, (0, 1))} if self.keep_logits else {}
        outputs = model(**inputs, use_cache=False, **kept)
        # (N, V) for the kept positions only, else (B, T-1, V) with every position
        logits = outputs.logits if self.keep_logits else outputs.logits[:, :-1]
        kept_targets = targets[keep] if self.keep_logits else targets
        imitated = kept_targets
        if anchor is not None:  # anchored targets: KL term only
            anchored = anchor[:, 1:].bool()
            anchored = anchored[keep] if self.keep_logits else anchored
            imitated = kept_targets.masked_fill(anchored, IGNORE_INDEX)
        loss = sft_loss(logits, imitated, num_items_in_batch)
        if self.kl_coef:
            # the adapter toggles on the peft model itself (under DDP, inside the wrapper)
            with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
                ref = model(**inputs, use_cache=False, **kept).logits
            ref = ref if self.keep_logits else ref[:, :-1]
            kl = token_mean(token_kl(logits, ref, self.kl_reverse), kept_targets != IGNORE_INDEX,
                            num_items_in_batch)
            loss = loss + self.kl_coef * kl
            if model.training:
                self.kl_sum = self.kl_sum + kl.detach()
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch counts every process's tokens, and DDP averages gradients
            loss = loss * self.accelerator.num_processes
        if model.training and n_tokens is not None:
            self.tokens_seen = self.tokens_seen + n_tokens  # a tensor: no device sync per step
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Training logs gain `kl`, the mean KL (in `kl_direction`) per trained token since
        the last log (with `kl_coef`)."""
        if self.kl_coef and "loss" in logs and self.state.global_step:
            steps = self.state.global_step - self.kl_logged_at
            logs["kl"] = round(float(self.kl_sum) / max(steps, 1), 4)
            self.kl_sum, self.kl_logged_at = 0.0, self.state.global_step
        super().log(logs, *args, **kwargs)


def load_config(path: str | None, overrides: list[tuple[str, str]]) -> TrainConfig:
    return train_config.load(path, overrides, "sft", SFTSection)


def train(cfg: TrainConfig, resume: bool = False, callbacks=None) -> dict:
    """Run `cai train sft` from a resolved config; returns the training metrics.

    `callbacks`: extra `transformers.TrainerCallback`s (the benchmark times steps with one).
    """
    if cfg.options.kl_only_kinds and not cfg.options.kl_coef:
        raise CaiError("sft.kl_only_kinds needs sft.kl_coef > 0: those rows are trained by the "
                       "KL term alone")
    common.check_output(cfg, resume)
    defaults = {}
    if cfg.data.group_by_length and not cfg.data.packing:
        defaults["train_sampling_strategy"] = "group_by_length"
    args = common.training_arguments(cfg, **defaults)
    model, tokenizer = common.model_and_tokenizer(cfg)
    log = print if args.process_index == 0 else (lambda *_: None)
    if cfg.options.kl_coef and not hasattr(model, "disable_adapter"):
        raise CaiError("sft.kl_coef needs LoRA (lora.enabled: true): the base it keeps the "
                       "model near is the model with its adapter off")
    train_rows, eval_rows = data.build(cfg.data, tokenizer, cfg.options.assistant_only_loss, log,
                                       tuple(cfg.options.kl_only_kinds))
    flatten = "flash" in str(getattr(model.config, "_attn_implementation", "") or "")
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_rows,
                         eval_dataset=eval_rows, processing_class=tokenizer,
                         data_collator=data.Collator(tokenizer.pad_token_id, flatten=flatten),
                         callbacks=callbacks, kl_coef=cfg.options.kl_coef,
                         kl_reverse=cfg.options.kl_direction == "reverse")
    metrics = common.run(trainer, cfg, resume)
    if eval_rows:
        metrics.update(trainer.evaluate())
    return metrics
