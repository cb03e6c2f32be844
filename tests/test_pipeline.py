"""`cai pipeline`: the whole method end to end on a tiny model, reuse by content hash, resume."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_tiny_model, read_records, run_cai

STAGES = ["revise", "sft", "label", "dpo", "eval"]


def write_pipeline(folder: Path, model: Path, prompts: Path) -> Path:
    """A pipeline YAML on the tiny model, with its own copies of the files a user would edit."""
    shutil.copy(ROOT / "constitutions" / "minimal.yaml", folder / "constitution.yaml")
    for name in ("sft", "dpo"):
        shutil.copy(ROOT / "configs" / f"{name}.yaml", folder / f"{name}.yaml")
    small = {"training.max_steps": 2, "training.per_device_train_batch_size": 2,
             "training.gradient_accumulation_steps": 1, "training.save_steps": 1,
             "training.logging_steps": 1, "training.report_to": "none",
             "data.eval_fraction": 0.0, "data.max_length": 128}
    spec = {
        "workdir": "work", "model": str(model), "constitution": "constitution.yaml",
        "revise": {"prompts": str(prompts), "limit": 3, "rounds": 1, "max_new_tokens": 6,
                   "few_shot": 0, "dtype": "float32"},
        "sft": {"config": "sft.yaml", "set": {**small, "data.packing": False}},
        "label": {"prompts": str(prompts), "limit": 3, "max_new_tokens": 6, "few_shot": 0,
                  "dtype": "float32"},
        "dpo": {"config": "dpo.yaml", "set": {**small, "training.eval_strategy": "no"}},
        "eval": {"judge": str(model), "limit": 2, "max_new_tokens": 6, "dtype": "float32"},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def status(path: Path) -> dict[str, str]:
    result = run_cai("pipeline", "status", path)
    assert result.returncode == 0, result.stderr
    return {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}


def stamps(work: Path) -> dict[str, float]:
    return {s: (work / s / "stage.json").stat().st_mtime_ns for s in STAGES}


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    """One complete pipeline run (shared by the tests that follow it)."""
    folder = tmp_path_factory.mktemp("pipeline")
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"How do I do thing {i}?"})
                               + "\n" for i in range(4)))
    path = write_pipeline(folder, tiny_model, prompts)
    assert status(path) == {s: "new" for s in STAGES}
    result = run_cai("pipeline", "run", path)
    assert result.returncode == 0, result.stderr
    return path, result


def test_runs_every_stage_and_writes_the_report(finished):
    path, result = finished
    work = path.parent / "work"
    assert "report" in result.stdout and str(work / "eval" / "report.html") in result.stdout
    for stage in STAGES:
        state = json.loads((work / stage / "stage.json").read_text())
        assert state["done"] and len(state["key"]) == 16
    assert len(read_records(work / "revise" / "data.jsonl")) == 3
    assert len(read_records(work / "label" / "data.jsonl")) >= 1
    for stage in ("sft", "dpo"):
        assert (work / stage / "model" / "adapter_config.json").is_file()
        assert (work / stage / "merged" / "model.safetensors").is_file()
    # the label stage sampled with the SFT model, DPO started from it
    manifest = json.loads((work / "label" / "manifest.json").read_text())
    assert str(work / "sft" / "merged") in json.dumps(manifest)
    dpo_cfg = yaml.safe_load((work / "dpo" / "model" / "cai_config.yaml").read_text())
    assert dpo_cfg["model"]["name"] == str(work / "sft" / "merged")
    assert (work / "eval" / "report.html").is_file()
    assert (work / "eval" / "metrics.json").is_file()


def test_second_run_reruns_nothing(finished):
    path, _ = finished
    work = path.parent / "work"
    before = stamps(work)
    assert status(path) == {s: "current" for s in STAGES}
    result = run_cai("pipeline", "run", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("current, reusing") == len(STAGES)
    assert stamps(work) == before


def test_editing_dpo_config_reruns_from_dpo(finished):
    path, _ = finished
    work = path.parent / "work"
    before = stamps(work)
    old_key = json.loads((work / "dpo" / "stage.json").read_text())["key"]
    dpo_cfg = path.parent / "dpo.yaml"
    dpo_cfg.write_text(dpo_cfg.read_text().replace("beta: 0.1", "beta: 0.2"))
    assert status(path) == {"revise": "current", "sft": "current", "label": "current",
                            "dpo": "rerun", "eval": "rerun"}
    result = run_cai("pipeline", "run", path)
    assert result.returncode == 0, result.stderr
    after = stamps(work)
    assert all(after[s] == before[s] for s in ("revise", "sft", "label"))
    assert after["dpo"] != before["dpo"] and after["eval"] != before["eval"]
    resolved = yaml.safe_load((work / "dpo" / "model" / "cai_config.yaml").read_text())
    assert resolved["dpo"]["beta"] == 0.2
    assert (work / "previous" / f"dpo-{old_key}" / "merged").is_dir()  # kept, not deleted
    assert status(path) == {s: "current" for s in STAGES}


def test_editing_the_constitution_reruns_from_revise(finished):
    path, _ = finished
    constitution = path.parent / "constitution.yaml"
    text = constitution.read_text()
    constitution.write_text(text + "\n# an edit\n")
    try:
        assert status(path) == {s: "rerun" for s in STAGES}
        out = run_cai("pipeline", "status", path).stdout
        assert "changed: constitution" in out and "sft (upstream)" in out
    finally:
        constitution.write_text(text)
    assert status(path) == {s: "current" for s in STAGES}


def test_eval_models_picks_what_the_evaluation_compares(finished):
    """`eval.models: [base, final]` evaluates two of the three models (the eval stage reruns,
    nothing before it); a bad list is one line at load time, before any stage runs."""
    path, _ = finished
    work = path.parent / "work"
    text = path.read_text()
    spec = yaml.safe_load(text)
    try:
        spec["eval"]["models"] = ["base", "final"]
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        assert status(path) == {**{s: "current" for s in STAGES}, "eval": "rerun"}
        result = run_cai("pipeline", "run", path)
        assert result.returncode == 0, result.stderr
        metrics = json.loads((work / "eval" / "metrics.json").read_text())
        assert [m["label"] for m in metrics["models"]] == ["base", "dpo"]
        for bad in (["base"], ["base", "rm"], "base,base"):
            spec["eval"]["models"] = bad
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            result = run_cai("pipeline", "status", path)
            assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
            assert "'eval.models' must list two or three of base, sft, final" in result.stderr
    finally:
        path.write_text(text)


def test_bad_pipeline_files_fail_with_one_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("workdir: w\nrevize:\n  limit: 2\n")
    result = run_cai("pipeline", "status", path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"cai: error: {path}:2: unknown key 'revize' (did you mean 'revise'?)"]
    path.write_text("preference: ppo2\n")
    result = run_cai("pipeline", "status", path)
    assert result.returncode == 2
    assert "preference must be one of dpo, ppo, rs, grpo" in result.stderr
    path.write_text("sft:\n  config: configs/sft.yaml\n  sett: {}\n")
    result = run_cai("pipeline", "status", path)
    assert result.returncode == 2 and f"{path}:3: unknown key 'sft.sett'" in result.stderr
    assert run_cai("pipeline", "status", tmp_path / "none.yaml").returncode == 2


def test_principle_ids_are_checked_before_any_stage_runs(tmp_path):
    """A misspelt id in label: fails at once, naming its line, not after revise and SFT."""
    from cai.pipeline.stages import Pipeline

    Pipeline()  # the shipped pipeline names only principles its constitutions have
    path = tmp_path / "p.yaml"
    for text, line, message in (
            ("revise:\n  principles: [harmful-help, weapon]\n", 2,
             "'revise.principles': constitutions/default.yaml: no critique_revision principle "
             "'weapon' (did you mean 'weapons'?)"),
            ("revise:\n  limit: 2\nlabel:\n  principle_ids: less-harmful,less-violnt\n", 4,
             "'label.principle_ids': constitutions/default.yaml: no preference principle "
             "'less-violnt' (did you mean 'less-violent'?)"),
            ("eval:\n  harmless_principles: [less-harmful]\n", 2,
             "'eval.harmless_principles': constitutions/judge.yaml: no preference principle "
             "'less-harmful'")):
        path.write_text(text)
        result = run_cai("pipeline", "status", path)
        assert result.returncode == 2
        [err] = result.stderr.strip().splitlines()
        assert err.startswith(f"cai: error: {path}:{line}: ") and message in err.replace(
            str(ROOT) + "/", ""), err


def test_killed_pipeline_resumes(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about {i}."})
                               + "\n" for i in range(4)))
    path = write_pipeline(tmp_path, tiny_model, prompts)
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "cai.cli", "pipeline", "run", str(path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and not (work / "sft" / "stage.json").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not json.loads((work / "sft" / "stage.json").read_text())["done"]
    rows = status(path)
    assert rows["revise"] == "current" and rows["sft"] == "resume"
    result = run_cai("pipeline", "run", path)
    assert result.returncode == 0, result.stderr
    assert "revise: current" in result.stdout and "sft: resuming" in result.stdout
    assert status(path) == {s: "current" for s in STAGES}
    ids = [r["id"] for r in read_records(work / "label" / "data.jsonl")]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------------------------
# Issue 17: outputs stay next to the YAML, keys see every input, nothing archived is lost


def mark_current(path: Path):
    """Every stage recorded as finished with its present key (nothing runs)."""
    from cai.pipeline.stages import Pipeline

    pipe = Pipeline(path)
    for name in pipe.stages:
        pipe._begin(name)
        pipe._write_state(name, done=True)
    return pipe


def test_outputs_resolve_next_to_the_yaml_only(tmp_path):
    from cai.pipeline.stages import Pipeline

    path = tmp_path / "p.yaml"
    path.write_text("model: smollm2-135m-instruct\n")  # no workdir
    pipe = Pipeline(path)
    assert pipe.workdir == tmp_path / "runs" / "pipeline"  # not the repository's runs/
    assert pipe._path("constitutions/default.yaml") == ROOT / "constitutions" / "default.yaml"
    path.write_text("workdir: data\n")  # a name the repository has too
    assert Pipeline(path).workdir == tmp_path / "data"


def test_the_default_yaml_is_the_working_directorys_then_the_shipped_one(tmp_path, monkeypatch):
    """With no file named, a checkout's own configs/pipeline.yaml wins over the installed cai's
    (one environment shared by two checkouts ran the other checkout's pipeline)."""
    from cai.pipeline.spec import DEFAULT_PIPELINE
    from cai.pipeline.stages import Pipeline

    monkeypatch.chdir(tmp_path)
    assert Pipeline().path == DEFAULT_PIPELINE
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "pipeline.yaml").write_text("model: smollm2-135m-instruct\n")
    pipe = Pipeline()
    assert pipe.path == (tmp_path / "configs" / "pipeline.yaml").resolve()
    assert pipe.workdir == (tmp_path / "configs" / "runs" / "pipeline").resolve()


def test_keys_see_files_named_in_training_configs_models_and_versions(tokenizer_dir, tmp_path,
                                                                      monkeypatch):
    from cai.pipeline.stages import Pipeline

    model = make_tiny_model(tokenizer_dir, tmp_path / "base")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Hi?"}) + "\n")
    path = write_pipeline(tmp_path, model, prompts)
    spec = yaml.safe_load(path.read_text())
    held_out, reward, principles = (tmp_path / "held_out.jsonl", tmp_path / "reward.py",
                                    tmp_path / "ppo_constitution.yaml")
    held_out.write_text(json.dumps({"messages": []}) + "\n")
    reward.write_text("def score(prompts, responses):\n    return [0.0] * len(prompts)\n")
    shutil.copy(ROOT / "constitutions" / "minimal.yaml", principles)
    spec["sft"]["set"]["data.eval_path"] = str(held_out)
    spec["preference"] = "ppo"
    spec["ppo"] = {"set": {"ppo.reward_function": f"{reward}:score",
                           "ppo.constitution": str(principles)}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    mark_current(path)

    def rerun() -> list[str]:
        return [r["stage"] for r in Pipeline(path).status() if r["status"] != "current"]

    assert rerun() == []
    held_out.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    assert rerun() == ["sft", "label", "rm", "ppo", "eval"]
    mark_current(path)
    reward.write_text("def score(prompts, responses):\n    return [1.0] * len(prompts)\n")
    assert rerun() == ["ppo", "eval"]
    mark_current(path)
    principles.write_text(principles.read_text() + "\n# edited\n")
    assert rerun() == ["ppo", "eval"]
    mark_current(path)
    make_tiny_model(tokenizer_dir, model, seed=1)  # the base model retrained in its folder
    assert rerun() == ["revise", "sft", "label", "rm", "ppo", "eval"]
    mark_current(path)
    import cai.pipeline.stages

    real = cai.pipeline.stages.package_versions
    monkeypatch.setattr(cai.pipeline.stages, "package_versions",
                        lambda: {**real(), "transformers": "0.0.1"})
    rows = Pipeline(path).status()
    assert all(r["status"] == "rerun" and "versions" in r["why"] for r in rows)


def test_a_corrupt_stage_file_never_costs_an_archive(tiny_model, tmp_path):
    from cai.pipeline.stages import Pipeline

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Hi?"}) + "\n")
    pipe = Pipeline(write_pipeline(tmp_path, tiny_model, prompts))
    work = tmp_path / "work"
    archived = work / "previous" / "revise-unknown"
    archived.mkdir(parents=True)
    (archived / "data.jsonl").write_text('{"id": "earlier"}\n')
    (work / "revise").mkdir()
    (work / "revise" / "stage.json").write_text("{not json")
    (work / "revise" / "data.jsonl").write_text('{"id": "latest"}\n')
    rows = {r["stage"]: r for r in pipe.status()}
    assert rows["revise"]["status"] == "rerun" and rows["revise"]["why"] == \
        "no readable stage.json"
    pipe._begin("revise")
    assert (archived / "data.jsonl").read_text() == '{"id": "earlier"}\n'
    assert (work / "previous" / "revise-unknown-2" / "data.jsonl").read_text() == \
        '{"id": "latest"}\n'


def test_a_full_fine_tuning_stage_counts_as_done(tiny_model, tmp_path):
    from cai.foundation.model_store import load_causal_lm
    from cai.pipeline.stages import Pipeline

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Hi?"}) + "\n")
    path = write_pipeline(tmp_path, tiny_model, prompts)
    spec = yaml.safe_load(path.read_text())
    spec["sft"]["set"]["lora.enabled"] = False
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    pipe = Pipeline(path)
    revised = tmp_path / "work" / "revise"
    revised.mkdir(parents=True)
    (revised / "data.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "messages": [
        {"role": "user", "content": f"Question {i}?"},
        {"role": "assistant", "content": f"A careful answer {i}."}]}) + "\n" for i in range(4)))
    folder = pipe._begin("sft")
    pipe._train("sft", folder)
    results = folder / "model" / "train_results.json"
    stamp = results.stat().st_mtime_ns
    assert load_causal_lm(folder / "merged") is not None  # what label and dpo start from
    pipe._train("sft", folder)  # done: not trained again
    assert results.stat().st_mtime_ns == stamp


def test_preference_rs_trains_a_classifier_then_rejection_samples(tiny_model, tmp_path):
    """`preference: rs`: revise -> sft -> classifier -> rs -> eval, the classifier's answers read
    by the feedback model, rs graded by that classifier."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"How do I do thing {i}?"})
                               + "\n" for i in range(4)))
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"request {i} {w}",
                                            "p_decline": p}) + "\n"
                                for i, (w, p) in enumerate([("bomb", 0.9), ("cake", 0.1)] * 4)))
    path = write_pipeline(tmp_path, tiny_model, prompts)
    spec = yaml.safe_load(path.read_text())
    shutil.copy(ROOT / "configs" / "rs.yaml", tmp_path / "rs.yaml")
    spec.update(preference="rs", feedback_model=str(tiny_model),
                classifier={"requests": str(requests), "answer_prompts": str(requests),
                            "answer_limit": 3, "max_new_tokens": 6, "layers": [1, 2]},
                rs={"config": "rs.yaml", "set": {
                    "rs.prompts": [f"{prompts}:3", str(requests)], "rs.samples": 2,
                    "rs.max_new_tokens": 6, "rs.min_reward": -1.0, "training.max_steps": 2,
                    "data.max_length": 64}})
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    stages = ["revise", "sft", "classifier", "rs", "eval"]
    assert status(path) == {s: "new" for s in stages}
    result = run_cai("pipeline", "run", path)
    assert result.returncode == 0, result.stderr
    assert status(path) == {s: "current" for s in stages}
    work = tmp_path / "work"
    report = json.loads((work / "classifier" / "report.json").read_text())
    assert report["requests"] == 8 and report["answers"] == 6  # 3 answers of base and of sft
    samples = read_records(work / "rs" / "model" / "round-1" / "samples.jsonl")
    assert len(samples) == 3 + 8 and all(len(s["candidates"]) == 2 for s in samples)
    assert (work / "rs" / "merged" / "config.json").is_file()
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert list(metrics["per_model"]) == ["base", "sft", "rs"]
