"""A job's output folder: resumable JSONL records, written so that a kill never leaves a broken one.

Every job writes `OUT/data.jsonl` (one JSON object a line, loadable with
`datasets.load_dataset("json", data_files=...)`) and `OUT/manifest.json`
(`cai.foundation.manifest`). Records are appended in batches and fsynced; a restarted job first
cuts off any half-written last line, then skips the ids already on disk, so a kill at any moment
loses at most the batch in flight and never leaves a duplicate or a broken line. Whole files
(a manifest, a summary) are replaced atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from cai.foundation.errors import CaiError

DATA = "data.jsonl"
SKIPPED = "skipped.jsonl"


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
