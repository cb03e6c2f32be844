"""`--shard I/N`: a machine's share of a prompt set, and `cai records merge`, which joins the
shards' output folders into one, checked first."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

from cai.foundation.errors import CaiError
from cai.foundation.manifest import MANIFEST, ids_sha256, package_versions
from cai.foundation.records import (
    DATA,
    SKIPPED,
    JsonlWriter,
    atomic_write_text,
    fsync_folder,
    read_jsonl,
)


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


def merge(folders: list[Path], out: Path) -> dict:
    """Join the outputs of `--shard I/N` runs into one folder, checking they belong together.

    The manifests must agree on everything but the shard (`--limit` included), every shard
    0..N-1 must be there and complete (holding exactly the ids its manifest expects), and no id
    may appear twice. The merged folder is built under a temporary name and renamed into place,
    so a failed or killed merge leaves nothing at `out`.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CaiError(f"{out}: already exists and is not empty")
    manifests = []
    for folder in folders:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise CaiError(f"{folder}: no {MANIFEST}; not a cai output folder")
        manifests.append(json.loads(path.read_text()))
    first = manifests[0]
    for folder, m in zip(folders, manifests):
        if m.get("job") != first.get("job"):
            raise CaiError(f"{folder}: a '{m.get('job')}' output, not '{first.get('job')}'")
        a = {k: v for k, v in m["identity"].items() if k != "shard"}
        b = {k: v for k, v in first["identity"].items() if k != "shard"}
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if changed:
            raise CaiError(f"{folder}: differs from {folders[0]} in {', '.join(changed)}")
        if m.get("status") != "complete":
            raise CaiError(f"{folder}: is not complete ({m.get('status')}); rerun its command "
                           "first")
    shards = [m["identity"].get("shard") for m in manifests]
    if any(s is None for s in shards):
        raise CaiError("every folder to merge must come from a --shard I/N run")
    n = {int(s.split("/")[1]) for s in shards}
    if len(n) != 1:
        raise CaiError(f"the folders come from different shard counts: {sorted(n)}")
    n = n.pop()
    have = sorted(int(s.split("/")[0]) for s in shards)
    if have != list(range(n)):
        missing = sorted(set(range(n)) - set(have))
        doubled = sorted({i for i in have if have.count(i) > 1})
        raise CaiError(f"shards of {n}: " + "; ".join(
            ([f"missing {', '.join(f'{i}/{n}' for i in missing)}"] if missing else [])
            + ([f"given twice {', '.join(f'{i}/{n}' for i in doubled)}"] if doubled else [])))
    seen: dict[str, Path] = {}
    data, skipped = [], []
    for folder, m in zip(folders, manifests):
        rows = read_jsonl(Path(folder) / DATA)
        skips = read_jsonl(Path(folder) / SKIPPED)
        ids = {str(r["id"]) for r in rows + skips}
        if len(ids) != m.get("total") or m.get("ids_sha256", ids_sha256(ids)) != ids_sha256(ids):
            raise CaiError(f"{folder}: holds {len(ids)} ids, not the {m.get('total')} ids its "
                           "manifest expects; rerun its command first")
        for r in rows + skips:
            if r["id"] in seen:
                raise CaiError(f"id '{r['id']}' is in both {seen[r['id']]} and {folder}")
            seen[r["id"]] = folder
        data += rows
        skipped += skips
    identity = {**first["identity"], "shard": None}
    totals: dict = {}
    for m in manifests:
        for k, v in m.get("totals", {}).items():
            totals[k] = round(totals.get(k, 0) + v, 4)
    merged = {"job": first["job"], "identity": identity, "config": first.get("config"),
              "versions": package_versions(), "runs": [], "totals": totals,
              "total": len(seen), "ids_sha256": ids_sha256(seen), "status": "complete",
              "merged_from": [str(f) for f in folders]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        with JsonlWriter(tmp / DATA) as w:
            w.write(data)
        if skipped:
            with JsonlWriter(tmp / SKIPPED) as w:
                w.write(skipped)
        atomic_write_text(tmp / MANIFEST, json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
        try:
            os.rename(tmp, out)  # onto nothing, or onto an empty folder
        except OSError:
            raise CaiError(f"{out}: already exists and is not empty") from None
        fsync_folder(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"records": len(data), "skipped": len(skipped), "shards": n}
