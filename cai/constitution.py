"""Constitutions: load and validate the YAML, import the public JSON layout, sample principles.

A constitution has two lists of principles (Bai et al. 2022, arXiv:2212.08073):
`critique_revision` principles drive the supervised stage (a critique request and a revision
request each), `preference` principles drive AI feedback (a comparison question each). Optional
`examples` are few-shot demonstrations of one critique/revision round, optional
`preference_examples` few-shot demonstrations of one labelling answer, (A) or (B).

Validation collects every problem, each with the file and line, before anything runs.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cai import ROOT
from cai.errors import CaiError

DEFAULT_PATH = ROOT / "constitutions" / "default.yaml"
ID_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

TOP_KEYS = ("name", "description", "critique_revision", "preference", "examples",
            "preference_examples")
# For each list section: (required fields, optional fields).
SECTION_FIELDS = {
    "critique_revision": (("id", "critique", "revision"), ()),
    "preference": (("id", "question"), ()),
    "examples": (("prompt", "response", "critique", "revision"),
                 ("principle", "critique_request", "revision_request")),
    "preference_examples": (("prompt", "response_a", "response_b", "answer"),
                            ("question", "reasoning")),
}


@dataclass(frozen=True)
class Principle:
    """One principle. `critique`/`revision` are set for SL-CAI ones, `question` for preference."""

    id: str
    critique: str = ""
    revision: str = ""
    question: str = ""


@dataclass(frozen=True)
class Example:
    """A few-shot demonstration of one critique/revision round.

    The requests shown in the demonstration are `critique_request`/`revision_request` when given
    (imported files carry them), else the texts of principle `principle`, else of the first
    critique/revision principle.
    """

    prompt: str
    response: str
    critique: str
    revision: str
    principle: str = ""
    critique_request: str = ""
    revision_request: str = ""


@dataclass(frozen=True)
class PreferenceExample:
    """A few-shot demonstration of AI feedback: two responses and the right answer, "A" or "B".

    `question` defaults to the question being asked; `reasoning` is shown in chain-of-thought
    mode, which uses only the examples that have it.
    """

    prompt: str
    response_a: str
    response_b: str
    answer: str
    question: str = ""
    reasoning: str = ""


@dataclass(frozen=True)
class Constitution:
    name: str
    description: str = ""
    critique_revision: tuple[Principle, ...] = ()
    preference: tuple[Principle, ...] = ()
    examples: tuple[Example, ...] = ()
    preference_examples: tuple[PreferenceExample, ...] = ()
    path: str = ""
    sha256: str = field(default="", compare=False)

    def principles(self, kind: str) -> tuple[Principle, ...]:
        """The principles of one section; a clear error when a job needs a section that is empty."""
        found = getattr(self, kind)
        if not found:
            raise CaiError(f"{self.path or self.name}: has no '{kind}' principles, which this "
                           "job needs")
        return found

    def get(self, kind: str, principle_id: str) -> Principle:
        for p in self.principles(kind):
            if p.id == principle_id:
                return p
        known = [p.id for p in getattr(self, kind)]
        hint = difflib.get_close_matches(principle_id, known, n=1)
        raise CaiError(
            f"{self.path or self.name}: no {kind} principle '{principle_id}'"
            + (f" (did you mean '{hint[0]}'?)" if hint else f"; known: {', '.join(known)}")
        )

    def restrict(self, kind: str, ids: list[str] | None) -> tuple[Principle, ...]:
        """The section's principles, or only those named in `ids` (each checked to exist)."""
        if not ids:
            return self.principles(kind)
        return tuple(self.get(kind, i) for i in ids)

    def example_requests(self, example: Example) -> tuple[str, str]:
        """The (critique request, revision request) texts a few-shot example is shown with."""
        if example.critique_request and example.revision_request:
            return example.critique_request, example.revision_request
        p = self.get("critique_revision", example.principle) if example.principle \
            else self.principles("critique_revision")[0]
        return example.critique_request or p.critique, example.revision_request or p.revision


def sample_principles(principles, key: str, k: int, seed: int) -> list[Principle]:
    """`k` principles for one item, from a RNG seeded by (seed, key) alone.

    Seeding per item (not per run) makes the draw independent of batching, sharding and resume.
    Draws without replacement while principles last, then starts a new shuffled pass.
    """
    rng = random.Random(f"{seed}:{key}")
    out: list[Principle] = []
    while len(out) < k:
        out.extend(rng.sample(list(principles), len(principles)))
    return out[:k]


# --------------------------------------------------------------------------------------------
# Loading and validation


def _problem(path, node, message: str) -> str:
    line = node.start_mark.line + 1 if node is not None else None
    return f"{path}:{line}: {message}" if line else f"{path}: {message}"


def _did_you_mean(key: str, allowed) -> str:
    match = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else f" (allowed: {', '.join(allowed)})"


def _string(path, node, what: str, problems: list[str]) -> str:
    """The text of a scalar string node; a problem is recorded when it is missing, empty or not
    text."""
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
        kind = "a list" if isinstance(node, yaml.SequenceNode) else \
            "a mapping" if isinstance(node, yaml.MappingNode) else "not text"
        problems.append(_problem(path, node, f"{what} must be text, got {kind}"))
        return ""
    if not node.value.strip():
        problems.append(_problem(path, node, f"{what} is empty"))
    return node.value


def _mapping(path, node, allowed, required, what: str, problems: list[str]) -> dict:
    """A mapping node as {key: value node}, recording unknown, duplicate and missing keys."""
    if not isinstance(node, yaml.MappingNode):
        problems.append(_problem(path, node, f"{what} must be a mapping of keys to values"))
        return {}
    out = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in allowed:
            problems.append(_problem(path, key_node, f"unknown key '{key}' in {what}"
                                     + _did_you_mean(str(key), allowed)))
        elif key in out:
            problems.append(_problem(path, key_node, f"key '{key}' appears twice in {what}"))
        else:
            out[key] = value_node
    for key in required:
        if key not in out:
            problems.append(_problem(path, node, f"{what} is missing '{key}'"))
    return out


def _section(path, name, node, problems) -> list[dict]:
    """The entries of one list section as dicts of strings (problems recorded, bad entries kept)."""
    required, optional = SECTION_FIELDS[name]
    if not isinstance(node, yaml.SequenceNode):
        if not (isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null")):
            problems.append(_problem(path, node, f"'{name}' must be a list"))
        return []
    entries, seen = [], {}
    for i, item in enumerate(node.value):
        what = f"{name}[{i}]"
        fields = _mapping(path, item, required + optional, required, what, problems)
        entry = {k: _string(path, v, f"{what}.{k}", problems) for k, v in fields.items()}
        pid = entry.get("id")
        if pid:
            if not ID_PATTERN.match(pid):
                problems.append(_problem(path, fields["id"], f"{what}.id '{pid}' must be "
                                         "kebab-case (lowercase letters, digits, single "
                                         "hyphens)"))
            if pid in seen:
                problems.append(_problem(path, fields["id"], f"duplicate id '{pid}' in '{name}' "
                                         f"(first at line {seen[pid]})"))
            seen.setdefault(pid, fields["id"].start_mark.line + 1)
        entry["_node"] = item
        entries.append(entry)
    return entries


def parse(text: str, path: str = "<string>", sha256: str = "") -> Constitution:
    """Validate constitution YAML text; raise `ConstitutionError` listing every problem."""
    problems: list[str] = []
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", e)
        raise ConstitutionError([f"{path}{line}: not valid YAML: {problem}"]) from None
    if root is None:
        raise ConstitutionError([f"{path}: the file is empty"])
    top = _mapping(path, root, TOP_KEYS, ("name",), "the constitution", problems)
    name = _string(path, top["name"], "name", problems) if "name" in top else ""
    description = _string(path, top["description"], "description", problems) \
        if "description" in top else ""
    sections = {s: _section(path, s, top[s], problems) if s in top else []
                for s in SECTION_FIELDS}
    if not sections["critique_revision"] and not sections["preference"]:
        problems.append(_problem(path, root, "no principles: add 'critique_revision' or "
                                 "'preference' entries"))
    known = {e.get("id") for e in sections["critique_revision"]}
    for i, ex in enumerate(sections["examples"]):
        if ex.get("principle") and ex["principle"] not in known:
            problems.append(_problem(path, ex["_node"], f"examples[{i}].principle "
                                     f"'{ex['principle']}' is not a critique_revision id"
                                     + _did_you_mean(ex["principle"], sorted(known - {None}))))
    for i, ex in enumerate(sections["preference_examples"]):
        if ex.get("answer") and ex["answer"] not in ("A", "B"):
            problems.append(_problem(path, ex["_node"], f"preference_examples[{i}].answer must be "
                                     f"A or B, got '{ex['answer']}'"))
    if problems:
        raise ConstitutionError(problems)

    def build(cls, entries):
        return tuple(cls(**{k: v for k, v in e.items() if k != "_node"}) for e in entries)

    return Constitution(name=name, description=description.strip(),
                        critique_revision=build(Principle, sections["critique_revision"]),
                        preference=build(Principle, sections["preference"]),
                        examples=build(Example, sections["examples"]),
                        preference_examples=build(PreferenceExample,
                                                  sections["preference_examples"]),
                        path=str(path), sha256=sha256)


class ConstitutionError(CaiError):
    """Every problem found in a constitution file, one `file:line: message` per entry."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def load(path: str | Path | None = None) -> Constitution:
    """Load and validate a constitution file (the shipped default when `path` is None)."""
    path = Path(path) if path else DEFAULT_PATH
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CaiError(f"{path}: cannot read the constitution ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConstitutionError([f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at "
                                 f"offset {e.start}); save the file as UTF-8"]) from None
    return parse(text, str(path), hashlib.sha256(data).hexdigest())


# --------------------------------------------------------------------------------------------
# Import and export


def import_json(path: str | Path, name: str | None = None) -> dict:
    """Convert the JSON layout of public CAI recipes into our YAML layout (as a dict).

    The input is `{"constitutions": [{"critic": str, "revision": str}, ...], "system_chat":
    [[6 chat turns], ...]}`, each chat being user prompt, assistant answer, user critique
    request, assistant critique, user revision request, assistant revision.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CaiError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        line = getattr(e, "lineno", None)
        raise CaiError(f"{path}{f':{line}' if line else ''}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("constitutions"), list):
        raise CaiError(f"{path}: expected an object with a 'constitutions' list of "
                       "{'critic', 'revision'} entries")
    principles = []
    for i, c in enumerate(data["constitutions"]):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) and c[k].strip()
                                              for k in ("critic", "revision")):
            raise CaiError(f"{path}: constitutions[{i}] needs non-empty 'critic' and 'revision' "
                           "text")
        principles.append({"id": f"principle-{i + 1}", "critique": c["critic"].strip(),
                           "revision": c["revision"].strip()})
    examples = []
    for i, chat in enumerate(data.get("system_chat") or []):
        roles = ["user", "assistant"] * 3
        if not (isinstance(chat, list) and len(chat) == 6 and all(
                isinstance(t, dict) and t.get("role") == r and isinstance(t.get("content"), str)
                for t, r in zip(chat, roles))):
            raise CaiError(f"{path}: system_chat[{i}] must be 6 turns alternating user/assistant "
                           "(prompt, answer, critique request, critique, revision request, "
                           "revision)")
        c = [t["content"].strip() for t in chat]
        examples.append({"prompt": c[0], "response": c[1], "critique_request": c[2],
                         "critique": c[3], "revision_request": c[4], "revision": c[5]})
    out = {"name": name or re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "imported",
           "description": f"Imported from {path.name}.",
           "critique_revision": principles}
    if examples:
        out["examples"] = examples
    return out


def to_yaml(data: dict) -> str:
    """YAML text for a constitution dict, keys in the documented order, long text folded."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
