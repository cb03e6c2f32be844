"""SFT of the real embedded SmolLM2 on its own revisions lowers held-out loss (slow: minutes)."""

import json

import pytest
from conftest import ROOT, read_records, run_cai

pytestmark = pytest.mark.slow


def test_sft_on_revisions_lowers_held_out_loss(tmp_path):
    revise = tmp_path / "revise"
    r = run_cai("revise", "--prompts", ROOT / "data" / "red_team.jsonl", "--limit", 12,
                "--rounds", 1, "--max-new-tokens", 48, "--no-gate", "--out", revise)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_records(revise / "data.jsonl")
    train, held_out = tmp_path / "train.jsonl", tmp_path / "held_out.jsonl"
    train.write_text("".join(json.dumps(x) + "\n" for x in rows[:9]))
    held_out.write_text("".join(json.dumps(x) + "\n" for x in rows[9:]))

    out = tmp_path / "sft"
    r = run_cai("train", "sft", ROOT / "configs" / "sft.yaml", "--data.path", train,
                "--data.eval_path", held_out, "--data.max_length", 256,
                "--training.output_dir", out, "--training.max_steps", 24,
                "--training.per_device_train_batch_size", 2,
                "--training.gradient_accumulation_steps", 1, "--training.learning_rate", 5e-4,
                "--training.warmup_steps", 2, "--training.eval_strategy", "steps",
                "--training.eval_steps", 24, "--training.eval_on_start", "true",
                "--training.save_strategy", "no", "--training.disable_tqdm", "true")
    assert r.returncode == 0, r.stderr[-2000:]
    evals = [h["eval_loss"] for h in
             json.loads((out / "trainer_state.json").read_text())["log_history"]
             if "eval_loss" in h]
    assert len(evals) >= 2
    assert evals[-1] < evals[0] - 0.05, evals  # held-out revisions got likelier
