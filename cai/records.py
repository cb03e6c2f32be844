"""Datasets on disk: prompt files in, resumable JSONL records and a manifest out.

Every job writes `OUT/data.jsonl` (one JSON object a line, loadable with
`datasets.load_dataset("json", data_files=...)`) and `OUT/manifest.json`. Records are appended
in batches and fsynced; a restarted job first cuts off any half-written last line, then skips
the ids already on disk, so a kill at any moment loses at most the batch in flight and never
leaves a duplicate or a broken line.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import random
import re
import tempfile
import time
import zlib
from pathlib import Path

from cai.errors import CaiError

DATA = "data.jsonl"
SKIPPED = "skipped.jsonl"
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------------------------
# Prompt sets


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
                   column: str = "prompt", shard: str | None = None, seed: int = 0
                   ) -> list[dict]:
    """`ratio` x `n_prompts` ordinary prompts drawn (seeded) from the pooled prompt sets
    `specs` (one or more), ids prefixed `helpful:` so they never collide with the red-team ids:
    the helpfulness share that SL-CAI and RL-CAI data mix in (Bai et al. 2022, sections 3 and
    4). An id found in two of the sets is an error."""
    specs = [specs] if isinstance(specs, str) else list(specs or [])
    if not specs or not ratio:
        return []
    found, where = [], {}
    for spec in specs:
        for it in select_shard(load_prompts(spec, column), shard):
            if it["id"] in where:
                raise CaiError(f"{spec}: id '{it['id']}' is also in {where[it['id']]} "
                               "(helpful prompt sets are pooled: ids must differ)")
            where[it["id"]] = spec
            found.append(it)
    drawn = random.Random(f"{seed}:helpful").sample(found, min(len(found),
                                                               round(ratio * n_prompts)))
    return [{"id": f"helpful:{it['id']}", "prompt": it["prompt"], "kind": "helpful"}
            for it in drawn]


def sources_id(specs: str | list[str], column: str = "prompt") -> str | list[str]:
    """`source_id` of one prompt set, or the list of them for several."""
    if isinstance(specs, str):
        return source_id(specs, column)
    ids = [source_id(s, column) for s in specs]
    return ids[0] if len(ids) == 1 else ids


def select_shard(items: list[dict], shard: str | None) -> list[dict]:
    """The deterministic part `I/N` (0-based I) of `items`, chosen by a hash of each id.

    Hashing ids (not positions) keeps each prompt in the same shard when the file grows.
    """
    if not shard:
        return items
    try:
        i, n = (int(x) for x in shard.split("/"))
        if not (n >= 1 and 0 <= i < n):
            raise ValueError
    except ValueError:
        raise CaiError(f"--shard '{shard}': expected I/N with 0 <= I < N, e.g. 0/4") from None
    return [it for it in items if zlib.crc32(it["id"].encode()) % n == i]


# --------------------------------------------------------------------------------------------
# Output records


def read_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """All complete records of a JSONL file. With `repair`, a torn last line is cut off on disk.

    A line is complete when it ends in a newline and parses; only the last line can be torn,
    since writes are whole lines appended in order.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    records, good_end, start = [], 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            break
        line = data[start:end]
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if end + 1 < len(data):  # a bad line in the middle is not ours to drop
                    line_no = data[:start].count(b"\n") + 1
                    raise CaiError(f"{path}:{line_no}: not valid JSON; fix or remove the line "
                                   "before resuming") from None
                break
        good_end = start = end + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def json_line(record: dict) -> str:
    """One record as a JSONL line (UTF-8 text kept as is)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


class JsonlWriter:
    """Appends whole lines and fsyncs after each batch."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        self.file.write("".join(json_line(r) for r in records))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def done_ids(out: Path) -> set[str]:
    """Ids already written (records and recorded skips), repairing a torn last line first."""
    ids = set()
    for name in (DATA, SKIPPED):
        ids.update(str(r["id"]) for r in read_jsonl(out / name, repair=True))
    return ids


# --------------------------------------------------------------------------------------------
# Manifest


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_id(spec: str, column: str = "prompt") -> str:
    """What stands for an input in a job's identity: a file's sha256, or for `dataset:NAME` the
    sha256 of the prompts read from it (ids and `column` texts), so an edited dataset under the
    same name is noticed."""
    if spec.startswith("dataset:"):
        rows = load_prompts(spec, column)
        return text_sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False))
    return file_sha256(spec)


def ids_sha256(ids) -> str:
    """One hash of a set of record ids: what a manifest expects its folder to hold."""
    return text_sha256("\n".join(sorted(ids)))


_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(value):
    """`value` (text, or lists and mappings of it) without the `user:password@` of any URL in it:
    what goes into manifests and stage files, which users share."""
    if isinstance(value, str):
        return _CREDENTIALS.sub("", value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("cai", "torch", "transformers", "peft", "datasets", "vllm"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


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


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` all at once: a kill or a power cut leaves the old file or the
    new, never half. The text goes to a temporary file of a unique name in the same folder, is
    fsynced, renamed over `path`, and the folder is fsynced so the rename itself is on disk."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Put a folder's entries (a rename, a new file) on disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Manifest:
    """`OUT/manifest.json`: what produced the records, so resuming mixes no two different runs.

    `identity` holds everything that determines the records (inputs' hashes, models'
    fingerprints, engine and sampling settings); a rerun into the same folder must match it, key
    by key. Keys in `GROWS` choose how many inputs the folder covers, not what a record holds:
    they may change on a rerun (a larger `--limit` adds to the folder), and `merge` compares them.
    URL credentials never reach the file (`redact`).
    """

    GROWS = ("limit",)

    def __init__(self, out: Path, job: str, identity: dict, config: dict):
        self.path = out / MANIFEST
        identity, config = redact(identity), redact(config)
        self.data = {"job": job, "identity": identity, "config": config,
                     "versions": package_versions(), "runs": []}
        self.expected: set[str] | None = None
        if not self.path.exists():
            found = sorted(p.name for p in out.glob("*.jsonl"))
            if found:
                raise CaiError(f"{out}: holds {', '.join(found)} but no {MANIFEST}, so what "
                               "made them is unknown; use another --out folder to start over")
        else:
            try:
                old = json.loads(self.path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise CaiError(f"{self.path}: not valid JSON; use another --out folder") from None
            if old.get("job") != job:
                raise CaiError(f"{out}: holds the output of 'cai {old.get('job')}', not '{job}'; "
                               "use another --out")
            before = old.get("identity", {})
            changed = sorted(k for k in set(identity) | set(before)
                             if identity.get(k) != before.get(k) and k not in self.GROWS)
            if changed:
                raise CaiError(f"{out}: holds a run with different {', '.join(changed)}; "
                               "use another --out folder (or delete this one) to start over")
            self.data["runs"] = old.get("runs", [])
            self.data["totals"] = old.get("totals", {})
        self.started = time.time()

    def expect(self, ids) -> None:
        """The ids (records and skips) this run must leave in the folder for it to be complete;
        kept in the manifest as a count and a hash, which `merge` checks."""
        self.expected = set(ids)
        self.data.update(total=len(self.expected), ids_sha256=ids_sha256(self.expected))

    def status(self, done: set[str]) -> str:
        """'complete' when every expected id is done, else 'partial'."""
        return "complete" if self.expected is not None and self.expected <= done else "partial"

    def save(self, **fields) -> None:
        self.data.update(fields)
        atomic_write_text(self.path, json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")

    def add_run(self, **stats) -> None:
        """Record one (possibly resumed) run's stats and add its counters into `totals`."""
        stats = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "wall_seconds": round(time.time() - self.started, 2), **stats}
        self.data["runs"].append(stats)
        totals = self.data.setdefault("totals", {})
        for k, v in stats.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                totals[k] = round(totals.get(k, 0) + v, 4)
        self.save()
