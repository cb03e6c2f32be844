import json

import pytest

from cai.foundation import records
from cai.foundation.errors import CaiError
from cai.foundation.inputs import helpful_sample, load_prompts, source_id, sources_id
from cai.foundation.manifest import Manifest
from cai.foundation.shards import select_shard


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_jsonl_and_txt_prompts(tmp_path):
    jl = write(tmp_path / "p.jsonl", ['{"id": "a", "prompt": "hi", "category": "x"}',
                                      "", '{"id": 7, "prompt": "yo"}'])
    assert load_prompts(str(jl)) == [
        {"id": "a", "prompt": "hi", "category": "x"}, {"id": "7", "prompt": "yo"}]
    txt = write(tmp_path / "q.txt", ["first one", "", "  second  "])
    assert load_prompts(str(txt)) == [{"id": "q-1", "prompt": "first one"},
                                      {"id": "q-3", "prompt": "second"}]


def test_every_bad_line_is_named(tmp_path):
    path = write(tmp_path / "bad.jsonl", [
        '{"id": "a", "prompt": "ok"}',
        '{"id": "b", "prompt": ',
        '{"id": "c", "prompt": "   "}',
        '{"id": "a", "prompt": "again"}',
        '{"prompt": "no id"}',
        '["a list"]',
        '{"id": "d", "prompt": 5}',
    ])
    with pytest.raises(CaiError) as e:
        load_prompts(str(path))
    assert str(e.value).splitlines() == [
        f"{path}:2: not valid JSON (Expecting value at column 23)",
        f"{path}:3: empty prompt",
        f"{path}:4: duplicate id 'a' (first at line 1)",
        f"{path}:5: missing 'id'",
        f"{path}:6: expected a JSON object with 'id' and 'prompt'",
        f"{path}:7: 'prompt' must be text",
    ]


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(CaiError, match="prompt file not found"):
        load_prompts(str(tmp_path / "nope.jsonl"))
    with pytest.raises(CaiError, match="unknown prompt file type '.csv'"):
        load_prompts(str(write(tmp_path / "p.csv", ["a"])))
    with pytest.raises(CaiError, match="no prompts"):
        load_prompts(str(write(tmp_path / "e.jsonl", [""])))


def test_datasets_loader_on_a_local_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "train.jsonl", ['{"question": "what?"}', '{"question": "why?"}'])
    items = load_prompts(f"dataset:{folder}", column="question")
    assert items == [{"id": "ds-0", "prompt": "what?"}, {"id": "ds-1", "prompt": "why?"}]
    with pytest.raises(CaiError, match="no column 'prompt'"):
        load_prompts(f"dataset:{folder}")


def test_shards_partition_the_ids():
    items = [{"id": f"x{i}", "prompt": "p"} for i in range(100)]
    shards = [select_shard(items, f"{i}/3") for i in range(3)]
    ids = [it["id"] for s in shards for it in s]
    assert sorted(ids) == sorted(it["id"] for it in items)
    assert all(len(s) > 15 for s in shards)
    assert select_shard(items, "1/3") == shards[1]  # deterministic
    for bad in ("3/3", "a/b", "1", "-1/2"):
        with pytest.raises(CaiError, match="expected I/N"):
            select_shard(items, bad)


def test_helpful_prompt_sets_are_pooled(tmp_path):
    a = write(tmp_path / "a.jsonl", [json.dumps({"id": f"a{i}", "prompt": f"A {i}?"})
                                     for i in range(4)])
    b = write(tmp_path / "b.jsonl", [json.dumps({"id": f"b{i}", "prompt": f"B {i}?"})
                                     for i in range(4)])
    both = helpful_sample([str(a), str(b)], 2.0, 4)  # 8 of the 8 pooled prompts
    assert sorted(r["id"] for r in both) == [f"helpful:{s}{i}" for s in "ab" for i in range(4)]
    assert all(r["kind"] == "helpful" for r in both)
    some = helpful_sample([str(a), str(b)], 1.0, 3)
    assert len(some) == 3 and some == helpful_sample([str(a), str(b)], 1.0, 3)
    # one set, given as text or as a one-item list: the same draw and the same identity
    assert helpful_sample(str(a), 0.5, 4) == helpful_sample([str(a)], 0.5, 4)
    assert sources_id([str(a)]) == sources_id(str(a)) == source_id(str(a))
    assert sources_id([str(a), str(b)]) == [source_id(str(a)),
                                            source_id(str(b))]
    clash = write(tmp_path / "c.jsonl", [json.dumps({"id": "a1", "prompt": "again"})])
    with pytest.raises(CaiError, match=r"c\.jsonl: id 'a1' is also in .*a\.jsonl"):
        helpful_sample([str(a), str(clash)], 1.0, 2)


def test_torn_last_line_is_cut_on_resume(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "resp')
    assert [r["id"] for r in records.read_jsonl(path)] == ["a", "b"]
    assert path.read_bytes().endswith(b"resp")  # reading alone changes nothing
    assert records.done_ids(tmp_path) == {"a", "b"}
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'
    with records.JsonlWriter(path) as w:
        w.write([{"id": "c"}])
    assert [r["id"] for r in records.read_jsonl(path)] == ["a", "b", "c"]


def test_a_broken_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"id": "a"}\n{broken\n{"id": "c"}\n')
    with pytest.raises(CaiError, match="data.jsonl:2: not valid JSON"):
        records.read_jsonl(path, repair=True)


def test_manifest_refuses_to_mix_runs(tmp_path):
    m = Manifest(tmp_path, "revise", {"model": "a", "seed": 0}, {})
    m.add_run(written=3, generated_tokens=10)
    m2 = Manifest(tmp_path, "revise", {"model": "a", "seed": 0}, {})
    m2.add_run(written=2, generated_tokens=5)
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["totals"]["written"] == 5 and len(saved["runs"]) == 2
    assert "torch" in saved["versions"]
    with pytest.raises(CaiError, match="different model, seed"):
        Manifest(tmp_path, "revise", {"model": "b", "seed": 1}, {})
    with pytest.raises(CaiError, match="holds the output of 'cai revise'"):
        Manifest(tmp_path, "label", {}, {})


# --------------------------------------------------------------------------------------------
# Issue 17: nothing lost, nothing mixed


def test_a_folder_with_records_but_no_manifest_is_refused(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(CaiError) as e:
        Manifest(tmp_path, "revise", {"seed": 0}, {})
    assert str(e.value) == (f"{tmp_path}: holds data.jsonl but no manifest.json, so what made "
                            "them is unknown; use another --out folder to start over")
    assert (tmp_path / "data.jsonl").read_text() == '{"id": "a"}\n'  # nothing touched


def test_limit_may_grow_and_completeness_is_by_ids(tmp_path):
    m = Manifest(tmp_path, "revise", {"seed": 0, "limit": 2}, {})
    m.expect(["a", "b"])
    assert m.status({"a", "x"}) == "partial"  # two ids done, but not the two expected
    assert m.status({"a", "b", "x"}) == "complete"
    m.save(status="complete")
    Manifest(tmp_path, "revise", {"seed": 0, "limit": 3}, {})  # a larger --limit adds
    with pytest.raises(CaiError, match="different seed"):
        Manifest(tmp_path, "revise", {"seed": 1, "limit": 3}, {})


def test_url_credentials_never_reach_the_manifest(tmp_path):
    url = "http://alice:s3cret@10.0.0.1:8000/v1"
    Manifest(tmp_path, "label", {"server": url},
             {"base_url": url, "more": [{"labeler_base_url": url}]}).save()
    text = (tmp_path / "manifest.json").read_text()
    assert "s3cret" not in text and "alice" not in text
    assert text.count("http://10.0.0.1:8000/v1") == 3


def test_a_dataset_input_is_known_by_its_content(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "train.jsonl", ['{"question": "what?"}'])
    first = source_id(f"dataset:{folder}", "question")
    assert first == source_id(f"dataset:{folder}", "question")
    write(folder / "train.jsonl", ['{"question": "why?"}'])  # same name, other content
    assert source_id(f"dataset:{folder}", "question") != first


def test_atomic_write_uses_a_fresh_temporary_file_and_fsyncs(tmp_path, monkeypatch):
    import os
    import stat

    target = tmp_path / "manifest.json"
    (tmp_path / ".manifest.json.tmp").mkdir()  # what a fixed temporary name would trip over
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    records.atomic_write_text(target, "one\n")
    records.atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    assert synced == ["file", "folder", "file", "folder"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".manifest.json.tmp", "manifest.json"]
