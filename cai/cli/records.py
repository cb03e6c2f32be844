"""`cai records merge`: the folders of `--shard I/N` runs joined into one."""

from __future__ import annotations

from pathlib import Path


def cmd_records_merge(args) -> int:
    from cai.foundation.shards import merge

    stats = merge([Path(f) for f in args.folders], Path(args.out))
    print(f"merged {stats['shards']} shards into {args.out}: {stats['records']} records"
          + (f", {stats['skipped']} skipped" if stats["skipped"] else ""))
    return 0


def add_parser(sub) -> None:
    rec = sub.add_parser("records", help="work with job output folders")
    rec_sub = rec.add_subparsers(dest="action", required=True)
    p = rec_sub.add_parser("merge", help="join the folders of --shard I/N runs into one")
    p.add_argument("folders", nargs="+")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(func=cmd_records_merge)
