"""cai: Constitutional AI (Bai et al. 2022) from a written constitution, with no human labels."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root: shipped constitutions, prompt templates, data and configs live here.
ROOT = Path(__file__).resolve().parent.parent
