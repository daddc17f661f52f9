"""One process at a time per run directory (train.out_dir, a sweep's directory, Ray's run storage)
and per shard directory being prepared. See docs/RUNS.md.

The lock is a file `.tgan.lock` in the directory, holding who took it: {"host", "pid", "since",
"command"}. How it is taken depends on where the directory lives:

- a local (or NFS) directory: `flock` on that file. The kernel drops the lock when its holder dies,
  however it dies, so a lock file left by a killed process is stale by definition; the next taker
  says so in one line. The holder deletes the file when it is done.
- object storage (s3://...): a conditional create (`PUT` with `If-None-Match: *`, s3fs'
  `mode="create"`), which the store refuses while the object exists. A store has no notion of a
  dead process, so a marker is taken over only when it names this host and a pid that is not
  alive here; a marker of a process on another host that died stays until someone deletes it (the
  refusal names the object). Taking over is a delete and a new conditional create: two takers at
  the same instant may both delete, but only one create succeeds.

`hold(..., wait=False)` refuses at once, naming the holder (a second run into one out_dir);
`wait=True` waits for the holder to finish (a second run preparing the same shards then uses them).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from tgan.data import storage

LOCK_NAME = ".tgan.lock"
POLL_S = 0.2


class LockError(RuntimeError):
    """The directory is in use by another process (named in the message), or cannot be made."""


def _record() -> dict:
    command = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)) or "python"
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command[:200]}


def describe(holder: dict) -> str:
    """`pid 123 on host h since 2026-12-08T00:10:00+00:00 (train_local.py --config ...)`."""
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('since', '?')}"
            f" ({holder.get('command', '?')})")


def _parse(data: bytes) -> dict:
    try:
        holder = json.loads(data)
        return holder if isinstance(holder, dict) else {}
    except ValueError:  # empty (its holder died between creating and writing it) or not ours
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def hold(location: str | Path, what: str, *, wait: bool = False,
         report: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> Iterator[None]:
    """Hold the lock of the directory or URL prefix `location` (named `what` in messages, e.g.
    "train.out_dir") until the block ends. Raises LockError naming the holder, or with `wait` waits
    for it (saying so once). A local directory is created if needed and removed again when it is
    still empty at the end (a refused start leaves nothing behind)."""
    if storage.is_url(location):
        with _hold_object(str(location), what, wait, report):
            yield
        return
    directory = Path(location)
    if directory.exists() and not directory.is_dir():
        yield  # not a directory: the caller's own check refuses it with the right words
        return
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the way, no permission, a full disk
        raise LockError(f"{what}={str(location)!r} cannot be created ({e.strerror or e}: {e.filename or location}); "
                        f"choose another {what}") from e
    try:
        with _hold_file(directory / LOCK_NAME, what, location, wait, report):
            yield
    finally:
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                directory.rmdir()


def _refuse_or_wait(what: str, location, holder: dict, wait: bool, waited: bool, report, hint: str = "") -> bool:
    """Raise LockError (no `wait`), else report the wait once and pause; returns the new `waited`."""
    if not wait:
        raise LockError(f"{what}={str(location)!r} is in use by {describe(holder)}: wait for it to finish or "
                        f"choose another {what}{hint}")
    if not waited:
        report(f"{what}={str(location)!r} is being prepared by {describe(holder)}: waiting for it")
    time.sleep(POLL_S)
    return True


@contextlib.contextmanager
def _hold_file(path: Path, what: str, location, wait: bool, report) -> Iterator[None]:
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            try:
                holder = _parse(path.read_bytes())
            except FileNotFoundError:  # released meanwhile
                continue
            waited = _refuse_or_wait(what, location, holder, wait, waited, report)
            continue
        try:  # the previous holder deletes the file when done: a lock on its unlinked inode is no lock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        break
    try:
        stale = _parse(os.pread(fd, 1 << 16, 0))
        if stale:
            report(f"{what}={str(location)!r}: took over the lock of {describe(stale)}, which ended without "
                   "releasing it (killed)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_record()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)  # drops the flock, after the unlink: a waiter then finds no file or a fresh one


@contextlib.contextmanager
def _hold_object(location: str, what: str, wait: bool, report) -> Iterator[None]:
    import fsspec

    fs, prefix = fsspec.core.url_to_fs(location)
    key = f"{prefix.rstrip('/')}/{LOCK_NAME}"
    url = storage.join(location, LOCK_NAME)
    mine = _record()
    waited = False
    while True:
        try:
            fs.pipe_file(key, json.dumps(mine).encode(), mode="create")
            break
        except FileExistsError:
            pass
        except OSError as e:
            raise LockError(f"{what}={location!r}: cannot create the lock {url} ({e})") from e
        try:
            holder = _parse(fs.cat_file(key))
        except FileNotFoundError:  # released meanwhile
            continue
        if holder.get("host") == mine["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
            report(f"{what}={location!r}: took over the lock {url} of {describe(holder)}, which is no longer running")
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(key)
            continue
        hint = f" (if that process is gone, delete {url})" if holder.get("host") != mine["host"] else ""
        waited = _refuse_or_wait(what, location, holder, wait, waited, report, hint)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(key)
