"""PPO checkpoints: `checkpoint-N` folders a killed `cai train ppo` resumes from.

A checkpoint holds the adapter, the value head, the optimizer and scheduler states, the random
states and `ppo_state.json` (step, KL coefficient, reward shift and scale). It is written to a
temporary folder and renamed into place, so it is whole or absent. Everything is loaded with
`torch.load(weights_only=True)`: a run folder may be shared, and nothing in it runs code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from cai.foundation.errors import CaiError
from cai.train import common

VALUE_HEAD = "value_head.pt"
STATE = "ppo_state.json"


def save(trainer) -> Path:
    out = trainer.cfg.output_dir
    final = out / f"checkpoint-{trainer.step_done}"
    tmp = out / f".checkpoint-{trainer.step_done}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    if trainer.value_head is not None:
        torch.save(trainer.value_head.state_dict(), tmp / VALUE_HEAD)
    torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(trainer.scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"python": random.getstate(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               tmp / "rng_state.pt")
    (tmp / STATE).write_text(json.dumps(trainer.state(), indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # whole or absent
    limit = trainer.args.save_total_limit
    if limit:
        for old in common.checkpoints(out)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _load(path: Path):
    """A tensor file of the checkpoint; anything that would need code to unpickle is refused."""
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CaiError(f"{path}: holds more than tensors and plain values, refusing to load it "
                       f"({str(e).splitlines()[0][:120]})") from None


def load(trainer, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(trainer.model, load_file(folder / "adapter_model.safetensors"))
    if trainer.value_head is not None:
        trainer.value_head.load_state_dict(_load(folder / VALUE_HEAD))
    trainer.optimizer.load_state_dict(_load(folder / "optimizer.pt"))
    trainer.scheduler.load_state_dict(_load(folder / "scheduler.pt"))
    rng = _load(folder / "rng_state.pt")
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    trainer.load_state(json.loads((folder / STATE).read_text()))
