"""`cai pipeline run|status`: the whole method from one YAML, rerunning only what changed.

Stages, each in its own folder under `workdir`:

    revise -> sft -> label -> dpo            -> eval
                          \\-> rm -> ppo     -/      (with `preference: ppo`)

A stage's *key* is a hash of everything that determines its output: its options, the content of
the files it reads (prompts, constitution, templates, training config and the files that config
names, evaluation sets, local model folders), the versions of cai and transformers, and the
keys of the stages it consumes. `STAGE/stage.json` records the key the folder was made with and
whether the stage finished. On `run`, a finished stage whose key is unchanged is reused; an
unfinished one with the same key resumes in place (every stage is resumable); a stage whose key
changed moves its old folder to `workdir/previous/STAGE-KEY` (nothing is deleted, not even an
earlier archive of the same name) and runs anew, and so does every stage downstream of it,
because their keys include its key. `workdir` is relative to the YAML's folder, and a run holds
a lock on it (`cai.foundation.lock`).

The pipeline fills in what connects the stages (models, data paths, output folders): the base
`model` revises and labels; the SFT model (merged) samples the responses to label and is the
starting point and the reference of DPO/PPO; the evaluation compares base, SFT and final models.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from cai import ROOT
from cai.foundation import lock
from cai.foundation import options as cfgmod
from cai.foundation.errors import CaiError
from cai.foundation.inputs import source_id
from cai.foundation.manifest import package_versions, redact
from cai.foundation.model_store import fingerprint
from cai.foundation.records import atomic_write_text
from cai.pipeline.spec import MIDDLE, PRINCIPLE_OPTIONS, PipelineSpec, default_pipeline
from cai.train import ALGORITHMS

STATE = "stage.json"
PROMPTS = "data/red_team.jsonl"  # the default prompt set of revise, label and ppo
PIPELINE_KEYS = {"eval": "models"}  # a stage's key in the YAML that is not its job's option
#: The classifier stage's input files, by option, and their defaults.
CLASSIFIER_FILES = {"requests": "data/contrast/data.jsonl",
                    "answer_prompts": "data/contrast/data.jsonl", "eval_dir": "data/eval"}


@dataclass
class Stage:
    name: str
    key: str = ""
    inputs: dict = field(default_factory=dict)  # what the key hashes, by name
    upstream: tuple[str, ...] = ()

    def folder(self, workdir: Path) -> Path:
        return workdir / self.name


# --------------------------------------------------------------------------------------------
# Loading the pipeline YAML


class Pipeline:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_pipeline()
        if not self.path.is_file():
            raise CaiError(f"{self.path}: pipeline file not found")
        raw = cfgmod.read_yaml(self.path)
        lines = cfgmod.key_lines(self.path)
        self.where = lambda *keys: f"{self.path}:{lines[keys]}" if keys in lines else str(self.path)
        for key in raw:
            if key not in {f.name for f in dataclasses.fields(PipelineSpec)}:
                cfgmod.build(PipelineSpec, {key: raw[key]}, self.where(key))  # raises, did-you-mean
        for key in ("revise", "sft", "label", "dpo", "rm", "ppo", "classifier", "rs", "grpo",
                    "eval"):
            if raw.get(key) is None:
                raw.pop(key, None)
            elif not isinstance(raw[key], dict):
                raise CaiError(f"{self.where(key)}: '{key}' must be a mapping of options")
        self.spec = cfgmod.build(PipelineSpec, raw, str(self.path))
        self.base = self.path.resolve().parent
        # Outputs go next to the YAML only: never into the repository's own runs.
        self.workdir = (self.base / Path(self.spec.workdir).expanduser()).resolve()
        self.stages = self._stages()
        self._eval_models()  # a bad `eval.models` fails now, not after the training stages
        self._check_principles()  # and so does a misspelt principle id

    def _check_principles(self) -> None:
        """Every principle id a stage names exists where the stage looks it up: revise and label
        in the pipeline's constitution, eval in its own (the judge's by default)."""
        from cai import constitution as constitutions
        from cai.eval.config import JUDGE_CONSTITUTION

        load = functools.cache(constitutions.load)
        for (stage, option), kind in PRINCIPLE_OPTIONS.items():
            options, where = getattr(self.spec, stage), self.where(stage, option)
            if not options.get(option):
                continue
            ids = cfgmod.coerce(options[option], list[str], where)  # as the job will read them
            own = options.get("constitution") if stage == "eval" else self.spec.constitution
            try:
                load(self._path(own) if own else JUDGE_CONSTITUTION).restrict(kind, ids)
            except CaiError as e:
                raise CaiError(f"{where}: '{stage}.{option}': {str(e).splitlines()[0]}") from None

    def _path(self, value: str) -> Path:
        """An input path in the YAML, relative to the YAML's folder (or to the repository root
        for the shipped data/, configs/, constitutions/ when the YAML's folder has none)."""
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        here = self.base / path
        return here if here.exists() or not (ROOT / path).exists() else ROOT / path

    # ----------------------------------------------------------------------------------------
    # Stage graph and keys

    def _stages(self) -> dict[str, Stage]:
        spec = self.spec
        final = spec.preference
        order = ["revise", "sft"] + MIDDLE[final] + ["eval"]
        upstream = {"revise": (), "sft": ("revise",), "label": ("sft",), "dpo": ("sft", "label"),
                    "rm": ("label",), "ppo": ("sft", "rm"), "classifier": ("sft",),
                    "rs": ("sft", "classifier"), "grpo": ("sft", "classifier"),
                    "eval": ("sft", final)}
        shared = {"model": _model_key(spec.model),
                  "feedback_model": _model_key(spec.feedback_model),
                  "constitution": _digest(self._path(spec.constitution)),
                  "templates": _digest(*self._template_dirs())}
        versions = {k: v for k, v in package_versions().items() if k in ("cai", "transformers")}
        stages = {}
        for name in order:
            options = getattr(spec, name)
            inputs = {"options": options, "versions": versions}
            if name in ("revise", "label"):
                inputs.update(shared)
                column = str(options.get("prompt_column", "prompt"))
                inputs["prompts"] = self._input_key(options.get("prompts", PROMPTS), column)
                for key in ("helpful_prompts", "refusal_prompts"):
                    sets = options.get(key)
                    if sets:  # one set keyed as before, as text or a one-item list
                        keys = [self._input_key(h, column) for h in
                                ([sets] if isinstance(sets, str) else sets)]
                        inputs[key] = keys[0] if len(keys) == 1 else keys
            elif name in ALGORITHMS:
                inputs["config"] = _digest(self._train_config_path(name))
                inputs["files"] = self._named_files(name)
                if name in ("ppo", "grpo"):
                    inputs["prompts"] = _digest(self._path(options.get("prompts", PROMPTS)))
            elif name == "classifier":
                inputs.update(model=shared["model"], feedback_model=shared["feedback_model"])
                for key, default in CLASSIFIER_FILES.items():
                    inputs[key] = _digest(self._path(options.get(key, default)))
            elif name == "eval":
                inputs.update(shared, judge=_model_key(spec.judge))
                inputs["data"] = _digest(self._path(options.get("data_dir") or "data/eval"))
            stage = Stage(name, inputs=redact(inputs), upstream=upstream[name])
            text = json.dumps({"stage": name, "inputs": stage.inputs,
                               "upstream": {u: stages[u].key for u in stage.upstream}},
                              sort_keys=True, default=str)
            stage.key = hashlib.sha256(text.encode()).hexdigest()[:16]
            stages[name] = stage
        return stages

    def rerun_by_edit(self, old: bytes, new: bytes) -> list[str]:
        """The stages an edit of the pipeline's constitution file, from `old` to `new` bytes,
        would rerun: those whose key differs (`cai constitution diff`). Each version is hashed
        under the file's own name, as `run` and `status` hash it."""
        import tempfile

        spec, name = self.spec, self._path(self.spec.constitution).name
        keys = []
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for i, data in enumerate((old, new)):
                    path = Path(tmp) / str(i) / name
                    path.parent.mkdir()
                    path.write_bytes(data)
                    self.spec = dataclasses.replace(spec, constitution=str(path))
                    keys.append({s: stage.key for s, stage in self._stages().items()})
        finally:
            self.spec = spec
        return [s for s in self.stages if keys[0][s] != keys[1][s]]

    def _input_key(self, spec: str, column: str) -> str:
        """A prompt set's key: a file's bytes, or a `dataset:`'s prompts."""
        spec = str(spec)
        return source_id(spec, column)[:16] if spec.startswith("dataset:") else \
            _digest(self._path(spec))

    def _named_files(self, name: str) -> dict:
        """The files and folders a training stage's config names (with its `set` overrides), by
        key, each by its content: `data.eval_path`, `ppo.constitution`, a `reward_function`'s
        file, a local model folder... Keys the pipeline sets (upstream outputs) are left out,
        their stages' keys stand for them. Paths are the trainer's: relative to the working
        folder."""
        raw = cfgmod.read_yaml(self._train_config_path(name))
        values = {f"{section}.{key}": value for section, body in raw.items()
                  if isinstance(body, dict) for key, value in body.items()}
        values.update(getattr(self.spec, name).get("set") or {})
        skip = set(self._fixed(name)) | {"training.output_dir"}
        out = {}
        for key, value in sorted(values.items()):
            if key in skip:
                continue
            for text in value if isinstance(value, list) else [value]:
                if not isinstance(text, str) or not text:
                    continue
                for candidate in dict.fromkeys([text, text.rpartition(":")[0]]):
                    path = Path(candidate).expanduser()
                    if candidate and path.exists():
                        out[f"{key}:{candidate}"] = fingerprint(path) \
                            if (path / "config.json").is_file() else _digest(path)
        return out

    def _template_dirs(self) -> list[Path]:
        dirs = [ROOT / "prompts"]
        if self.spec.prompts_dir:
            dirs.append(self._path(self.spec.prompts_dir))
        return dirs

    def _train_config_path(self, name: str) -> Path:
        options = getattr(self.spec, name)
        allowed = {"config", "set"} | ({"prompts"} if name in ("ppo", "grpo") else set())
        unknown = set(options) - allowed
        if unknown:
            raise CaiError(f"{self.where(name, sorted(unknown)[0])}: unknown key "
                           f"'{name}.{sorted(unknown)[0]}' (a training stage takes "
                           f"{' and '.join(sorted(allowed))})")
        path = self._path(options.get("config", f"configs/{name}.yaml"))
        if not path.is_file():
            raise CaiError(f"{self.where(name, 'config')}: {path}: config file not found")
        return path

    # ----------------------------------------------------------------------------------------
    # State

    def state(self, name: str) -> dict:
        try:
            return json.loads((self.stages[name].folder(self.workdir) / STATE).read_text())
        except (OSError, ValueError):
            return {}

    def status(self) -> list[dict]:
        """Each stage: 'current' (reused as is), 'resume' (same inputs, unfinished), 'rerun'
        (inputs changed: which ones), or 'new' (never run)."""
        rows = []
        for name, stage in self.stages.items():
            state = self.state(name)
            if not state and stage.folder(self.workdir).exists():
                status, why = "rerun", f"no readable {STATE}"
            elif not state:
                status, why = "new", ""
            elif state.get("key") == stage.key:
                status, why = ("current" if state.get("done") else "resume"), ""
            else:
                old = state.get("inputs", {})
                why = [k for k in sorted(set(old) | set(stage.inputs))
                       if old.get(k) != stage.inputs.get(k)]
                ups = state.get("upstream", {})
                why += [f"{u} (upstream)" for u in stage.upstream
                        if ups.get(u) != self.stages[u].key]
                status, why = "rerun", ", ".join(why)
            rows.append({"stage": name, "status": status, "why": why,
                         "folder": str(stage.folder(self.workdir))})
        return rows

    def _begin(self, name: str) -> Path:
        stage, state = self.stages[name], self.state(name)
        folder = stage.folder(self.workdir)
        if state and state.get("key") != stage.key or not state and folder.exists():
            base = self.workdir / "previous" / f"{name}-{state.get('key', 'unknown')}"
            old, n = base, 1
            while old.exists():  # archived before (or its stage.json was unreadable): keep both
                n += 1
                old = base.with_name(f"{base.name}-{n}")
            old.parent.mkdir(parents=True, exist_ok=True)
            os.rename(folder, old)
            print(f"[pipeline] {name}: inputs changed; earlier outputs moved to {old}",
                  flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        if not state or state.get("key") != stage.key:
            self._write_state(name, done=False)
        return folder

    def _write_state(self, name: str, done: bool, **extra) -> None:
        stage = self.stages[name]
        state = {"stage": name, "key": stage.key, "done": done, "inputs": stage.inputs,
                 "upstream": {u: self.stages[u].key for u in stage.upstream}, **extra}
        atomic_write_text(stage.folder(self.workdir) / STATE, json.dumps(state, indent=2) + "\n")

    # ----------------------------------------------------------------------------------------
    # Running

    def run(self) -> dict:
        """Run every stage that is not current; return the last stage's result (the evaluation
        summary). The workdir stays locked meanwhile: a second `cai pipeline run` on it stops."""
        with lock.hold(self.workdir):
            return self._run_stages()

    def _run_stages(self) -> dict:
        result = {}
        for row in self.status():
            name = row["stage"]
            if row["status"] == "current":
                print(f"[pipeline] {name}: current, reusing {row['folder']}", flush=True)
                result = self.state(name).get("result", {})
                continue
            verb = {"resume": "resuming", "rerun": f"rerunning ({row['why']})",
                    "new": "running"}[row["status"]]
            print(f"[pipeline] {name}: {verb}", flush=True)
            folder = self._begin(name)
            start = time.perf_counter()
            job = getattr(self, f"_run_{name}", None)  # the training stages: self._train
            result = (job(folder) if job else self._train(name, folder)) or {}
            gc.collect()
            seconds = round(time.perf_counter() - start, 1)
            self._write_state(name, done=True, seconds=seconds, result=result)
            print(f"[pipeline] {name}: done in {seconds:.0f} s", flush=True)
        return result

    def _out(self, name: str) -> Path:
        return self.workdir / name

    def _merged(self, name: str) -> Path:
        return self._out(name) / "merged"

    def _job_options(self, name: str, cls, fixed: dict, defaults: dict) -> object:
        fixed = {k: v for k, v in fixed.items() if v is not None}  # unset roles: the stage's
        options = {**defaults, **getattr(self.spec, name)}
        options.pop(PIPELINE_KEYS.get(name, ""), None)
        for key in fixed:
            if key in getattr(self.spec, name):
                raise CaiError(f"{self.where(name, key)}: '{name}.{key}' is set by the pipeline")
        def resolve(v):
            return str(self._path(v)) if isinstance(v, str) and \
                not v.startswith("dataset:") else v

        for key in ("prompts", "responses", "helpful_prompts", "refusal_prompts"):
            if isinstance(options.get(key), list):
                options[key] = [resolve(v) for v in options[key]]
            elif key in options:
                options[key] = resolve(options[key])
        return cfgmod.build(cls, {**options, **fixed}, self.where(name))

    def _run_revise(self, folder: Path) -> dict:
        from cai.revise.config import ReviseConfig
        from cai.revise.job import run

        cfg = self._job_options("revise", ReviseConfig, {
            "model": self.spec.model, "feedback": self.spec.feedback_model,
            "constitution": str(self._path(self.spec.constitution)),
            "out": str(folder), "prompts_dir": self._prompts_dir()}, {"prompts": PROMPTS})
        return run(cfg)

    def _run_classifier(self, folder: Path) -> dict:
        from cai.train.classifier import ClassifierConfig, run

        options = {k: str(self._path(v)) if k in CLASSIFIER_FILES else v
                   for k, v in self.spec.classifier.items()}
        fixed = {"backbone": self.spec.model, "out": str(folder),
                 "answer_models": [self.spec.model, str(self._merged("sft"))],
                 "judge": self.spec.feedback_model}
        for key in fixed:
            if key in options:
                raise CaiError(f"{self.where('classifier', key)}: 'classifier.{key}' is set by "
                               "the pipeline")
        defaults = {k: str(self._path(v)) for k, v in CLASSIFIER_FILES.items()}
        cfg = cfgmod.build(ClassifierConfig, {**defaults, **options,
                                              **{k: v for k, v in fixed.items() if v}},
                           self.where("classifier"))
        return run(cfg, progress=lambda text: print(f"[pipeline] classifier: {text}",
                                                    flush=True))

    def _run_label(self, folder: Path) -> dict:
        from cai.label.config import LabelConfig
        from cai.label.job import run

        cfg = self._job_options("label", LabelConfig, {
            "policy": str(self._merged("sft")),
            "labeler": self.spec.feedback_model or self.spec.model,
            "constitution": str(self._path(self.spec.constitution)), "out": str(folder),
            "prompts_dir": self._prompts_dir()}, {"prompts": PROMPTS})
        return run(cfg)

    def _prompts_dir(self) -> str | None:
        return str(self._path(self.spec.prompts_dir)) if self.spec.prompts_dir else None

    def _fixed(self, name: str) -> dict:
        """What the pipeline sets in training stage `name`'s config: its starting model and
        its data, from the stages before it."""
        prompts = str(self._path(getattr(self.spec, name).get("prompts", PROMPTS)))
        return {"sft": {"model.name": self.spec.model, "data.path": str(self._out("revise"))},
                "dpo": {"model.name": str(self._merged("sft")),
                        "data.path": str(self._out("label"))},
                "rm": {"model.name": self.spec.model, "data.path": str(self._out("label"))},
                "ppo": {"model.name": str(self._merged("sft")), "data.path": prompts,
                        "ppo.reward_model": str(self._out("rm") / "model")},
                "rs": {"model.name": str(self._merged("sft")),
                       "rs.classifier": str(self._out("classifier"))},
                "grpo": {"model.name": str(self._merged("sft")), "data.path": prompts,
                         "ppo.classifier": str(self._out("classifier"))}}[name]

    def _train(self, name: str, folder: Path) -> dict:
        from cai.train import trainer
        from cai.train.common import checkpoints
        from cai.train.export import export

        module = trainer(name)
        options, fixed = getattr(self.spec, name), self._fixed(name)
        sets = options.get("set") or {}
        if not isinstance(sets, dict):
            raise CaiError(f"{self.where(name, 'set')}: '{name}.set' must map section.key to "
                           "values")
        for key in fixed:
            if key in sets:
                raise CaiError(f"{self.where(name, 'set')}: '{name}.set.{key}' is set by the "
                               "pipeline")
        output = folder / "model"
        overrides = [(k, v) for k, v in sets.items()] + \
            [(k, str(v)) for k, v in fixed.items()] + [("training.output_dir", str(output))]
        cfg = module.load_config(str(self._train_config_path(name)), overrides)
        metrics = {}
        # An adapter (LoRA) or a whole model (lora.enabled: false), and the final metrics.
        done = ((output / "adapter_config.json").is_file() or (output / "config.json").is_file()) \
            and (output / "train_results.json").is_file()
        if not done:
            metrics = module.train(cfg, resume=output.is_dir() and bool(checkpoints(output)))
        merged = self._merged(name)
        if name != "rm" and not merged.exists():
            if (output / "adapter_config.json").is_file():
                export(output, merged, merge=True)
            else:  # full fine-tuning: the model folder already is the merged model
                merged.symlink_to(output.name, target_is_directory=True)
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}

    def _eval_models(self) -> list[str]:
        """`eval.models`: which of base, sft and final the evaluation compares (all three by
        default), as `cai eval --model` values in that order."""
        final = self.spec.preference
        chosen = self.spec.eval.get("models", ["base", "sft", "final"])
        if isinstance(chosen, str):
            chosen = [m.strip() for m in chosen.split(",")]
        known = {"base": f"base={self.spec.model}", "sft": f"sft={self._merged('sft')}",
                 "final": f"{final}={self._merged(final)}"}
        bad = [m for m in chosen if m not in known] if isinstance(chosen, list) else [chosen]
        if bad or len(chosen) < 2 or len(set(chosen)) < len(chosen):
            raise CaiError(f"{self.where('eval', 'models')}: 'eval.models' must list two or "
                           f"three of base, sft, final, each once; got {chosen!r}")
        return [known[m] for m in known if m in chosen]

    def _run_eval(self, folder: Path) -> dict:
        from cai.eval.config import EvalConfig
        from cai.eval.job import run

        cfg = self._job_options("eval", EvalConfig, {
            "model": self._eval_models(),
            "out": str(folder), "judge": self.spec.judge,
            "feedback_model": self.spec.feedback_model}, {"feedback_model": self.spec.model})
        return run(cfg)


def _model_key(name: str | None) -> str | None:
    """A model in a stage key: a local folder by its files (`models.fingerprint`), a name (an
    embedded model, a hub id) as it is."""
    return fingerprint(name) if name and Path(name).expanduser().is_dir() else name


def _digest(*paths: Path) -> str:
    """sha256 of files' bytes (a folder: every file in it, by relative path); '-' if missing."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if not f.is_file():
                h.update(f"missing:{f.name}".encode())
                continue
            h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]
