"""Models to train: loading (full precision or QLoRA's 4-bit base) and LoRA wrapping.

LoRA: Hu et al. 2021 (arXiv:2106.09685); QLoRA: Dettmers et al. 2023 (arXiv:2305.14314).
"""

from __future__ import annotations

import importlib.util
import os
import warnings

from cai.foundation.errors import CaiError
from cai.foundation.model_store import resolve, torch_dtype


def is_bitsandbytes_available() -> bool:
    try:
        return importlib.util.find_spec("bitsandbytes") is not None
    except ValueError:  # present in sys.modules as None: blocked
        return False


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

    # CPU arithmetic on denormal floats is many times slower: forward+backward passes of
    # SmolLM2-135M with a fresh LoRA adapter in float32 measured 6-12x slower without this
    # (values below ~1e-38 become 0)
    torch.set_flush_denormal(True)
    # No hub kernels (transformers with the `kernels` package): on a GPU they are fetched from
    # the hub when the model changes between train and eval mode, which fails offline
    kwargs = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code,
              "use_kernels": False}
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
            bnb_4bit_compute_dtype=torch_dtype(compute_dtype))
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
