"""`cai records merge` (cai.foundation.shards): `cai label` shards join, shards that do not belong
together (another --limit, missing ids) are refused, and a failed merge leaves nothing behind."""

import json

import pytest
from conftest import read_records, run_cai

from cai.foundation import shards as merging
from cai.foundation.errors import CaiError

FAST = ["--max-new-tokens", 4, "--few-shot", 0, "--dtype", "float32", "--labeler-dtype",
        "float32"]


def label_shard(tiny_model, prompts_file, out, shard, *extra):
    result = run_cai("label", "--prompts", prompts_file, "--out", out, "--policy", tiny_model,
                     "--labeler", tiny_model, "--shard", shard, *FAST, *extra)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def shards(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    prompts = folder / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"How do I do {i}?"})
                               + "\n" for i in range(6)))
    return prompts, [label_shard(tiny_model, prompts, folder / f"s{i}", f"{i}/2")
                     for i in range(2)]


def test_label_shards_merge(shards, tmp_path):
    _, (s0, s1) = shards
    manifest = json.loads((s0 / "manifest.json").read_text())
    assert manifest["total"] == len(read_records(s0 / "data.jsonl")) + \
        len(read_records(s0 / "skipped.jsonl") if (s0 / "skipped.jsonl").exists() else [])
    merged = tmp_path / "merged"
    result = run_cai("records", "merge", s0, s1, "-o", merged)
    assert result.returncode == 0, result.stderr
    ids = {r["id"] for r in read_records(merged / "data.jsonl")}
    skipped = merged / "skipped.jsonl"
    ids |= {r["id"] for r in read_records(skipped)} if skipped.exists() else set()
    assert ids == {f"p{i}:0-1" for i in range(6)}
    assert json.loads((merged / "manifest.json").read_text())["total"] == 6


def test_shards_of_different_limits_are_refused(shards, tiny_model, tmp_path):
    prompts, (s0, _) = shards
    other = label_shard(tiny_model, prompts, tmp_path / "s1", "1/2", "--limit", 1)
    result = run_cai("records", "merge", s0, other, "-o", tmp_path / "m")
    assert result.returncode == 2
    assert result.stderr.strip() == f"cai: error: {other}: differs from {s0} in limit"


def test_a_shard_missing_its_ids_is_refused(shards, tmp_path):
    import shutil

    _, (s0, s1) = shards
    broken = tmp_path / "s1"
    shutil.copytree(s1, broken)
    rows = read_records(broken / "data.jsonl")
    rows[0]["id"] = "p99:0-1"  # as many ids as expected, but not the expected ones
    (broken / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    total = json.loads((broken / "manifest.json").read_text())["total"]
    result = run_cai("records", "merge", s0, broken, "-o", tmp_path / "m")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"cai: error: {broken}: holds {total} ids, not the {total} "
                                     "ids its manifest expects; rerun its command first")


def test_a_failed_merge_leaves_nothing(shards, tmp_path, monkeypatch):
    _, folders = shards
    out = tmp_path / "merged"

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(merging, "atomic_write_text", disk_full)  # fault: the manifest write
    with pytest.raises(OSError):
        merging.merge(folders, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    merging.merge(folders, out)
    with pytest.raises(CaiError, match="already exists and is not empty"):
        merging.merge(folders, out)
