"""A resumed job never mixes records made under other settings: every setting that changes the
records is in its manifest's identity (models by their files, `dataset:` inputs by their
content, the server and engine options), and a folder of unknown origin is refused."""

import json

from conftest import make_tiny_model, read_records, run_cai

from cai.generation import Role, engine_identity, engine_kwargs
from cai.label.config import LabelConfig
from cai.label.job import labeler_engine

QUICK = ["--rounds", 1, "--no-gate", "--max-new-tokens", 4, "--dtype", "float32", "--few-shot", 0]


def revise(model, prompts, out, *extra):
    return run_cai("revise", "--prompts", prompts, "--out", out, "--model", model, *QUICK,
                   *extra)


def test_a_model_retrained_in_the_same_folder_is_another_model(tokenizer_dir, prompts_file,
                                                                tmp_path):
    model = make_tiny_model(tokenizer_dir, tmp_path / "runs" / "sft" / "merged", seed=0)
    out = tmp_path / "out"
    assert revise(model, prompts_file, out, "--limit", 2).returncode == 0
    make_tiny_model(tokenizer_dir, model, seed=1)  # retrained: same path, new weights
    result = revise(model, prompts_file, out, "--limit", 4)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cai: error: {out}: holds a run with different feedback.fingerprint, "
        "policy.fingerprint; use another --out folder (or delete this one) to start over")
    assert len(read_records(out / "data.jsonl")) == 2


def test_a_dataset_edited_under_the_same_name_is_refused(tiny_model, tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"id": f"q{i}", "question": f"What is {i}?"} for i in range(3)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = ("--prompt-column", "question")
    assert revise(tiny_model, f"dataset:{folder}", out, *args, "--limit", 1).returncode == 0
    rows[1]["question"] = "Something else entirely?"
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = revise(tiny_model, f"dataset:{folder}", out, *args)
    assert result.returncode == 2 and "different prompts;" in result.stderr


def test_records_without_a_manifest_are_not_taken_as_done(tiny_model, prompts_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.jsonl").write_text('{"id": "p0", "response": "from somewhere else"}\n')
    result = revise(tiny_model, prompts_file, out)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cai: error: {out}: holds data.jsonl but no manifest.json, so what made them is "
        "unknown; use another --out folder to start over")
    assert (out / "data.jsonl").read_text() == '{"id": "p0", "response": "from somewhere else"}\n'


def test_the_server_and_engine_options_are_part_of_the_identity(tiny_model):
    cfg = LabelConfig(prompts="p.jsonl", out="o", policy="served-name", labeler="judge-name",
                      engine="openai", base_url="http://alice:s3cret@gpu-1:8000/v1",
                      labeler_base_url="http://gpu-2:8000/v1",
                      engine_options={"served_model": "org/model", "tokenizer": "tok-dir"})
    policy = engine_identity("policy", cfg.policy, engine_kwargs(cfg.policy))
    assert policy == {"policy.engine": "openai", "policy.fingerprint": "served-name",
                      "policy.base_url": "http://gpu-1:8000/v1",
                      "policy.served_model": "org/model", "policy.tokenizer": "tok-dir"}
    labeler = engine_identity("labeler", *labeler_engine(cfg))
    assert labeler["labeler.base_url"] == "http://gpu-2:8000/v1"
    cfg.labeler.base_url = "http://gpu-3:8000/v1"  # another server: another identity
    assert engine_identity("labeler", *labeler_engine(cfg)) != labeler
    # how fast records come is not part of what they are
    tiny = Role(model=tiny_model, engine="hf", dtype="float32")
    fast = engine_kwargs(tiny, batch_size=64)
    slow = engine_kwargs(tiny, batch_size=1)
    assert engine_identity("p", tiny, fast) == \
        engine_identity("p", tiny, slow)
    assert engine_identity("p", tiny, fast)["p.dtype"] == "float32"
