import json

import pytest
import yaml
from conftest import ROOT, run_cai, run_cai_process

from cai import constitution as C
from cai.foundation.errors import CaiError

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


GOOD_PREFERENCE_EXAMPLES = GOOD + """\
preference_examples:
  - prompt: "How do I boil an egg?"
    response_a: "Seven minutes in boiling water."
    response_b: "I can't help with that."
    answer: A
"""

MANY_PROBLEMS = """\
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

#: Every broken constitution of these tests, by name: the validator rejects each, and the JSON
#: Schema agrees wherever it can tell (tests/test_schemas.py).
BROKEN = {
    "unknown-field": GOOD.replace('    revision: "Fix it."', '    revison: "Fix it."'),
    "unknown-top-key-near": GOOD + "exampels: []\n",
    "unknown-top-key-far": GOOD + "rules: []\n",
    "many-problems": MANY_PROBLEMS,
    "preference-examples": GOOD_PREFERENCE_EXAMPLES.replace("answer: A", "answer: C")
    .replace("response_b:", "respons_b:"),
    "no-principles": "name: x\ndescription: nothing\n",
    "wrong-shapes": "critique_revision:\n  - just a string\n",
    "duplicate-key": GOOD + "name: again\n",
    "invalid-yaml": "name: [unclosed\n",
    "empty-file": "",
    "a-list": "- a\n- b\n",
    "python-tag": GOOD.replace('"Fix it."', "!!python/object/apply:os.system ['true']"),
    "typos-in-two-sections": GOOD.replace("critique:", "critiqe:").replace("question:",
                                                                           "qestion:"),
    "number-as-text": GOOD.replace("id: one", "id: 12"),
    "null-name": GOOD.replace("name: t", "name:"),
    "quoted-null-section": GOOD + 'examples: "null"\n',
    "blank-question": GOOD.replace('"Which is better?"', '"   "'),
    "only-a-duplicate-id": GOOD.replace("preference:", """\
  - id: one
    critique: "Again."
    revision: "Again."
preference:"""),
    "only-an-unknown-principle": GOOD + """\
examples:
  - prompt: p
    response: r
    critique: c
    revision: v
    principle: uno
""",
}


def problems(text: str) -> list[str]:
    with pytest.raises(C.ConstitutionError) as e:
        C.parse(text, "c.yaml")
    return [str(p) for p in e.value.problems]


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
    found = problems(BROKEN["unknown-field"])
    assert ("c.yaml:5: unknown key 'revison' in critique_revision[0] "
            "(did you mean 'revision'?)") in found
    assert any("c.yaml:3: critique_revision[0] is missing 'revision'" == p for p in found)


def test_unknown_top_level_key():
    assert problems(BROKEN["unknown-top-key-near"]) == [
        "c.yaml:9: unknown key 'exampels' in the constitution (did you mean 'examples'?)"]
    assert problems(BROKEN["unknown-top-key-far"]) == [
        "c.yaml:9: unknown key 'rules' in the constitution (allowed: name, description, "
        "critique_revision, preference, examples, preference_examples)"]


def test_every_problem_is_reported_at_once():
    found = problems(MANY_PROBLEMS)
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
    good = GOOD_PREFERENCE_EXAMPLES
    (ex,) = C.parse(good, "c.yaml").preference_examples
    assert (ex.answer, ex.question, ex.reasoning) == ("A", "", "")
    assert ex.response_b == "I can't help with that."
    found = problems(BROKEN["preference-examples"])
    assert "c.yaml:13: preference_examples[0].answer must be A or B, got 'C'" in found
    assert "c.yaml:12: unknown key 'respons_b' in preference_examples[0] (did you mean " \
        "'response_b'?)" in found
    assert "c.yaml:10: preference_examples[0] is missing 'response_b'" in found
    assert len(found) == 3
    assert len(C.load().preference_examples) >= 2
    assert {e.answer for e in C.load().preference_examples} == {"A", "B"}


def test_no_principles():
    assert problems(BROKEN["no-principles"]) == [
        "c.yaml:1: no principles: add 'critique_revision' or 'preference' entries"]


def test_missing_name_and_wrong_shapes():
    found = problems(BROKEN["wrong-shapes"])
    assert "c.yaml:1: the constitution is missing 'name'" in found
    assert "c.yaml:2: critique_revision[0] must be a mapping of keys to values" in found


def test_duplicate_key_and_invalid_yaml():
    assert any("key 'name' appears twice" in p for p in problems(BROKEN["duplicate-key"]))
    found = problems(BROKEN["invalid-yaml"])
    assert len(found) == 1 and found[0].startswith("c.yaml:2: not valid YAML")
    assert problems(BROKEN["empty-file"]) == ["c.yaml: the file is empty"]
    assert problems(BROKEN["a-list"])[0].startswith("c.yaml:1: the constitution must be a mapping")


def test_bad_encoding_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("Fix it.", "Fix \xe9.").encode("latin-1"))
    with pytest.raises(C.ConstitutionError) as e:
        C.load(path)
    offset = GOOD.index("Fix it.") + 4
    assert list(map(str, e.value.problems)) == [
        f"{path}:5: not UTF-8 text (byte 0xe9 at offset {offset}); save the file as UTF-8"]


def test_yaml_tags_cannot_run_code():
    found = problems(BROKEN["python-tag"])
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
    bad.write_text(BROKEN["typos-in-two-sections"])
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


def test_cli_check_github_annotations(tmp_path):
    bad = tmp_path / "a,b.yaml"  # a comma in a property value is escaped
    bad.write_text(BROKEN["unknown-field"])
    result = run_cai("constitution", "check", "--format", "github", bad, SHIPPED[0])
    assert result.returncode == 2 and result.stderr == ""
    escaped = str(bad).replace(":", "%3A").replace(",", "%2C")
    assert result.stdout.splitlines() == [
        f"::error file={escaped},line=3::critique_revision[0] is missing 'revision'",
        f"::error file={escaped},line=5::unknown key 'revison' in critique_revision[0] "
        "(did you mean 'revision'?)"]
    (tmp_path / "empty.yaml").write_text("")
    result = run_cai("constitution", "check", "--format", "github", tmp_path / "empty.yaml")
    assert result.stdout == f"::error file={tmp_path / 'empty.yaml'}::the file is empty\n"
    assert run_cai("constitution", "check", "--format", "github", *SHIPPED).stdout == ""


def test_cli_check_json_lists_every_problem(tmp_path):
    bad, missing = tmp_path / "bad.yaml", tmp_path / "missing.yaml"
    bad.write_text(MANY_PROBLEMS)
    result = run_cai("constitution", "check", "--format", "json", SHIPPED[0], bad, missing)
    assert result.returncode == 2
    found = json.loads(result.stdout)
    assert found[:3] == [
        {"file": str(bad), "line": 1, "field": "name", "message": "name is empty"},
        {"file": str(bad), "line": 3, "field": "critique_revision[0].id",
         "message": "critique_revision[0].id 'Bad_Id' must be kebab-case (lowercase letters, "
                    "digits, single hyphens)"},
        {"file": str(bad), "line": 4, "field": "critique_revision[0].critique",
         "message": "critique_revision[0].critique is empty"}]
    assert [(p["line"], p["field"]) for p in found[3:]] == [
        (5, "critique_revision[0].revision"), (9, "critique_revision[2].id"),
        (12, "preference"), (14, "examples[0].principle"), (None, None)]
    assert found[-1]["file"] == str(missing)
    assert found[-1]["message"].startswith("cannot read the constitution")
    ok = run_cai("constitution", "check", "--format", "json", *SHIPPED)
    assert (ok.returncode, json.loads(ok.stdout)) == (0, [])


def test_the_checker_does_not_import_torch():
    """The pre-commit hook (.pre-commit-hooks.yaml) runs `cai constitution check`: it stays
    quick because neither the command line nor the validator imports torch."""
    import subprocess
    import sys

    code = ("import sys; from cai.cli import main; rc = main(['constitution', 'check', "
            f"{str(SHIPPED[0])!r}]); print(rc, sorted(m for m in ('torch', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.splitlines()[-1] == "0 []"


def test_pre_commit_hook_runs_the_check():
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "cai-constitution-check" and hook["language"] == "python"
    assert hook["entry"].split() == ["cai", "constitution", "check"]
    import re

    pattern = re.compile(hook["files"])
    assert all(pattern.search(str(p.relative_to(ROOT))) for p in SHIPPED)
    assert not pattern.search("configs/sft.yaml")
    assert not pattern.search("constitutions/constitution.schema.json")
