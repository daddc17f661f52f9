"""tgan.runlock under real concurrent processes: a held lock refuses (naming the holder) or makes a
waiter wait; a killed holder's lock is taken over with a line saying so; the same on S3 (moto)
through the conditional create; and two processes preparing one missing shard directory at once."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tgan import runlock

ROOT = Path(__file__).resolve().parents[2]
HOLDER = textwrap.dedent("""
    import sys
    from tgan.runlock import hold
    with hold(sys.argv[1], "train.out_dir"):
        print("held", flush=True)
        sys.stdin.readline()  # until the test says so (or kills this process)
""")


def start_holder(location) -> subprocess.Popen:
    """A process that holds the lock of `location` until its stdin gets a line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(location)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0


def test_second_process_is_refused_naming_the_holder_then_gets_the_lock_once_released(tmp_path):
    out = tmp_path / "run"
    holder = start_holder(out)
    try:
        with pytest.raises(runlock.LockError) as e:
            with runlock.hold(out, "train.out_dir"):
                pass
        line = str(e.value)
        assert "\n" not in line and f"pid {holder.pid} on host {socket.gethostname()} since " in line
        assert "train.out_dir=" in line and "choose another train.out_dir" in line
    finally:
        release(holder)
    assert not (out / runlock.LOCK_NAME).exists()  # the holder deletes it
    with runlock.hold(out, "train.out_dir"):
        assert json.loads((out / runlock.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not out.exists()  # created for the lock only, so removed again


def test_lock_of_a_killed_process_is_taken_over_with_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = start_holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (out / runlock.LOCK_NAME).is_file()  # left behind, but the kernel dropped its flock
    lines = []
    with runlock.hold(out, "train.out_dir", report=lines.append):
        pass
    assert len(lines) == 1 and f"took over the lock of pid {holder.pid}" in lines[0]
    assert out.is_dir()  # it existed before: kept


def test_waiter_waits_for_the_holder_and_says_so_once(tmp_path):
    holder = start_holder(tmp_path)
    lines, asked = [], threading.Event()
    timer = threading.Timer(1.0, lambda: (asked.set(), release(holder)))
    timer.start()
    with runlock.hold(tmp_path, "shards", wait=True, report=lines.append):
        assert asked.is_set()  # only after the holder was told to let go
    timer.join()
    assert len(lines) == 1 and "being prepared by" in lines[0] and f"pid {holder.pid}" in lines[0]


def test_object_storage_lock_is_a_conditional_create(s3_bucket):
    url = f"{s3_bucket}/runlock"
    holder = start_holder(url)
    try:
        with pytest.raises(runlock.LockError, match=f"pid {holder.pid} on host"):
            with runlock.hold(url, "cluster.storage_path"):
                pass
    finally:
        release(holder)
    with runlock.hold(url, "cluster.storage_path"):
        with pytest.raises(runlock.LockError, match=f"pid {os.getpid()} "):  # a second holder in this process
            with runlock.hold(url, "cluster.storage_path"):
                pass
    # A marker of a dead process of this host is taken over.
    holder = start_holder(url)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    lines = []
    with runlock.hold(url, "cluster.storage_path", report=lines.append):
        pass
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "no longer running" in lines[0]


PREPARE = textwrap.dedent("""
    import sys
    import numpy as np
    from tgan.data.prepare import write_shards
    from tgan.data.sources import array_source
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (240, 8, 8, 1), dtype=np.uint8) for s in ("train", "test")}
    labels = {s: np.arange(240) % 2 for s in ("train", "test")}
    # As tgan.train.shards.ensure_shards does for a missing digits directory.
    index = write_shards(array_source("toy", images, labels, ["a", "b"], image_size=8), sys.argv[1],
                         shard_size=2, progress=False, reuse_complete=True)
    print(index.split("train").count, flush=True)
""")


def test_two_runs_preparing_one_missing_shard_directory_at_once(tmp_path):
    """Finding 7: both found the directory missing; one prepares it, the other waits and uses it
    (without the lock both wrote the same .tmp files and one died renaming a file the other had renamed)."""
    shards = tmp_path / "toy"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", PREPARE, str(shards)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [out.strip() for out, _ in results] == ["240", "240"]
    assert (shards / "index.json").is_file() and not list(shards.glob("*.tmp"))
    assert not (shards / runlock.LOCK_NAME).exists()
