"""Every module imports, and the import directions of docs/architecture.md hold: the foundation,
then the cores (generation, constitution, then scoring), then the jobs as peers (revise, label,
contrast, eval, train: none imports another), then the pipeline, and the CLI on top."""

import ast
import importlib
import pkgutil
from pathlib import Path

import cai

OPTIONAL = {"cai.generation.vllm"}  # imports fine; needs vllm only when an engine is built
ROOT = Path(cai.__file__).parent

JOBS = ("revise", "label", "contrast", "eval", "train")
CORES = ("foundation", "generation", "constitution", "scoring")
#: What each part of cai may import (besides `cai` itself and its own modules).
ALLOWED = {
    "foundation": (),
    "generation": ("foundation",),
    "constitution": ("foundation",),
    "scoring": ("foundation", "generation", "constitution"),
    **{job: CORES for job in JOBS},
    "pipeline": (*CORES, *JOBS),
    "schemas": (*CORES, *JOBS, "pipeline"),
    "cli": (*CORES, *JOBS, "pipeline", "schemas"),
}
#: The modules that say what a job's options are: read by the schema generator and the
#: pipeline, they import nothing of their job but each other (and the pure losses, torch alone,
#: whose table a dpo section's loss_type is checked against when one is built).
CONFIGS = ("cai.revise.config", "cai.label.config", "cai.contrast.config", "cai.eval.config",
           "cai.train.config",
           "cai.train.ppo.config", "cai.pipeline.spec", "cai.train.losses")


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(cai.__path__, "cai.")]
    assert "cai.revise.job" in names and "cai.generation.hf" in names
    for name in names:
        importlib.import_module(name)


def test_cli_help_lists_the_commands():
    from cai.cli import build_parser

    text = build_parser().format_help()
    for command in ("constitution", "revise", "records"):
        assert command in text


def _cai_imports(path) -> set[str]:
    """The `cai...` modules a source file imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cai"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("cai"))
    return found


def _part(name: str) -> str:
    """The part of cai a dotted name belongs to: its package or module right under cai, or ''
    for the `cai` package's own names (ROOT)."""
    parts = name.split(".")
    if len(parts) < 2:
        return ""
    first = parts[1]
    return first if (ROOT / first).is_dir() or (ROOT / f"{first}.py").is_file() else ""


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(("cai", *parts)), path


def test_no_job_imports_another_job():
    """The jobs are peers: what two of them share lives in a core below both (the revision gate
    and `cai eval` share `cai.scoring.classify`, not each other's modules)."""
    for module, path in _modules():
        own = _part(module)
        if own not in JOBS:
            continue
        for other in JOBS:
            bad = sorted(i for i in _cai_imports(path) if other != own and _part(i) == other)
            assert not bad, f"{module} imports the {other} job: {bad}"


def test_dependencies_point_one_way():
    """Each part imports only the parts below it (`ALLOWED`): nothing imports the CLI, only the
    CLI and the schema generator import the pipeline, the cores import no job."""
    for module, path in _modules():
        own = _part(module)
        if not own:  # cai/__init__.py
            assert not _cai_imports(path), module
            continue
        allowed = {"", own, *ALLOWED[own]}
        bad = sorted(i for i in _cai_imports(path) if _part(i) not in allowed)
        assert not bad, f"{module} ({own}) imports {bad}"


def test_configs_import_no_job_code():
    """The schema generator and the pipeline read a job's options without importing the job."""
    for module, path in _modules():
        if module not in CONFIGS:
            continue
        job = _part(module)
        bad = sorted(i for i in _cai_imports(path) if _part(i) == job and not any(
            i == c or i.startswith(c + ".") or c.startswith(i + ".") for c in CONFIGS))
        assert not bad, f"{module} imports {bad}"


def test_losses_import_only_torch():
    losses = ROOT / "train" / "losses.py"
    assert not _cai_imports(losses)
    assert "import torch" in losses.read_text(encoding="utf-8")
