"""Cross-check of `cai train dpo` against TRL's DPOTrainer (a test-only dependency): the same
model, adapter and batch give the same loss and reward metrics for sigmoid, ipo and hinge."""

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is a test-only dependency: pip install 'cai[dev]'")

from conftest import TOPICS, refusal_pairs, write_jsonl  # noqa: E402
from conftest import dpo_config as config  # noqa: E402

from cai.train import common, dpo, pairs  # noqa: E402

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_and_metrics_equal_trl(loss_type, tiny_model, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig
    from trl import DPOTrainer as TRLDPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    records = refusal_pairs(TOPICS[:3])[::2]  # 6 pairs of different lengths
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    tok = AutoTokenizer.from_pretrained(tiny_model)

    # TRL: a fresh adapter from a peft_config; its reference is the base (adapter disabled)
    trl_args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=[loss_type],
                         max_length=None, report_to="none", use_cpu=True, bf16=False,
                         per_device_train_batch_size=len(records))
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trl_trainer = TRLDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
        args=trl_args, processing_class=tok, train_dataset=Dataset.from_list(records),
        peft_config=lora)

    cfg = config(tiny_model, data, tmp_path / "cai", dpo__loss_type=loss_type,
                 dpo__beta=0.1, lora__r=8, lora__alpha=16)
    model, _ = common.model_and_tokenizer(cfg)
    examples, _ = pairs.tokenize_pairs(tok, pairs.load_pairs(str(data)), max_length=1024)
    ours = dpo.DPOTrainer(model=model, args=common.training_arguments(cfg),
                          train_dataset=examples,
                          data_collator=pairs.PairCollator(tok.pad_token_id), dpo=cfg.options)

    # the same trained-looking (non-zero) adapter in both, so the policy differs from the base
    trl_params = dict(trl_trainer.model.named_parameters())
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data.normal_(0, 0.3)
            trl_params[name].data.copy_(p.data)
    ours.attach_reference(None, "unused", batch_size=4)

    # the same tokens: cai's prompt and completion; TRL's own tokenization differs only by the
    # template's newline after the end-of-turn token, which cai does not train on
    trl_examples, newline = [], tok("\n", add_special_tokens=False)["input_ids"]
    for ex, trl_ex in zip(examples, trl_trainer.train_dataset):
        start = next(i for i, x in enumerate(ex["chosen_labels"]) if x != -100)
        prompt = ex["chosen_ids"][:start]
        assert ex["rejected_ids"][:start] == prompt and ex["rejected_labels"][start] != -100
        assert trl_ex["prompt_ids"] == prompt
        assert trl_ex["chosen_ids"] == ex["chosen_ids"][start:] + newline
        assert trl_ex["rejected_ids"] == ex["rejected_ids"][start:] + newline
        trl_examples.append({"prompt_ids": prompt, "chosen_ids": ex["chosen_ids"][start:],
                             "rejected_ids": ex["rejected_ids"][start:]})
    trl_batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(trl_examples)
    batch = ours.data_collator(examples)
    assert torch.equal(batch["input_ids"], trl_batch["input_ids"])
    assert torch.equal(batch["labels"] != -100, trl_batch["completion_mask"].bool())

    trl_trainer.model.train()
    model.train()
    trl_loss = trl_trainer.compute_loss(trl_trainer.model, dict(trl_batch))
    loss = ours.compute_loss(model, dict(batch))
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    trl_metrics = {k: v[-1] for k, v in trl_trainer._metrics["train"].items()}
    ours.log({"loss": loss.item()})
    logged = ours.state.log_history[-1]
    for key in METRICS:
        assert logged[key] == pytest.approx(trl_metrics[key], abs=1e-5), key
    for key in ("logps/chosen", "logps/rejected"):
        assert logged[key] == pytest.approx(trl_metrics[key], rel=1e-6), key
    # real rewards, not 0 = 0 (the policy is not the reference)
    assert abs(trl_metrics["rewards/chosen"]) > 0.05 and abs(trl_metrics["rewards/rejected"]) > 0.05

    # and the gradients agree: one backward through each
    loss.backward()
    trl_loss.backward()
    grads = [(p.grad, trl_params[n].grad) for n, p in model.named_parameters()
             if p.requires_grad]
    assert grads and all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in grads)
