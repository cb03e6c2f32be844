"""`cai train sft`: supervised fine-tuning on conversations (SL-CAI's last step).

Bai et al. 2022 (arXiv:2212.08073, section 3.1): after the critique-revision rounds, the model
is fine-tuned on its own final revisions (`cai revise` output, `messages`). The loss is the
token-mean negative log-likelihood of the assistant tokens (`cai.train.losses.sft_loss`),
normalized by the number of target tokens in the whole optimizer step, so gradient
accumulation and data parallelism do not change it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from transformers import Trainer

from cai.config import opt
from cai.train import common, data
from cai.train import config as train_config
from cai.train.config import TrainConfig
from cai.train.losses import IGNORE_INDEX, sft_loss


@dataclass
class SFTSection:
    assistant_only_loss: bool = opt(True, "train on assistant tokens only (false: on every "
                                          "token of the conversation)")


class SFTTrainer(Trainer):
    """`transformers.Trainer` with cai's masked token-mean NLL.

    Only the positions that predict a target token go through the LM head (`logits_to_keep`
    with a boolean mask), which skips the vocabulary projection for prompts and padding.
    """

    # The loss is divided by the step's target-token count (num_items_in_batch), so the Trainer
    # must neither divide it again by the accumulation steps ...
    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # ... and must count those tokens for every step
        self.keep_logits = common.accepts_logits_to_keep(self.model)
        self.tokens_seen = 0  # non-padding tokens trained on by this process

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n_tokens = inputs.pop("n_tokens", None)
        labels = inputs.pop("labels")                                 # (B, T)
        targets = labels[:, 1:]                                       # (B, T-1) next tokens
        keep = targets != IGNORE_INDEX                                # (B, T-1)
        if self.keep_logits:
            outputs = model(**inputs, use_cache=False, logits_to_keep=F.pad(keep, (0, 1)))
            loss = sft_loss(outputs.logits, targets[keep], num_items_in_batch)  # (N, V), (N,)
        else:
            outputs = model(**inputs, use_cache=False)
            loss = sft_loss(outputs.logits[:, :-1], targets, num_items_in_batch)  # (B, T-1, V)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch counts every process's tokens, and DDP averages gradients
            loss = loss * self.accelerator.num_processes
        if model.training and n_tokens is not None:
            self.tokens_seen = self.tokens_seen + n_tokens  # a tensor: no device sync per step
        return (loss, outputs) if return_outputs else loss


def load_config(path: str | None, overrides: list[tuple[str, str]]) -> TrainConfig:
    return train_config.load(path, overrides, "sft", SFTSection)


def train(cfg: TrainConfig, resume: bool = False, callbacks=None) -> dict:
    """Run `cai train sft` from a resolved config; returns the training metrics.

    `callbacks`: extra `transformers.TrainerCallback`s (the benchmark times steps with one).
    """
    common.check_output(cfg, resume)
    defaults = {}
    if cfg.data.group_by_length and not cfg.data.packing:
        defaults["train_sampling_strategy"] = "group_by_length"
    args = common.training_arguments(cfg, **defaults)
    model, tokenizer = common.model_and_tokenizer(cfg)
    log = print if args.process_index == 0 else (lambda *_: None)
    train_rows, eval_rows = data.build(cfg.data, tokenizer, cfg.options.assistant_only_loss, log)
    flatten = "flash" in str(getattr(model.config, "_attn_implementation", "") or "")
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_rows,
                         eval_dataset=eval_rows, processing_class=tokenizer,
                         data_collator=data.Collator(tokenizer.pad_token_id, flatten=flatten),
                         callbacks=callbacks)
    metrics = common.run(trainer, cfg, resume)
    if eval_rows:
        metrics.update(trainer.evaluate())
    return metrics
