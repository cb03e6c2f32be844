"""Training resume rules (`cai.train.resume`): same settings or a one-line refusal, the newest
whole checkpoint, finished runs kept unless `--overwrite`, PPO's torn metrics line."""

import json
import shutil

import pytest
from conftest import ROOT, run_cai, write_jsonl

from cai.train import resume

ROWS = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                      {"role": "assistant", "content": f"Answer number {i}."}]}
        for i in range(16)]


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    """A finished 4-step sft run with checkpoints at steps 2 and 4, and its command line."""
    folder = tmp_path_factory.mktemp("resume")
    data = write_jsonl(folder / "a.jsonl", ROWS)
    other = write_jsonl(folder / "b.jsonl", ROWS[::-1])
    out = folder / "run"
    args = ["train", "sft", ROOT / "configs" / "sft.yaml", "--model.name", tiny_model,
            "--data.path", data, "--data.eval_fraction", 0, "--data.max_length", 64,
            "--lora.r", 4, "--lora.alpha", 8, "--training.max_steps", 4,
            "--training.save_steps", 2, "--training.save_total_limit", 3,
            "--training.per_device_train_batch_size", 4,
            "--training.gradient_accumulation_steps", 1, "--training.eval_strategy", "no",
            "--training.report_to", "none", "--training.output_dir", out]
    r = run_cai(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, args, other


def copy_run(finished, tmp_path):
    out, args, other = finished
    run = tmp_path / "run"
    shutil.copytree(out, run)
    return run, [*args[:-1], run], other


def test_resume_with_changed_settings_is_refused_by_name(finished, tmp_path):
    run, args, other = copy_run(finished, tmp_path)
    saved = (run / "cai_config.yaml").read_text()
    (run / "train_results.json").unlink()  # an unfinished run
    r = run_cai(*args, "--resume", "--data.path", other)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "data.path differ from the run" in r.stderr
    r = run_cai(*args, "--resume", "--lora.r", 8)  # a shape change: was a traceback
    assert r.returncode == 2 and "Traceback" not in r.stderr and "lora.r" in r.stderr
    assert (run / "cai_config.yaml").read_text() == saved  # nothing overwritten
    # more steps (and another logging cadence) may change: it continues from checkpoint-4
    r = run_cai(*args, "--resume", "--training.max_steps", 6, "--training.logging_steps", 1)
    assert r.returncode == 0, r.stderr[-2000:]
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_resume_skips_a_checkpoint_whose_save_was_killed(finished, tmp_path):
    run, args, _ = copy_run(finished, tmp_path)
    (run / "train_results.json").unlink()
    (run / "checkpoint-4" / "trainer_state.json").unlink()  # killed while saving step 4
    assert [p.name for p in resume.checkpoints(run)] == ["checkpoint-2"]
    r = run_cai(*args, "--resume")  # before: loaded the torn checkpoint-4 and failed
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 4
    assert resume.is_complete(run / "checkpoint-4")  # steps 3-4 retrained and saved again


def test_a_finished_run_is_kept_unless_overwrite(finished, tmp_path):
    run, args, _ = copy_run(finished, tmp_path)
    before = (run / "adapter_model.safetensors").read_bytes()
    for name in list(resume.checkpoints(run)):
        shutil.rmtree(name)  # finished and without checkpoints: the old check let it through
    r = run_cai(*args)
    assert r.returncode == 2 and "holds a finished run" in r.stderr and "--overwrite" in r.stderr
    assert (run / "adapter_model.safetensors").read_bytes() == before
    r = run_cai(*args, "--overwrite", "--resume")
    assert r.returncode == 2 and "choose one" in r.stderr
    r = run_cai(*args, "--overwrite", "--training.max_steps", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 2


def test_changed_keys_ignore_cadence_and_name_the_rest():
    saved = {"data": {"path": "a"}, "lora": {"r": 4},
             "training": {"max_steps": 4, "logging_steps": 5, "learning_rate": 1e-4}}
    current = {"data": {"path": "a"}, "lora": {"r": 8},
               "training": {"max_steps": 9, "logging_steps": 1, "learning_rate": 2e-4}}
    assert resume.changed_keys(saved, current) == ["lora.r", "training.learning_rate"]
    assert resume.changed_keys(saved, saved) == []


def test_a_run_killed_after_its_last_checkpoint_takes_no_extra_step(finished, tmp_path):
    """Killed after saving checkpoint-4 of 4 steps, before its final save: the rerun with
    --resume finishes from that checkpoint. (The Trainer, resumed at global_step == max_steps
    in the middle of an epoch, trained a fifth step.)"""
    run, args, _ = copy_run(finished, tmp_path)
    for name in ("train_results.json", "all_results.json", "trainer_state.json",
                 "adapter_model.safetensors"):
        (run / name).unlink()
    r = run_cai(*args, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 4
    assert (run / "adapter_model.safetensors").read_bytes() == \
        (run / "checkpoint-4" / "adapter_model.safetensors").read_bytes()
    assert (run / "train_results.json").is_file()
