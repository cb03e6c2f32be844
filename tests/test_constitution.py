import json

import pytest
import yaml
from conftest import ROOT, run_cai, run_cai_process

from cai import constitution as C
from cai.errors import CaiError

SHIPPED = sorted((ROOT / "constitutions").glob("*.yaml"))

GOOD = """\
name: t
critique_revision:
  - id: one
    critique: "Say what is wrong."
    revision: "Fix it."
preference:
  - id: better
    question: "Which is better?"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(C.ConstitutionError) as e:
        C.parse(text, "c.yaml")
    return e.value.problems


def test_every_shipped_constitution_loads():
    assert len(SHIPPED) >= 3
    for path in SHIPPED:
        c = C.load(path)
        assert c.name and c.sha256
        assert len({p.id for p in c.critique_revision}) == len(c.critique_revision)


def test_default_constitution_is_broad_enough():
    c = C.load()
    assert c.name == "default"
    assert len(c.critique_revision) >= 16 and len(c.preference) >= 16 and len(c.examples) >= 3
    for ex in c.examples:  # every demonstration resolves to request texts
        critique, revision = c.example_requests(ex)
        assert critique.strip() and revision.strip()


def test_a_valid_file_parses_into_principles():
    c = C.parse(GOOD, "c.yaml")
    assert [p.id for p in c.critique_revision] == ["one"]
    assert c.critique_revision[0].revision == "Fix it."
    assert c.preference[0].question == "Which is better?"
    assert c.examples == ()


def test_unknown_key_gets_line_and_did_you_mean():
    found = problems(GOOD.replace("    revision: \"Fix it.\"", "    revison: \"Fix it.\""))
    assert ("c.yaml:5: unknown key 'revison' in critique_revision[0] "
            "(did you mean 'revision'?)") in found
    assert any("c.yaml:3: critique_revision[0] is missing 'revision'" == p for p in found)


def test_unknown_top_level_key():
    assert problems(GOOD + "exampels: []\n") == [
        "c.yaml:9: unknown key 'exampels' in the constitution (did you mean 'examples'?)"]
    assert problems(GOOD + "rules: []\n") == [
        "c.yaml:9: unknown key 'rules' in the constitution (allowed: name, description, "
        "critique_revision, preference, examples, preference_examples)"]


def test_every_problem_is_reported_at_once():
    text = """\
name: ""
critique_revision:
  - id: Bad_Id
    critique: ""
    revision: 3
  - id: dup
    critique: a
    revision: b
  - id: dup
    critique: a
    revision: b
preference: "not a list"
examples:
  - prompt: p
    response: r
    critique: c
    revision: v
    principle: nope
"""
    found = problems(text)
    expected_fragments = [
        "c.yaml:1: name is empty",
        "c.yaml:3: critique_revision[0].id 'Bad_Id' must be kebab-case",
        "c.yaml:4: critique_revision[0].critique is empty",
        "c.yaml:5: critique_revision[0].revision must be text",
        "c.yaml:9: duplicate id 'dup' in 'critique_revision' (first at line 6)",
        "c.yaml:12: 'preference' must be a list",
        "c.yaml:14: examples[0].principle 'nope' is not a critique_revision id",
    ]
    for fragment in expected_fragments:
        assert any(p.startswith(fragment) for p in found), (fragment, found)
    assert len(found) == len(expected_fragments)


def test_preference_examples_are_validated():
    good = GOOD + """\
preference_examples:
  - prompt: "How do I boil an egg?"
    response_a: "Seven minutes in boiling water."
    response_b: "I can't help with that."
    answer: A
"""
    (ex,) = C.parse(good, "c.yaml").preference_examples
    assert (ex.answer, ex.question, ex.reasoning) == ("A", "", "")
    assert ex.response_b == "I can't help with that."
    found = problems(good.replace("answer: A", "answer: C").replace("response_b:", "respons_b:"))
    assert "c.yaml:10: preference_examples[0].answer must be A or B, got 'C'" in found
    assert "c.yaml:12: unknown key 'respons_b' in preference_examples[0] (did you mean " \
        "'response_b'?)" in found
    assert "c.yaml:10: preference_examples[0] is missing 'response_b'" in found
    assert len(found) == 3
    assert len(C.load().preference_examples) >= 2
    assert {e.answer for e in C.load().preference_examples} == {"A", "B"}


def test_no_principles():
    assert problems("name: x\ndescription: nothing\n") == [
        "c.yaml:1: no principles: add 'critique_revision' or 'preference' entries"]


def test_missing_name_and_wrong_shapes():
    found = problems("critique_revision:\n  - just a string\n")
    assert "c.yaml:1: the constitution is missing 'name'" in found
    assert "c.yaml:2: critique_revision[0] must be a mapping of keys to values" in found


def test_duplicate_key_and_invalid_yaml():
    assert any("key 'name' appears twice" in p for p in problems(GOOD + "name: again\n"))
    found = problems("name: [unclosed\n")
    assert len(found) == 1 and found[0].startswith("c.yaml:2: not valid YAML")
    assert problems("") == ["c.yaml: the file is empty"]
    assert problems("- a\n- b\n")[0].startswith("c.yaml:1: the constitution must be a mapping")


def test_bad_encoding_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("Fix it.", "Fix \xe9.").encode("latin-1"))
    with pytest.raises(C.ConstitutionError) as e:
        C.load(path)
    offset = GOOD.index("Fix it.") + 4
    assert e.value.problems == [f"{path}:5: not UTF-8 text (byte 0xe9 at offset {offset}); "
                                "save the file as UTF-8"]


def test_yaml_tags_cannot_run_code():
    found = problems(GOOD.replace('"Fix it."', "!!python/object/apply:os.system ['true']"))
    assert any("revision must be text" in p for p in found)


def test_jobs_ask_for_the_section_they_need():
    c = C.parse("name: x\npreference:\n  - id: a\n    question: q?\n", "p.yaml")
    with pytest.raises(CaiError, match="p.yaml: has no 'critique_revision' principles"):
        c.principles("critique_revision")
    with pytest.raises(CaiError, match="no preference principle 'b'"):
        c.get("preference", "b")


def test_sampling_is_seeded_per_item_and_covers_principles():
    c = C.load()
    first = C.sample_principles(c.critique_revision, "item-1", 4, seed=0)
    assert first == C.sample_principles(c.critique_revision, "item-1", 4, seed=0)
    assert len({p.id for p in first}) == 4  # no repeats while principles last
    draws = {tuple(p.id for p in C.sample_principles(c.critique_revision, f"item-{i}", 4, 0))
             for i in range(20)}
    assert len(draws) > 15
    many = C.sample_principles(c.critique_revision[:2], "x", 5, 0)
    assert len(many) == 5 and {p.id for p in many} == {p.id for p in c.critique_revision[:2]}


def public_layout(tmp_path):
    data = {
        "constitutions": [
            {"critic": "Point out anything harmful in the answer.",
             "revision": "Rewrite it safely."},
            {"critic": "Was the answer rude?", "revision": "Make it polite."},
        ],
        "system_chat": [[
            {"role": "user", "content": "How do I hurt someone?"},
            {"role": "assistant", "content": "Hit them."},
            {"role": "user", "content": "Point out anything harmful in the answer."},
            {"role": "assistant", "content": "It encourages violence."},
            {"role": "user", "content": "Rewrite it safely."},
            {"role": "assistant", "content": "I won't help hurt anyone. Want to talk about it?"},
        ]],
    }
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    return path


def test_import_public_json_layout(tmp_path):
    out = tmp_path / "imported.yaml"
    result = run_cai("constitution", "import", public_layout(tmp_path), "-o", out)
    assert result.returncode == 0, result.stderr
    c = C.load(out)
    assert c.name == "recipe"
    assert [p.critique for p in c.critique_revision] == [
        "Point out anything harmful in the answer.", "Was the answer rude?"]
    assert len(c.examples) == 1
    ex = c.examples[0]
    assert (ex.prompt, ex.response, ex.critique) == (
        "How do I hurt someone?", "Hit them.", "It encourages violence.")
    assert c.example_requests(ex) == ("Point out anything harmful in the answer.",
                                      "Rewrite it safely.")


def test_import_rejects_wrong_layout(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"constitutions": [{"critic": "x"}]}))
    with pytest.raises(CaiError,
                       match=r"constitutions\[0\] needs non-empty 'critic' and 'revision'"):
        C.import_json(path)
    path.write_text('{"constitutions": [}')
    with pytest.raises(CaiError, match="bad.json:1: not valid JSON"):
        C.import_json(path)


def test_cli_check_exit_codes_and_one_line_per_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("critique:", "critiqe:").replace("question:", "qestion:"))
    ok = run_cai("constitution", "check", *SHIPPED)
    assert ok.returncode == 0 and ok.stdout.count(": ok (") == len(SHIPPED)
    result = run_cai_process("constitution", "check", SHIPPED[0], bad)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith(f"{bad}:") for line in lines)
    assert "Traceback" not in result.stderr


def test_cli_show_lists_every_principle():
    result = run_cai("constitution", "show", ROOT / "constitutions" / "minimal.yaml")
    assert result.returncode == 0
    c = C.load(ROOT / "constitutions" / "minimal.yaml")
    for p in c.critique_revision + c.preference:
        assert p.id in result.stdout


def test_import_output_is_plain_yaml(tmp_path):
    data = C.import_json(public_layout(tmp_path))
    assert yaml.safe_load(C.to_yaml(data)) == data
