"""One process per output folder (cai.foundation.lock): a second job stops with one line naming
the folder and the holder's pid, and a killed holder's lock blocks nobody. Every holder here is a
real process."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cai, wait_for_lines

from cai.foundation import lock
from cai.foundation.errors import CaiError

HOLD = "import sys, time; from cai.foundation import lock; f = lock.acquire(sys.argv[1]); " \
       "print('held', flush=True); time.sleep(600)"


@pytest.fixture
def holder():
    """`holder(folder)`: a separate process that locks `folder` and sleeps until killed."""
    procs = []

    def start(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_held_folder_names_the_holder_and_a_dead_holder_blocks_nobody(tmp_path, holder):
    folder = tmp_path / "out"
    proc = holder(folder)
    with pytest.raises(CaiError) as e:
        lock.acquire(folder)
    assert str(e.value) == (f"{folder}: in use by another cai process (pid {proc.pid}); wait "
                            "for it to finish, or use another folder")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (folder / lock.LOCK_FILE).read_text().strip() == str(proc.pid)  # stale pid left
    with lock.hold(folder):
        assert (folder / lock.LOCK_FILE).read_text().strip() != str(proc.pid)


def test_keep_is_reentrant_and_follows_a_moved_folder(tmp_path):
    folder = tmp_path / "model"
    lock.keep(folder)
    lock.keep(folder)  # the same process again: fine
    with pytest.raises(CaiError, match="in use"):
        lock.acquire(folder)
    folder.rename(tmp_path / "archived")  # as the pipeline archives a stage
    lock.keep(folder)  # a new folder at the same path is locked anew
    with pytest.raises(CaiError, match="in use"):
        lock.acquire(folder)


def test_a_second_revise_on_the_same_out_exits_2(tiny_model, tmp_path, holder):
    """The real race: a running `cai revise` holds its --out; a second one stops at once and
    writes nothing; once the first is killed, a rerun resumes."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"k{i}", "prompt": f"Prompt {i}?"}) + "\n"
                               for i in range(40)))
    out = tmp_path / "out"
    args = ["revise", "--prompts", prompts, "--out", out, "--model", tiny_model,
            "--chunk-size", 1, "--max-new-tokens", 4, "--rounds", 1, "--few-shot", 0,
            "--no-gate", "--dtype", "float32"]
    first = subprocess.Popen([sys.executable, "-m", "cai.cli", *map(str, args)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_lines(out / "data.jsonl", 1, proc=first)
        assert first.poll() is None, "the first job ended too soon"
        before = (out / "data.jsonl").read_bytes()
        second = run_cai(*args)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"cai: error: {out}: in use by another cai process (pid {first.pid}); wait for it "
            "to finish, or use another folder"]
        assert (out / "data.jsonl").read_bytes().startswith(before)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    again = run_cai(*args)
    assert again.returncode == 0, again.stderr
    ids = [json.loads(line)["id"] for line in (out / "data.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(f"k{i}" for i in range(40))


@pytest.mark.parametrize("command", ["label", "eval", "pipeline", "train"])
def test_every_job_refuses_a_held_folder(command, tiny_model, prompts_file, tmp_path, holder):
    out = tmp_path / "out"
    if command == "label":
        args = ["label", "--prompts", prompts_file, "--out", out, "--policy", tiny_model,
                "--labeler", tiny_model]
    elif command == "eval":
        args = ["eval", "--model", tiny_model, "--judge", tiny_model, "--out", out]
    elif command == "pipeline":
        spec = tmp_path / "pipeline.yaml"
        spec.write_text(f"workdir: out\nmodel: {tiny_model}\n")
        args = ["pipeline", "run", spec]
    else:
        args = ["train", "sft", ROOT / "configs" / "sft.yaml", "--model.name", tiny_model,
                "--data.path", prompts_file, "--training.output_dir", out]
    proc = holder(out)
    start = time.time()
    result = run_cai(*args)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"cai: error: {out}: in use by another cai process (pid "
                                     f"{proc.pid}); wait for it to finish, or use another folder")
    assert time.time() - start < 60  # refused up front, not after the work
    assert sorted(p.name for p in out.iterdir()) == [lock.LOCK_FILE]
