"""Loading a constitution file: every problem with its file and line, and the same rules as a
JSON Schema.

Validation collects every problem before anything runs. `schema()` states the same rules for
editors and other tools (shipped as constitutions/constitution.schema.json); both are made from
the tables below.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from cai import ROOT
from cai.constitution.principles import Constitution, Example, PreferenceExample, Principle
from cai.foundation.errors import CaiError

DEFAULT_PATH = ROOT / "constitutions" / "default.yaml"
ID_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

# What a constitution holds. The validator below and the JSON Schema (`schema()`, shipped as
# constitutions/constitution.schema.json for editors) are both made from these tables.
TOP_FIELDS = {
    "name": "short name of the value set; every record names the constitution it used",
    "description": "one paragraph: what the constitution is for",
}
REQUIRED_TOP = ("name",)
#: Each list section: (what it is for, {required field: help}, {optional field: help}).
SECTIONS = {
    "critique_revision": (
        "SL-CAI principles (cai revise): a critique request and a revision request each",
        {"id": "unique kebab-case id; records name it",
         "critique": "asks the model to point out how its last answer breaks the principle",
         "revision": "asks the model to rewrite the answer to fix exactly that"}, {}),
    "preference": (
        "RL-CAI principles (cai label, the revision gate): a comparison question each",
        {"id": "unique kebab-case id; records name it",
         "question": "a 'Which response ...?' question the feedback model answers with (A) or "
                     "(B)"}, {}),
    "examples": (
        "few-shot demonstrations of one critique/revision round, shown before each request",
        {"prompt": "the user's request", "response": "the answer being critiqued",
         "critique": "the critique the model should write", "revision": "the rewritten answer"},
        {"principle": "critique_revision id whose requests the demonstration shows (default: "
                      "the first principle's)",
         "critique_request": "the critique request shown (instead of a principle's)",
         "revision_request": "the revision request shown (instead of a principle's)"}),
    "preference_examples": (
        "few-shot demonstrations of one labelling answer, (A) or (B)",
        {"prompt": "the user's request", "response_a": "response (A)",
         "response_b": "response (B)", "answer": "the better response: A or B"},
        {"question": "the comparison question shown (default: the one being asked)",
         "reasoning": "the reasoning shown in chain-of-thought mode"}),
}
#: Sections of principles: a constitution needs entries in at least one.
PRINCIPLE_SECTIONS = ("critique_revision", "preference")
#: Fields with a fixed form: (pattern, the form in words); fields with fixed choices.
FORMS = {"id": (ID_PATTERN, "kebab-case (lowercase letters, digits, single hyphens)")}
CHOICES = {"answer": ("A", "B")}

TOP_KEYS = (*TOP_FIELDS, *SECTIONS)
#: For each list section: (required fields, optional fields).
SECTION_FIELDS = {name: (tuple(req), tuple(opt)) for name, (_, req, opt) in SECTIONS.items()}


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a constitution file: where (file, 1-based line, field) and what.

    `in_schema` is False for the checks the JSON Schema cannot express (they need the whole
    file): duplicate keys, duplicate ids, an example naming an unknown principle.
    """

    path: str
    line: int | None
    field: str | None
    message: str
    in_schema: bool = True

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else \
            f"{self.path}: {self.message}"


class ConstitutionError(CaiError):
    """Every problem found in a constitution file, one `file:line: message` line each."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def _problem(path, node, field: str | None, message: str, in_schema: bool = True) -> Problem:
    line = node.start_mark.line + 1 if node is not None else None
    return Problem(str(path), line, field, message, in_schema)


def _did_you_mean(key: str, allowed) -> str:
    match = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else f" (allowed: {', '.join(allowed)})"


def _string(path, node, field: str, problems: list[Problem]) -> str:
    """The text of a scalar string node; a problem is recorded when it is missing, empty or not
    text."""
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
        kind = "a list" if isinstance(node, yaml.SequenceNode) else \
            "a mapping" if isinstance(node, yaml.MappingNode) else "not text"
        problems.append(_problem(path, node, field, f"{field} must be text, got {kind}"))
        return ""
    if not node.value.strip():
        problems.append(_problem(path, node, field, f"{field} is empty"))
    return node.value


def _mapping(path, node, allowed, required, what: str, problems: list[Problem],
             prefix: str = "") -> dict:
    """A mapping node as {key: value node}, recording unknown, duplicate and missing keys.
    `prefix` turns a key into its field name (e.g. 'critique_revision[0].')."""
    if not isinstance(node, yaml.MappingNode):
        problems.append(_problem(path, node, prefix.rstrip(".") or None,
                                 f"{what} must be a mapping of keys to values"))
        return {}
    out = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in allowed:
            problems.append(_problem(path, key_node, f"{prefix}{key}", f"unknown key '{key}' in "
                                     f"{what}" + _did_you_mean(str(key), allowed)))
        elif key in out:
            problems.append(_problem(path, key_node, f"{prefix}{key}",
                                     f"key '{key}' appears twice in {what}", in_schema=False))
        else:
            out[key] = value_node
    for key in required:
        if key not in out:
            problems.append(_problem(path, node, f"{prefix}{key}", f"{what} is missing '{key}'"))
    return out


def _section(path, name, node, problems) -> list[dict]:
    """The entries of one list section as dicts of strings (problems recorded, bad entries kept)."""
    required, optional = SECTION_FIELDS[name]
    if not isinstance(node, yaml.SequenceNode):
        if not (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
            problems.append(_problem(path, node, name, f"'{name}' must be a list"))
        return []
    entries, seen = [], {}
    for i, item in enumerate(node.value):
        what = f"{name}[{i}]"
        fields = _mapping(path, item, required + optional, required, what, problems, what + ".")
        entry = {k: _string(path, v, f"{what}.{k}", problems) for k, v in fields.items()}
        for key, value in entry.items():
            if key in FORMS and value and not FORMS[key][0].fullmatch(value):
                problems.append(_problem(path, fields[key], f"{what}.{key}", f"{what}.{key} "
                                         f"'{value}' must be {FORMS[key][1]}"))
            if key in CHOICES and value and value not in CHOICES[key]:
                problems.append(_problem(path, fields[key], f"{what}.{key}", f"{what}.{key} must "
                                         f"be {' or '.join(CHOICES[key])}, got '{value}'"))
        pid = entry.get("id")
        if pid:
            if pid in seen:
                problems.append(_problem(path, fields["id"], f"{what}.id", f"duplicate id "
                                         f"'{pid}' in '{name}' (first at line {seen[pid]})",
                                         in_schema=False))
            seen.setdefault(pid, fields["id"].start_mark.line + 1)
        entry["_node"] = item
        entries.append(entry)
    return entries


def parse(text: str, path: str = "<string>", sha256: str = "") -> Constitution:
    """Validate constitution YAML text; raise `ConstitutionError` listing every problem."""
    problems: list[Problem] = []
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", e)
        raise ConstitutionError([Problem(str(path), mark.line + 1 if mark else None, None,
                                         f"not valid YAML: {problem}")]) from None
    if root is None:
        raise ConstitutionError([Problem(str(path), None, None, "the file is empty")])
    top = _mapping(path, root, TOP_KEYS, REQUIRED_TOP, "the constitution", problems)
    texts = {k: _string(path, top[k], k, problems) if k in top else "" for k in TOP_FIELDS}
    sections = {s: _section(path, s, top[s], problems) if s in top else []
                for s in SECTION_FIELDS}
    if not any(sections[s] for s in PRINCIPLE_SECTIONS):
        problems.append(_problem(path, root, None, "no principles: add "
                                 + " or ".join(f"'{s}'" for s in PRINCIPLE_SECTIONS)
                                 + " entries"))
    known = {e.get("id") for e in sections["critique_revision"]}
    for i, ex in enumerate(sections["examples"]):
        if ex.get("principle") and ex["principle"] not in known:
            problems.append(_problem(path, ex["_node"], f"examples[{i}].principle",
                                     f"examples[{i}].principle '{ex['principle']}' is not a "
                                     "critique_revision id"
                                     + _did_you_mean(ex["principle"], sorted(known - {None})),
                                     in_schema=False))
    if problems:
        raise ConstitutionError(sorted(problems, key=lambda p: p.line or 0))  # in file order

    def build(cls, entries):
        return tuple(cls(**{k: v for k, v in e.items() if k != "_node"}) for e in entries)

    return Constitution(name=texts["name"], description=texts["description"].strip(),
                        critique_revision=build(Principle, sections["critique_revision"]),
                        preference=build(Principle, sections["preference"]),
                        examples=build(Example, sections["examples"]),
                        preference_examples=build(PreferenceExample,
                                                  sections["preference_examples"]),
                        path=str(path), sha256=sha256)


def load(path: str | Path | None = None) -> Constitution:
    """Load and validate a constitution file (the shipped default when `path` is None)."""
    path = Path(path) if path else DEFAULT_PATH
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConstitutionError([Problem(str(path), None, None, "cannot read the constitution "
                                         f"({e.strerror or e})")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConstitutionError([Problem(str(path), line, None, f"not UTF-8 text (byte "
                                         f"{data[e.start]:#04x} at offset {e.start}); save the "
                                         "file as UTF-8")]) from None
    return parse(text, str(path), hashlib.sha256(data).hexdigest())


def schema() -> dict:
    """The JSON Schema (draft-07, what YAML editors read) of a constitution file, made from the
    tables the validator reads. It checks everything but what needs the whole file (duplicate
    keys and ids, an example naming an unknown principle: `Problem.in_schema` is False)."""

    def text(field: str, help: str) -> dict:
        # patternErrorMessage: what VS Code and the YAML language server say when it fails
        out = {"type": "string", "description": help, "pattern": r"\S",
               "patternErrorMessage": f"{field} is empty"}
        if field in FORMS:
            out["pattern"] = FORMS[field][0].pattern
            out["patternErrorMessage"] = f"{field} must be {FORMS[field][1]}"
        if field in CHOICES:
            out["enum"] = list(CHOICES[field])
        return out

    properties = {k: text(k, help) for k, help in TOP_FIELDS.items()}
    for name, (help, required, optional) in SECTIONS.items():
        properties[name] = {"description": help, "type": ["array", "null"], "items": {
            "type": "object", "additionalProperties": False, "required": list(required),
            "properties": {k: text(k, h) for k, h in {**required, **optional}.items()}}}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "cai constitution",
        "description": "Principles for Constitutional AI training (cai). Generated by `cai "
                       "constitution schema` from the validator's tables in "
                       "cai/constitution/loader.py; `cai constitution check` also finds duplicate "
                       "ids and examples naming an unknown principle.",
        "type": "object", "additionalProperties": False, "required": list(REQUIRED_TOP),
        "properties": properties,
        "anyOf": [{"required": [s], "properties": {s: {"type": "array", "minItems": 1}}}
                  for s in PRINCIPLE_SECTIONS],
    }
