"""Bad input: one line on stderr, exit 2, no traceback, and no record written.

Each case was a traceback or a silently wrong run before (issue 17, item 11); docs/reliability.md
lists them with what the user sees now.
"""

import json
import shutil

import pytest
from conftest import ROOT, run_cai, write_jsonl


def one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cai: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def revise(tiny_model, prompts, out, *extra):
    return run_cai("revise", "--model", tiny_model, "--prompts", prompts, "--out", out,
                   "--max-new-tokens", 4, "--rounds", 1, "--no-gate", *extra)


@pytest.mark.parametrize("yaml_line,fragments", [
    ("rounds: .inf", ["'rounds'", "expected an integer", "finite"]),
    ("temperature: .nan", ["'temperature'", "finite"]),
    ("limit: -1", ["'limit'", "at least 1, got -1"]),
    ("out: null", ["'out'", "expected text, got null"]),
    ("few_shot: -2", ["'few_shot'", "at least 0"]),
])
def test_job_config_values_are_checked_at_load(tmp_path, prompts_file, yaml_line, fragments):
    config = tmp_path / "revise.yaml"
    config.write_text(f"prompts: {prompts_file}\nout: {tmp_path / 'out'}\n{yaml_line}\n")
    r = run_cai("revise", "--config", config)
    one_line_error(r, str(config), *fragments)
    assert not (tmp_path / "out").exists() and not (ROOT / "None").exists()


def test_training_override_that_is_not_yaml(tmp_path):
    r = run_cai("train", "sft", ROOT / "configs" / "sft.yaml", "--data.path", "x.jsonl",
                "--training.output_dir", tmp_path / "o", "--training.report_to", "[x")
    one_line_error(r, "'training.report_to'", "not a valid YAML list or mapping")
    r = run_cai("train", "sft", ROOT / "configs" / "sft.yaml", "--data.path", "x.jsonl",
                "--training.output_dir", tmp_path / "o", "--training.learning_rate", "inf")
    one_line_error(r, "'training.learning_rate'", "finite")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("body,fragment", [
    ("{{ ''.__class__.__mro__ }}", "SecurityError"),
    ("{{ 1 / 0 }}", "rendering failed: ZeroDivisionError"),
])
def test_a_template_that_raises_names_the_template(tiny_model, prompts_file, tmp_path, body,
                                                   fragment):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "critique.j2").write_text(body)
    out = tmp_path / "out"
    r = revise(tiny_model, prompts_file, out, "--prompts-dir", templates, "--limit", 2)
    one_line_error(r, str(templates / "critique.j2"), fragment)
    data = out / "data.jsonl"
    assert not data.exists() or data.read_text() == ""


def test_unknown_engine_option_names_it(tiny_model, prompts_file, tmp_path):
    config = tmp_path / "revise.yaml"
    config.write_text(f"prompts: {prompts_file}\nout: {tmp_path / 'out'}\nmodel: {tiny_model}\n"
                      "engine_options: {flash: true}\n")
    r = run_cai("revise", "--config", config)
    one_line_error(r, "hf engine has no option 'flash'", "batch_size")


def test_an_output_path_that_cannot_be_a_folder(tiny_model, prompts_file, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    r = revise(tiny_model, prompts_file, blocker / "out")
    one_line_error(r, str(blocker))
    assert blocker.read_text() == "not a folder"


def test_prompt_records_are_checked_before_any_model_runs(tiny_model, tmp_path):
    no_id = write_jsonl(tmp_path / "no_id.jsonl", [{"prompt": "hello"}])
    r = revise(tiny_model, no_id, tmp_path / "a")
    one_line_error(r, f"{no_id}:1", "id")
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text(json.dumps({"id": "s", "prompt": "fine"}) + "\n"
                         + '{"id": "t", "prompt": "bad \\ud800 text"}\n')
    r = revise(tiny_model, surrogate, tmp_path / "b")
    one_line_error(r, f"{surrogate}:2", "not valid Unicode", "\\ud800")
    assert not (tmp_path / "b" / "data.jsonl").exists()


def test_a_corrupt_manifest_is_one_line_and_kept(tiny_model, prompts_file, tmp_path):
    out = tmp_path / "out"
    r = revise(tiny_model, prompts_file, out, "--limit", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    (out / "manifest.json").write_text('{"job": "revise", "ident')
    before = (out / "data.jsonl").read_text()
    r = revise(tiny_model, prompts_file, out, "--limit", 3)
    one_line_error(r, str(out / "manifest.json"))
    assert (out / "data.jsonl").read_text() == before
    assert (out / "manifest.json").read_text() == '{"job": "revise", "ident'
    shutil.rmtree(out)


def test_constitution_check_reports_every_file_and_ids_are_whole(tmp_path):
    """An id "harm-a\\n" (YAML's `|` block keeps the newline) is not kebab-case, though `$`
    matches before a final newline; an unreadable first file does not stop the others."""
    good = (ROOT / "constitutions" / "minimal.yaml").read_text()
    first_id = next(line for line in good.splitlines() if line.strip().startswith("- id:"))
    name = first_id.split(":", 1)[1].strip()
    broken = tmp_path / "newline.yaml"
    broken.write_text(good.replace(first_id, first_id.replace(f"id: {name}", "id: |\n"
                                                               f"      {name}"), 1))
    r = run_cai("constitution", "check", tmp_path / "missing.yaml", broken,
                ROOT / "constitutions" / "minimal.yaml")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "missing.yaml: cannot read" in r.stderr
    assert f".id '{name}\n' must be kebab-case" in r.stderr
    assert "minimal.yaml: ok" in r.stdout
