"""`cai constitution diff` (cai.constitution.diff): principles added, removed, reworded, renamed
and reordered, and the pipeline stages an edit reruns, as `cai pipeline status` sees them."""

import json

import yaml
from conftest import ROOT, run_cai

from cai import constitution as C
from cai.constitution.diff import Change, diff, format_diff, mark_words

OLD = """\
name: mine
description: first draft
critique_revision:
  - id: harm
    critique: "Point out any way the answer helps someone cause harm."
    revision: "Rewrite it without that help."
  - id: rude
    critique: "Was the answer rude?"
    revision: "Make it polite."
  - id: gone
    critique: "Is it too long?"
    revision: "Shorten it."
preference:
  - id: safer
    question: "Which is safer?"
  - id: kinder
    question: "Which is kinder?"
examples:
  - prompt: "How do I pick a lock?"
    response: "Use a pick."
    critique: "It helps break in."
    revision: "I can't help with that."
"""

NEW = OLD.replace("description: first draft", "description: second draft") \
    .replace("cause harm.", "cause serious harm.") \
    .replace("id: rude", "id: impolite") \
    .replace("""  - id: gone
    critique: "Is it too long?"
    revision: "Shorten it."
""", """  - id: honest
    critique: "Does the answer claim things it cannot know?"
    revision: "Flag the uncertainty."
""").replace("""  - id: safer
    question: "Which is safer?"
  - id: kinder
    question: "Which is kinder?"
""", """  - id: kinder
    question: "Which is kinder?"
  - id: safer
    question: "Which is safer?"
""").replace('revision: "I can\'t help with that."', 'revision: "I won\'t help with that."')


def test_mark_words_by_hand():
    assert mark_words("a b c d", "a x c d e") == ("a [-b-] c d", "a {+x+} c d {+e+}")
    assert mark_words("same words", "same  words") == ("same words", "same words")


def test_every_kind_of_change():
    changes = diff(C.parse(OLD, "old.yaml"), C.parse(NEW, "new.yaml"))
    assert changes == [
        Change("constitution", "reworded", "description", {"description": "first draft"},
               {"description": "second draft"}),
        Change("critique_revision", "reworded", "harm",
               {"critique": "Point out any way the answer helps someone cause harm."},
               {"critique": "Point out any way the answer helps someone cause serious harm."}),
        Change("critique_revision", "renamed", "impolite", old_key="rude"),
        Change("critique_revision", "added", "honest", new={
            "critique": "Does the answer claim things it cannot know?",
            "revision": "Flag the uncertainty."}),
        Change("critique_revision", "removed", "gone", old={
            "critique": "Is it too long?", "revision": "Shorten it."}),
        Change("preference", "reordered", "kinder, safer"),
        Change("examples", "reworded", "How do I pick a lock?",
               {"revision": "I can't help with that."}, {"revision": "I won't help with that."}),
    ]
    text = "\n".join(format_diff(changes))
    assert "critique_revision: 1 reworded, 1 renamed, 1 added, 1 removed" in text
    assert "- Point out any way the answer helps someone cause harm." in text
    assert "+ Point out any way the answer helps someone cause {+serious+} harm." in text
    assert "> rude renamed to impolite (same text)" in text
    assert "order now: kinder, safer" in text
    assert '~ example "How do I pick a lock?"' in text
    assert diff(C.parse(OLD, "a.yaml"), C.parse(OLD, "b.yaml")) == []


def _pipeline(tmp_path, constitution_text: str):
    """A pipeline YAML reading its own constitution, every stage marked finished with its
    current key, as a finished run leaves them."""
    from cai.pipeline.stages import Pipeline

    (tmp_path / "mine.yaml").write_text(constitution_text)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"workdir": "work", "constitution": "mine.yaml"}))
    pipe = Pipeline(path)
    for name, stage in pipe.stages.items():
        folder = stage.folder(pipe.workdir)
        folder.mkdir(parents=True)
        (folder / "stage.json").write_text(json.dumps({
            "stage": name, "key": stage.key, "done": True, "inputs": stage.inputs,
            "upstream": {u: pipe.stages[u].key for u in stage.upstream}}))
    return path


def _rerun_by_status(path) -> list[str]:
    result = run_cai("pipeline", "status", path)
    assert result.returncode == 0, result.stderr
    return [line.split()[0] for line in result.stdout.splitlines() if line.split()[1] == "rerun"]


def test_cli_diff_names_the_stages_pipeline_status_would_rerun(tmp_path):
    path = _pipeline(tmp_path, OLD)
    assert _rerun_by_status(path) == []
    (tmp_path / "new.yaml").write_text(NEW)
    result = run_cai("constitution", "diff", tmp_path / "mine.yaml", tmp_path / "new.yaml",
                     "--pipeline", path)
    assert result.returncode == 0, result.stderr
    assert "7 change(s)" in result.stdout and "+ honest" in result.stdout
    said = result.stdout.split("an edit like this reruns")[1].split(".")[0]
    # now make the edit: the pipeline's own status agrees
    (tmp_path / "mine.yaml").write_text(NEW)
    expected = _rerun_by_status(path)
    assert expected == ["revise", "sft", "label", "dpo", "eval"]
    assert [s.strip() for s in " ".join(said.split()).split(",")] == expected

    # a comment is an edit too (stages are keyed by bytes); the same bytes rerun nothing
    (tmp_path / "comment.yaml").write_text("# a note\n" + NEW)
    result = run_cai("constitution", "diff", tmp_path / "mine.yaml", tmp_path / "comment.yaml",
                     "--pipeline", path)
    assert "the same principles and examples" in result.stdout
    assert "comments and layout count too" in result.stdout
    result = run_cai("constitution", "diff", tmp_path / "mine.yaml", tmp_path / "new.yaml",
                     "--pipeline", path)
    assert "reruns no stage" in " ".join(result.stdout.split())


def test_cli_diff_of_shipped_files_and_bad_input(tmp_path):
    result = run_cai("constitution", "diff", ROOT / "constitutions/minimal.yaml",
                     ROOT / "constitutions/default.yaml")
    assert result.returncode == 0
    assert "- harmful-content" in result.stdout and "+ weapons" in result.stdout
    assert "configs/pipeline.yaml" in result.stdout
    (tmp_path / "bad.yaml").write_text("name: x\n")
    result = run_cai("constitution", "diff", ROOT / "constitutions/minimal.yaml",
                     tmp_path / "bad.yaml")
    assert result.returncode == 2
    assert result.stderr == f"cai: error: {tmp_path / 'bad.yaml'}:1: no principles: add " \
                            "'critique_revision' or 'preference' entries\n"
