"""Cross-check against TRL (a test-only dependency): same model, same batch, same loss."""

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is a test-only dependency: pip install 'cai[dev]'")

from conftest import CONVERSATIONS, SMOL_MARKED  # noqa: E402

from cai.train.data import Collator, tokenize_all  # noqa: E402
from cai.train.sft import SFTTrainer  # noqa: E402

EXTRA = [[{"role": "user", "content": f"Question {i}: what is {i} times {i}?"},
          {"role": "assistant", "content": f"{i} times {i} is {i * i}. " * (i % 3 + 1)}]
         for i in range(1, 6)]


def test_sft_loss_equals_trl_assistant_only_loss(tiny_model, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
    from trl import SFTConfig
    from trl import SFTTrainer as TRLSFTTrainer

    convs = CONVERSATIONS + EXTRA
    # TRL needs {% generation %} markers for assistant_only_loss; cai needs none, so cai gets
    # the tokenizer's own template and TRL the same template with markers added
    trl_tok = AutoTokenizer.from_pretrained(tiny_model)
    trl_tok.chat_template = SMOL_MARKED
    trl_model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trl_args = SFTConfig(output_dir=str(tmp_path / "trl"), assistant_only_loss=True,
                         max_length=256, packing=False, padding_free=False, report_to="none",
                         use_cpu=True, per_device_train_batch_size=len(convs))
    trl_trainer = TRLSFTTrainer(model=trl_model, args=trl_args, processing_class=trl_tok,
                                train_dataset=Dataset.from_list([{"messages": c} for c in convs]))
    trl_batch = trl_trainer.data_collator([trl_trainer.train_dataset[i]
                                           for i in range(len(convs))])

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    examples, _ = tokenize_all(tok, convs, max_length=256)
    batch = Collator(tok.pad_token_id)(examples)
    batch.pop("n_tokens")
    ours = SFTTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "cai"),
                                                          report_to="none", use_cpu=True),
                      processing_class=tok)

    # the same tokens, and the same tokens trained on (TRL's labels come from its markers)
    mask = batch["attention_mask"].bool()
    assert torch.equal(batch["input_ids"][mask], trl_batch["input_ids"][mask])
    trl_labels = trl_batch["labels"].masked_fill(~trl_batch["attention_mask"].bool(), -100)
    assert torch.equal(batch["labels"], trl_labels)
    assert (batch["labels"] != -100).sum() > 50

    model.train()
    trl_model.train()
    loss = ours.compute_loss(model, dict(batch))
    trl_loss = trl_trainer.compute_loss(trl_trainer.model, dict(trl_batch))
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
