"""cai.train.config: typed sections, TrainingArguments pass-through, overrides, errors."""

from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from cai.foundation.errors import CaiError
from cai.train import sft
from cai.train.config import parse_overrides, save_resolved


@pytest.mark.parametrize("name", ["sft.yaml", "sft-qlora-7b.yaml"])
def test_shipped_configs_load_and_build_training_arguments(name):
    from cai.train.common import training_arguments

    cfg = sft.load_config(ROOT / "configs" / name, [])
    assert cfg.data.path and cfg.training["output_dir"]
    args = training_arguments(cfg)
    assert args.learning_rate == cfg.training["learning_rate"]
    assert args.remove_unused_columns is False


def test_qlora_config_asks_for_4bit_nf4():
    cfg = sft.load_config(ROOT / "configs" / "sft-qlora-7b.yaml", [])
    assert cfg.quantization.load_in_4bit and cfg.quantization.quant_type == "nf4"
    assert cfg.quantization.double_quant and cfg.lora.enabled


def write(tmp_path, text) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


BASE = "data:\n  path: d.jsonl\ntraining:\n  output_dir: out\n"


def test_overrides_every_form(tmp_path):
    path = write(tmp_path, BASE + "lora:\n  r: 4\n")
    cfg = sft.load_config(path, parse_overrides(
        ["--data.path", "other.jsonl", "--training.max_steps", "2", "--training.output_dir=o2",
         "--lora.r", "8", "--learning_rate", "1e-4", "--data.packing", "--lora.target_modules",
         "q_proj,v_proj", "--training.bf16", "false"]))
    assert cfg.data.path == "other.jsonl" and cfg.data.packing is True
    assert cfg.training["max_steps"] == 2 and isinstance(cfg.training["max_steps"], int)
    assert cfg.training["output_dir"] == "o2" and cfg.training["bf16"] is False
    assert cfg.training["learning_rate"] == 1e-4  # a bare key found in training only
    assert cfg.lora.r == 8 and cfg.lora.target_modules == ["q_proj", "v_proj"]


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    # YAML 1.1 reads `1e-4` as a string; the config must still give TrainingArguments a float
    cfg = sft.load_config(write(tmp_path, BASE + "  learning_rate: 1e-4\n"), [])
    assert cfg.training["learning_rate"] == 1e-4


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = write(tmp_path, "data:\n  path: d.jsonl\nlora:\n  alpah: 4\n")
    with pytest.raises(CaiError, match=rf"{path}:4: unknown key 'lora.alpah'.*'lora.alpha'"):
        sft.load_config(path, [])


def test_unknown_training_key_names_file_and_key(tmp_path):
    path = write(tmp_path, BASE + "  learning_rte: 0.1\n")
    with pytest.raises(CaiError, match=rf"{path}:5: unknown key 'training.learning_rte'.*"
                                       r"learning_rate"):
        sft.load_config(path, [])


def test_unknown_section_and_bad_type(tmp_path):
    path = write(tmp_path, BASE + "lorra:\n  r: 4\n")
    with pytest.raises(CaiError, match=r"unknown section 'lorra' \(did you mean 'lora'"):
        sft.load_config(path, [])
    path = write(tmp_path, BASE + "lora:\n  r: four\n")
    with pytest.raises(CaiError, match=rf"{path}:6: 'lora.r': expected an integer"):
        sft.load_config(path, [])


def test_override_errors(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(CaiError, match="ambiguous"):
        sft.load_config(path, parse_overrides(["--seed", "3"]))  # data.seed and training.seed
    with pytest.raises(CaiError, match="unknown key 'data.pth'"):
        sft.load_config(path, parse_overrides(["--data.pth", "x"]))
    with pytest.raises(CaiError, match="no such option"):
        sft.load_config(path, parse_overrides(["--nonsense", "1"]))
    with pytest.raises(CaiError, match="training.max_steps': expected a number"):
        sft.load_config(path, parse_overrides(["--training.max_steps", "many"]))


def test_missing_output_dir_and_data(tmp_path):
    with pytest.raises(CaiError, match="missing training.output_dir"):
        sft.load_config(write(tmp_path, "data:\n  path: d.jsonl\n"), [])
    with pytest.raises(CaiError, match="missing data.path"):
        sft.load_config(write(tmp_path, "training:\n  output_dir: o\n"), [])


def test_resolved_config_roundtrips(tmp_path):
    cfg = sft.load_config(write(tmp_path, BASE), parse_overrides(["--lora.r", "4"]))
    saved = save_resolved(cfg, tmp_path / "run")
    data = yaml.safe_load(saved.read_text())
    assert data["lora"]["r"] == 4 and data["sft"]["assistant_only_loss"] is True
    again = sft.load_config(saved, [])
    assert again.as_dict() == cfg.as_dict()


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "accelerate").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert str(config.distributed_type).split(".")[-1] in ("MULTI_GPU", "DEEPSPEED", "FSDP")
    assert config.num_processes >= 2
