"""`cai export`: a trained adapter as a standalone folder, merged into its base or not."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from cai.foundation.errors import CaiError
from cai.foundation.model_store import load_causal_lm, resolve, torch_dtype
from cai.train.loading import load_for_training


def export(adapter: str | os.PathLike, out: str | os.PathLike, *, merge: bool,
           base: str | None = None, dtype: str | None = None) -> Path:
    """A trained adapter folder as a standalone folder that transformers and vLLM load.

    With `merge`, the base model is loaded unquantized (also after QLoRA training), W + (alpha/r)
    B A is folded into each adapted layer, and the result is saved as safetensors with the
    tokenizer and chat template; without it, the adapter is copied with the tokenizer.
    """
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
            model = model.to(torch_dtype(target))
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
    config = json.loads((folder / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
