"""What jobs read: prompt sets, users' JSONL files, datasets and training rows.

Prompt sets are `.jsonl` (`id`, `prompt`), `.txt` (one prompt a line) or `dataset:NAME_OR_DIR`
(through `datasets.load_dataset`). A user's file is checked whole before anything runs: every
problem is collected and reported with its file and line. `source_id` is what stands for an
input in a job's identity.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from cai.foundation.errors import CaiError
from cai.foundation.manifest import file_sha256, text_sha256
from cai.foundation.records import DATA
from cai.foundation.shards import select_shard


def load_prompts(spec: str, column: str = "prompt", split: str = "train") -> list[dict]:
    """Prompts as `[{"id", "prompt", ...}]` from `.jsonl`, `.txt` or `dataset:NAME_OR_DIR`.

    `.jsonl` lines need `id` and `prompt` (other fields are kept); `.txt` has one prompt a line,
    ids `<stem>-<line>`; `dataset:` goes through `datasets.load_dataset` (a hub name or a local
    folder) and reads `column`, with ids from an `id` column when there is one.
    Every problem is collected and reported with its file and line.
    """
    if spec.startswith("dataset:"):
        return _from_datasets(spec[len("dataset:"):], column, split)
    path = Path(spec)
    if path.suffix not in (".txt", ".jsonl", ".json"):
        if not path.is_file():
            raise CaiError(f"{path}: prompt file not found")
        raise CaiError(f"{path}: unknown prompt file type '{path.suffix}' "
                       "(use .jsonl with id/prompt, .txt one per line, or dataset:NAME)")
    if path.suffix == ".txt":
        lines = _read_lines(path, "prompt")
        items = [(n, {"id": f"{path.stem}-{n}", "prompt": line.strip()})
                 for n, line in enumerate(lines, 1) if line.strip()]
        return unique_ids(path, items, [], "prompts")
    rows, problems = jsonl_objects(path, "prompt", "a JSON object with 'id' and 'prompt'")
    items = []
    for n, obj in rows:
        for key in ("id", "prompt"):
            if key not in obj:
                problems.append((n, f"{path}:{n}: missing '{key}'"))
            elif not isinstance(obj[key], (str, int)) or isinstance(obj[key], bool) or \
                    (key == "prompt" and not isinstance(obj[key], str)):
                problems.append((n, f"{path}:{n}: '{key}' must be text"))
        if isinstance(obj.get("prompt"), str) and not obj["prompt"].strip():
            problems.append((n, f"{path}:{n}: empty prompt"))
        if "id" in obj and "prompt" in obj:
            obj["id"] = str(obj["id"])
            items.append((n, obj))
    return unique_ids(path, items, problems, "prompts")


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise CaiError(f"{path}: {what} file not found")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise CaiError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def jsonl_objects(path: Path, what: str, expected: str = "a JSON object"
                  ) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """(line number, object) for each non-blank line of a user's .jsonl file, and the problems
    found, each `(line, "file:line: what is wrong")`, so they can all be reported at once."""
    rows, problems = [], []
    for n, line in enumerate(_read_lines(path, what), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append((n, f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            problems.append((n, f"{path}:{n}: expected {expected}"))
            continue
        bad = unpaired_surrogate(obj)
        if bad:
            problems.append((n, f"{path}:{n}: not valid Unicode (an unpaired surrogate, {bad})"))
            continue
        rows.append((n, obj))
    return rows, problems


def objects_with_ids(path: Path, what: str) -> tuple[list[tuple[int, dict]],
                                                     list[tuple[int, str]]]:
    """`jsonl_objects`, keeping the rows with an `id` (made text) and adding a problem for each
    row without one: the start of every loader of a user's records."""
    rows, problems = jsonl_objects(path, what)
    kept = []
    for n, obj in rows:
        if "id" not in obj or isinstance(obj["id"], (bool, dict, list)):
            problems.append((n, f"{path}:{n}: missing 'id' (text)"))
        else:
            kept.append((n, {**obj, "id": str(obj["id"])}))
    return kept, problems


def unique_ids(path: Path, items: list[tuple[int, dict]], problems: list[tuple[int, str]],
               what: str = "rows") -> list[dict]:
    """The items' objects, after adding duplicate ids to `problems`; raises with every problem
    (the first 20, in line order) if there is any, or if there are no items."""
    seen: dict[str, int] = {}
    for n, obj in items:
        if obj["id"] in seen:
            problems.append((n, f"{path}:{n}: duplicate id '{obj['id']}' "
                                f"(first at line {seen[obj['id']]})"))
        seen.setdefault(obj["id"], n)
    if problems:
        texts = [text for _, text in sorted(problems)]
        more = f"\n... and {len(texts) - 20} more" if len(texts) > 20 else ""
        raise CaiError("\n".join(texts[:20]) + more)
    if not items:
        raise CaiError(f"{path}: no {what} in the file")
    return [obj for _, obj in items]


def require_text(obj: dict, key: str, path, n: int, problems: list, allow_empty: bool = False
                 ) -> bool:
    """Whether `obj[key]` is (non-empty) text; if not, a `file:line` problem is added."""
    value = obj.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        problems.append((n, f"{path}:{n}: '{key}' must be "
                            + ("text" if allow_empty else "non-empty text")))
        return False
    return True


def unpaired_surrogate(value) -> str | None:
    """The first text in `value` (a JSON value) holding a lone UTF-16 surrogate, described; or
    None. JSON's "\\ud800" decodes to one, which no tokenizer or file encoding accepts, so it
    would fail only after a model has run."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"\\u{ord(value[e.start]):04x} at character {e.start + 1}"
        return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) \
        else ()
    for item in items:
        found = unpaired_surrogate(item)
        if found:
            return found
    return None


def load_dataset(name: str, split: str = "train"):
    """`datasets.load_dataset(name, split=split)` (a hub name or a local folder), or one line
    saying why not."""
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises many types for a missing name or offline hub
        raise CaiError(f"dataset:{name}: cannot load ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _from_datasets(name: str, column: str, split: str) -> list[dict]:
    ds = load_dataset(name, split)
    if column not in ds.column_names:
        raise CaiError(f"dataset:{name}: no column '{column}' (columns: "
                       f"{', '.join(ds.column_names)})")
    out, seen = [], set()
    for i, row in enumerate(ds):
        pid = str(row["id"]) if "id" in row else f"{Path(name).name}-{i}"
        text = row[column]
        if not isinstance(text, str) or not text.strip():
            raise CaiError(f"dataset:{name}: row {i} has an empty or non-text '{column}'")
        if pid in seen:
            raise CaiError(f"dataset:{name}: row {i}: duplicate id '{pid}'")
        seen.add(pid)
        out.append({"id": pid, "prompt": text})
    return out


def helpful_sample(specs: str | list[str] | None, ratio: float, n_prompts: int, *,
                   column: str = "prompt", shard: str | None = None, seed: int = 0,
                   kind: str = "helpful") -> list[dict]:
    """`ratio` x `n_prompts` ordinary prompts drawn (seeded) from the pooled prompt sets
    `specs` (one or more), ids prefixed `helpful:` so they never collide with the red-team ids:
    the helpfulness share that SL-CAI and RL-CAI data mix in (Bai et al. 2022, sections 3 and
    4). An id found in two of the sets is an error. Another `kind` (`cai label`'s "refusal"
    prompts) draws its own share the same way, with its own prefix, kind and seed."""
    specs = [specs] if isinstance(specs, str) else list(specs or [])
    if not specs or not ratio:
        return []
    found, where = [], {}
    for spec in specs:
        for it in select_shard(load_prompts(spec, column), shard):
            if it["id"] in where:
                raise CaiError(f"{spec}: id '{it['id']}' is also in {where[it['id']]} "
                               f"({kind} prompt sets are pooled: ids must differ)")
            where[it["id"]] = spec
            found.append(it)
    drawn = random.Random(f"{seed}:{kind}").sample(found, min(len(found),
                                                              round(ratio * n_prompts)))
    return [{"id": f"{kind}:{it['id']}", "prompt": it["prompt"], "kind": kind}
            for it in drawn]


def read_rows(spec: str, split: str = "train", expected: str = "a .jsonl or a job's folder"
              ) -> list[tuple[str, dict]]:
    """(where, row) pairs of a .jsonl file, a job's output folder (its data.jsonl) or
    dataset:NAME_OR_DIR; `where` is `file:line` (or `dataset:NAME row i`) for error messages."""
    if spec.startswith("dataset:"):
        ds = load_dataset(spec[len("dataset:"):], split)
        return [(f"{spec} row {i}", row) for i, row in enumerate(ds)]
    path = Path(spec)
    if path.is_dir():
        path = path / DATA
    if not path.is_file():
        raise CaiError(f"{spec}: no such file (expected {expected})")
    rows, problems = jsonl_objects(path, "data")
    if problems:
        raise CaiError(problems[0][1])
    return [(f"{path}:{n}", row) for n, row in rows]


def source_id(spec: str, column: str = "prompt") -> str:
    """What stands for an input in a job's identity: a file's sha256, or for `dataset:NAME` the
    sha256 of the prompts read from it (ids and `column` texts), so an edited dataset under the
    same name is noticed."""
    if spec.startswith("dataset:"):
        rows = load_prompts(spec, column)
        return text_sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False))
    return file_sha256(spec)


def sources_id(specs: str | list[str], column: str = "prompt") -> str | list[str]:
    """`source_id` of one prompt set, or the list of them for several."""
    if isinstance(specs, str):
        return source_id(specs, column)
    ids = [source_id(s, column) for s in specs]
    return ids[0] if len(ids) == 1 else ids
