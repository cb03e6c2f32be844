"""`cai constitution diff OLD NEW`: what an edit of a constitution changes, section by section.

Principles are matched by id: each one is added, removed, reworded (the changed fields, old and
new text with the changed words marked) or renamed (same text, new id). Examples have no id and
are matched by their prompt. A section whose principles kept their ids but changed order is
reported too: principles are drawn by position (`sample_principles`), so the order changes which
prompt gets which principle. Which pipeline stages the edit reruns is the pipeline's own answer
(`Pipeline.rerun_by_edit`); the command prints both.
"""

from __future__ import annotations

import difflib
import textwrap
from dataclasses import dataclass, field

from cai.constitution.principles import Constitution

#: The text fields compared in each section.
FIELDS = {"critique_revision": ("critique", "revision"), "preference": ("question",),
          "examples": ("response", "critique", "revision", "principle", "critique_request",
                       "revision_request"),
          "preference_examples": ("response_a", "response_b", "answer", "question", "reasoning")}
WIDTH = 100


@dataclass
class Change:
    section: str
    kind: str  # added, removed, reworded, renamed, reordered
    key: str  # the principle's id (the new one when renamed), an example's prompt, or a field
    old: dict = field(default_factory=dict)  # {field: text} of what went (reworded: changed only)
    new: dict = field(default_factory=dict)
    old_key: str = ""  # renamed: the old id


def _entries(c: Constitution, section: str) -> dict[str, dict]:
    """{key: {field: text}} of a section: principles by id, examples by prompt."""
    out = {}
    for entry in getattr(c, section):
        key = entry.prompt if section.endswith("examples") else entry.id
        out[key] = {f: getattr(entry, f) for f in FIELDS[section]}
    return out


def diff(old: Constitution, new: Constitution) -> list[Change]:
    """Every change from `old` to `new`, section by section, in the new file's order."""
    changes = [Change("constitution", "reworded", f, {f: getattr(old, f)}, {f: getattr(new, f)})
               for f in ("name", "description") if getattr(old, f) != getattr(new, f)]
    for section in FIELDS:
        before, after = _entries(old, section), _entries(new, section)
        gone = {k: v for k, v in before.items() if k not in after}
        for key, texts in after.items():
            if key in before:
                changed = [f for f in texts if texts[f] != before[key][f]]
                if changed:
                    changes.append(Change(section, "reworded", key,
                                          {f: before[key][f] for f in changed},
                                          {f: texts[f] for f in changed}))
                continue
            twin = next((k for k, v in gone.items() if v == texts), None)
            if twin is not None and not section.endswith("examples"):
                del gone[twin]
                changes.append(Change(section, "renamed", key, old_key=twin))
            else:
                changes.append(Change(section, "added", key, new=texts))
        changes += [Change(section, "removed", k, old=v) for k, v in gone.items()]
        common = [k for k in before if k in after]
        if common != [k for k in after if k in before]:
            changes.append(Change(section, "reordered", ", ".join(k for k in after
                                                                    if k in before)))
    return changes


def mark_words(old: str, new: str) -> tuple[str, str]:
    """`old` with its removed words as [-...-] and `new` with its added words as {+...+}."""
    a, b = old.split(), new.split()
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            left += a[i1:i2]
            right += b[j1:j2]
            continue
        if i2 > i1:
            left.append("[-" + " ".join(a[i1:i2]) + "-]")
        if j2 > j1:
            right.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(left), " ".join(right)


def _wrap(text: str, indent: str, first: str = "") -> list[str]:
    return textwrap.wrap(" ".join(text.split()) or "(empty)", WIDTH, initial_indent=indent + first,
                         subsequent_indent=indent + " " * len(first), break_on_hyphens=False)


def _label(change: Change) -> str:
    if change.section.endswith("examples"):
        return f'example "{textwrap.shorten(change.key, 60)}"'
    return change.key


def format_diff(changes: list[Change]) -> list[str]:
    """Lines for the terminal: a summary line per section, then each change."""
    lines = []
    for section in ("constitution", *FIELDS):
        mine = [c for c in changes if c.section == section]
        if not mine:
            if section != "constitution":
                lines.append(f"{section}: no changes")
            continue
        counts = {}
        for c in mine:
            counts[c.kind] = counts.get(c.kind, 0) + 1
        lines.append(f"{section}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
        for c in mine:
            if c.kind == "reordered":
                lines += _wrap(c.key, "  ", "order now: ")
            elif c.kind == "renamed":
                lines.append(f"  > {c.old_key} renamed to {c.key} (same text)")
            elif c.kind in ("added", "removed"):
                lines.append(f"  {'+' if c.kind == 'added' else '-'} {_label(c)}")
                for f, text in (c.new or c.old).items():
                    if text:
                        lines += _wrap(text, "      ", f"{f}: ")
            else:
                lines.append(f"  ~ {_label(c)}")
                for f in c.new:
                    before, after = mark_words(c.old[f], c.new[f])
                    lines.append(f"      {f}")
                    lines += _wrap(before, "        ", "- ")
                    lines += _wrap(after, "        ", "+ ")
    return lines
