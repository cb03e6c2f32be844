"""Constitutions: the principles a job critiques, revises and compares by.

`load` reads and validates a YAML file (every problem with file and line), `schema` states the
same rules as a JSON Schema, `sample_principles` draws an item's principles, `import_json`
converts the public CAI JSON layout, and `cai.constitution.diff` compares two constitutions.
"""

from cai.constitution.importer import import_json, to_yaml
from cai.constitution.loader import DEFAULT_PATH, ConstitutionError, Problem, load, parse, schema
from cai.constitution.principles import (
    Constitution,
    Example,
    PreferenceExample,
    Principle,
    sample_principles,
)

__all__ = ["DEFAULT_PATH", "Constitution", "ConstitutionError", "Example", "PreferenceExample",
           "Principle", "Problem", "import_json", "load", "parse", "sample_principles", "schema",
           "to_yaml"]
