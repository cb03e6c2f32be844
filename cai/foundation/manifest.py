"""`OUT/manifest.json`: what produced a folder's records, so a resume never mixes two runs.

A manifest holds the job's identity (hashes of its inputs, the models' fingerprints, engine and
sampling settings), its resolved config, the package versions and each run's stats. URL
credentials never reach it (`redact`): users share these files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import re
import time
from pathlib import Path

from cai.foundation.errors import CaiError
from cai.foundation.records import atomic_write_text

MANIFEST = "manifest.json"


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("cai", "torch", "transformers", "peft", "datasets", "vllm"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


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
