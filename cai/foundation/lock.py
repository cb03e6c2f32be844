"""Exclusive locks, so that two processes never write into one folder at the same time.

A job holds `FOLDER/.cai.lock` (an `fcntl.flock`) for its whole run; a second job on the same
folder stops at once with one line naming the folder and the holder's pid. The operating system
drops a flock when its process ends, however it ends, so a lock left by a killed run never
blocks the next one. Lock files are never deleted: removing one races with its next user.
Where `fcntl` is missing (Windows) the locks do nothing.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from cai.foundation.errors import CaiError

LOCK_FILE = ".cai.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# Folders this process holds until it exits (`keep`), by absolute path.
_kept: dict[str, object] = {}


def acquire(folder: Path):
    """Lock `folder` (created if need be) and write this process's pid into its lock file;
    returns the open lock file (closing it releases the lock). Raises `CaiError` if another
    process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    if fcntl is None:
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise CaiError(f"{folder}: in use by another cai process (pid {pid}); wait for it to "
                       "finish, or use another folder") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


@contextmanager
def hold(folder: Path):
    """`with hold(out):` the job's whole run, with `folder` locked."""
    f = acquire(folder)
    try:
        yield
    finally:
        f.close()


def keep(folder: Path) -> None:
    """Lock `folder` until this process exits (a training run: its process is its run).
    Taking a folder this process already keeps is a no-op."""
    path = Path(folder).absolute()
    held = _kept.get(str(path))
    if held is not None:
        try:
            if os.fstat(held.fileno()).st_ino == os.stat(path / LOCK_FILE).st_ino:
                return
        except OSError:
            pass
        held.close()  # the folder was moved away (a pipeline archive): lock the new one
    _kept[str(path)] = acquire(path)


@contextmanager
def waiting(path: Path):
    """Wait for, then hold, an exclusive lock on the file `path` (created if need be): for work
    that a second process should wait for and then reuse, like converting a model once."""
    if fcntl is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
