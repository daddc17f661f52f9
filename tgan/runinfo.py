"""<out_dir>/run.json: when a run started, how long each phase took, and on what machine.

Phases are appended as they finish, by whoever ran them: the training loop's rank 0 ("data_prep",
"training"), the Ray driver ("ray_fit": connecting, starting the workers, training, shutting down)
and the command lines ("evaluation"). A resumed run appends more entries rather than overwriting,
so the file tells the whole story of the directory:

    {"started": "2026-11-25T14:02:11+00:00", "started_unix": 1795442531.2,
     "machine": {"host": ..., "cpu_count": 2, "load_average": [3.1, 2.8, 2.0], "gpus": [], "torch": ..., "ray": ...},
     "phases": [{"phase": "data_prep", "seconds": 2.1, "host": ...}, {"phase": "training", "seconds": 1510.3,
                 "steps": [0, 3000], "world_size": 2, ...}, ...]}

tgan/ imports no Ray: its version is read from the installed package's metadata.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from tgan.progress import format_duration

RUN_JSON = "run.json"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """This process' machine: host, CPUs, load, GPUs and the versions that change the numbers."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda, "ray": _version("ray"),
            "deepspeed": _version("deepspeed")}


def load(out_dir: str | Path) -> dict:
    path = Path(out_dir) / RUN_JSON
    return json.loads(path.read_text()) if path.is_file() else {}


def record_phase(out_dir: str | Path, phase: str, seconds: float, **details) -> dict:
    """Append a finished phase (its duration, host and `details`) to <out_dir>/run.json, keep the
    earliest phase start as the run's start, and stamp the machine of the first recorder (the
    training loop's rank 0 or the one process). Returns the updated summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = load(out)
    start = time.time() - seconds
    if start < summary.get("started_unix", float("inf")):  # the Ray driver's phase began before the workers'
        summary["started"] = datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="seconds")
        summary["started_unix"] = round(start, 3)
    summary.setdefault("machine", machine())
    summary.setdefault("phases", []).append(
        {"phase": phase, "seconds": round(seconds, 3), "host": socket.gethostname(),
         "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), **details})
    tmp = out / f".{RUN_JSON}.tmp"
    try:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, out / RUN_JSON)  # a reader never sees half a file
    except OSError as e:  # e.g. the disk is full: the run's own error (if any) is what matters
        tmp.unlink(missing_ok=True)
        print(f"note: {out / RUN_JSON} not updated with the {phase} phase ({e.strerror or e})", file=sys.stderr,
              flush=True)
    return summary


ABANDONED = "abandoned"
"""<out_dir>/abandoned/<start>/: the metrics and run info of an attempt that ended before its first
checkpoint, moved away when the directory's next run starts from step 1 (archive_unfinished)."""


def archive_unfinished(out_dir: str | Path) -> Path | None:
    """A fresh start (no checkpoint to continue) in a directory where an earlier attempt left
    metrics.jsonl or run.json: move them to <out_dir>/abandoned/<that attempt's start>/ and say so in
    one line, so that the new run's files begin with it. Returns the archive, or None."""
    out = Path(out_dir)
    found = [out / name for name in ("metrics.jsonl", RUN_JSON) if (out / name).is_file()]
    if not found:
        return None
    started = load(out).get("started") or datetime.fromtimestamp(found[0].stat().st_mtime, timezone.utc).isoformat(
        timespec="seconds")
    archive = out / ABANDONED / started.replace(":", "")
    archive.mkdir(parents=True, exist_ok=True)
    for path in found:
        os.replace(path, archive / path.name)
    print(f"{out}: an earlier attempt (started {started}) ended before its first checkpoint; its "
          f"{' and '.join(p.name for p in found)} moved to {archive}, this run starts at step 1", flush=True)
    return archive


def describe(summary: dict) -> str:
    """One line for the console and the report: phase times (summed over resumes) and the machine."""
    totals: dict[str, float] = {}
    for entry in summary.get("phases", []):
        totals[entry["phase"]] = totals.get(entry["phase"], 0.0) + entry["seconds"]
    times = ", ".join(f"{name.replace('_', ' ')} {format_duration(s)}" for name, s in totals.items())
    m = summary.get("machine", {})
    gpus = ", ".join(m.get("gpus") or []) or "no GPU"
    load_avg = " ".join(f"{x:g}" for x in m.get("load_average", []))
    return (f"started {summary.get('started', '?')}; {times or 'no phase finished yet'}; on {m.get('host', '?')} "
            f"({m.get('cpu_count', '?')} CPUs, load {load_avg or '?'} at start, {gpus}; torch {m.get('torch', '?')}, "
            f"ray {m.get('ray') or '-'})")
