"""DPO and the reward model on the real embedded SmolLM2 (slow: minutes on a CPU)."""

import json

import pytest
from conftest import ROOT, TOPICS, refusal_pairs, run_cai, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real")
    return (write_jsonl(folder / "train.jsonl", refusal_pairs(TOPICS[:8])[::2]),  # 16 pairs
            write_jsonl(folder / "held_out.jsonl", refusal_pairs(TOPICS[16:20], seed=1)))


COMMON = ["--data.max_length", 256, "--training.max_steps", 8,
          "--training.per_device_train_batch_size", 4, "--training.gradient_accumulation_steps",
          1, "--training.warmup_steps", 0, "--training.eval_strategy", "no",
          "--training.save_strategy", "no", "--training.report_to", "none",
          "--training.disable_tqdm", "true"]


def test_dpo_on_the_real_model_prefers_refusals_on_held_out_prompts(data, tmp_path):
    out = tmp_path / "dpo"
    r = run_cai("train", "dpo", ROOT / "configs" / "dpo.yaml", "--data.path", data[0],
                "--data.eval_path", data[1], "--training.output_dir", out,
                "--training.learning_rate", 2e-4, *COMMON)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((out / "all_results.json").read_text())
    assert metrics["eval_rewards/accuracies"] > 0.9
    assert metrics["eval_rewards/margins"] > 0


def test_rm_on_the_real_model_prefers_refusals_on_held_out_pairs(data, tmp_path):
    out = tmp_path / "rm"
    r = run_cai("train", "rm", ROOT / "configs" / "rm.yaml", "--data.path", data[0],
                "--data.eval_path", data[1], "--training.output_dir", out,
                "--training.learning_rate", 5e-4, *COMMON)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "all_results.json").read_text())["eval_accuracy"] > 0.9
