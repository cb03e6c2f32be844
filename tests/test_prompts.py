import pytest

from cai.constitution import Principle, load
from cai.foundation.errors import CaiError
from cai.foundation.templates import DEFAULT_DIR, Templates

P = Principle(id="x", critique="Critique it.", revision="Revise it.", question="Which?")
VARIABLES = dict(principle=P, prompt="the prompt", response="the answer", critique="the critique",
                 conversation=[{"role": "user", "content": "hello"}], response_a="A text",
                 response_b="B text", question="Which is kinder?", reasoning="because",
                 options=["complies", "refuses"], seed="the seed", description="the description",
                 critiques=["Is it kind?"])
#: Templates whose options are other readings than the judge's.
OPTIONS = {"request_question.j2": ["decline", "answer"]}


def test_every_shipped_template_renders():
    t = Templates()
    names = sorted(p.name for p in DEFAULT_DIR.glob("*.j2"))
    assert {"critique.j2", "revision.j2", "feedback.j2", "feedback_cot.j2",
            "feedback_answer.j2", "judge_refusal.j2"} <= set(names)
    for name in names:
        text = t.render(name, **{**VARIABLES, "options": OPTIONS.get(name, VARIABLES["options"])})
        assert text and "{{" not in text and "{%" not in text


def test_critique_and_revision_carry_the_principle():
    t = Templates()
    critique = t.render("critique.j2", **VARIABLES)
    # the request quotes the conversation it critiques, then asks the principle's question
    assert "Human: the prompt" in critique and "Assistant: the answer" in critique
    assert critique.endswith("Critique it.")
    revision = t.render("revision.j2", **VARIABLES)
    assert revision.startswith("Revise it.") and "the prompt" in revision


def test_feedback_templates_end_where_the_labeler_answers():
    t = Templates()
    text = t.render("feedback.j2", **VARIABLES)
    assert "the prompt" in text and "Which is kinder?" in text
    assert "(A) Assistant: A text" in text and "(B) Assistant: B text" in text
    assert text.endswith("The answer is:")
    assert t.render("feedback_cot.j2", **VARIABLES).endswith("Let's think step by step.")
    assert t.render("feedback_answer.j2", **VARIABLES).startswith("So, which is kinder?")


def test_judge_question_shows_the_options_in_the_order_given():
    t = Templates()
    for order in (["complies", "refuses"], ["refuses", "complies"]):
        text = t.render("judge_refusal.j2", **{**VARIABLES, "options": order})
        assert "Human: the prompt" in text and "Assistant: the answer" in text
        lines = [line for line in text.splitlines() if line[:1] == "("]
        starts = {"complies": "It does what", "refuses": "It does not"}
        assert [line[4:4 + len(starts[o])] for line, o in zip(lines, order)] == \
            [starts[o] for o in order]
        assert [line[:3] for line in lines] == ["(A)", "(B)"]
        assert text.endswith("Answer with (A) or (B) only. The answer is:")


def test_missing_variable_is_an_error_not_blank():
    with pytest.raises(CaiError,
                       match="revision.j2: 'critique' is undefined|'prompt' is undefined"):
        Templates().render("revision.j2", principle=P)


def test_user_folder_overrides_and_falls_back(tmp_path):
    (tmp_path / "critique.j2").write_text("Mine: {{ principle.critique | upper }}")
    t = Templates(tmp_path)
    assert t.render("critique.j2", **VARIABLES) == "Mine: CRITIQUE IT."
    assert t.render("revision.j2", **VARIABLES).startswith("Revise it.")  # shipped fallback


def test_sandbox_blocks_python_internals(tmp_path):
    (tmp_path / "critique.j2").write_text("{{ principle.__class__.__init__.__globals__ }}")
    with pytest.raises(Exception, match="unsafe|access"):
        Templates(tmp_path).render("critique.j2", **VARIABLES)


def test_template_errors_name_the_file(tmp_path):
    (tmp_path / "critique.j2").write_text("{% if %}")
    with pytest.raises(CaiError, match="critique.j2:1: template syntax error"):
        Templates(tmp_path).render("critique.j2", **VARIABLES)
    with pytest.raises(CaiError, match="is not a folder"):
        Templates(tmp_path / "missing")


def test_default_examples_render_through_templates():
    c = load()
    t = Templates()
    for ex in c.examples:
        critique, revision = c.example_requests(ex)
        shown = Principle(id="e", critique=critique, revision=revision)
        assert t.render("critique.j2", principle=shown, prompt=ex.prompt, response=ex.response)


def test_fingerprint_covers_included_templates(tmp_path):
    (tmp_path / "critique.j2").write_text("{% include 'shared.j2' %} {{ principle.critique }}")
    (tmp_path / "shared.j2").write_text("Be fair.")
    t = Templates(tmp_path)
    first = t.fingerprint(["critique.j2", "revision.j2"])
    (tmp_path / "shared.j2").write_text("Be harsh.")  # only the included file changes
    assert Templates(tmp_path).fingerprint(["critique.j2", "revision.j2"]) != first
    (tmp_path / "critique.j2").write_text("{% include name %}")  # chosen at render time
    assert "Be harsh." in Templates(tmp_path).fingerprint(["critique.j2"])
