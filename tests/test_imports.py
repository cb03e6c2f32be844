import importlib
import pkgutil

import cai

OPTIONAL = {"cai.generation.vllm"}  # imports fine; needs vllm only when an engine is built


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(cai.__path__, "cai.")]
    assert "cai.critique" in names and "cai.generation.hf" in names
    for name in names:
        importlib.import_module(name)


def test_cli_help_lists_the_commands():
    from cai.cli import build_parser

    text = build_parser().format_help()
    for command in ("constitution", "revise", "records"):
        assert command in text
