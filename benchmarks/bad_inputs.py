"""The bad-input matrix of tests/integration/test_bad_inputs.py, tabulated for two versions of the code.

    python benchmarks/bad_inputs.py --baseline 0fe7361 [--out benchmarks/results/bad_inputs.md]

Runs every case against the code at git commit --baseline (exported with `git archive` into a
temporary folder) and against this checkout, each in its own Python process, and writes one table:
per case its outcome before and after (clean, traceback, silent, wrong-message), then the totals.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "tests" / "integration" / "test_bad_inputs.py"
KINDS = ("clean", "traceback", "silent", "wrong-message")


def run_matrix(json_out: Path) -> None:
    """Worker mode: run every case with the tgan on PYTHONPATH; write {case id: [kind, why]}."""
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger().addHandler(logging.NullHandler())  # as under pytest: log records are not on stderr
    spec = importlib.util.spec_from_file_location("bad_inputs_matrix", MATRIX)
    matrix = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(matrix)
    from tgan.config import load_config
    from tgan.train.loop import train
    from tgan.train.shards import ensure_shards

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        shards, run = Path(tmp) / "shards", Path(tmp) / "run"
        ensure_shards(load_config(matrix.DEBUG, [f"data.shards={shards}"]).data)
        train(load_config(matrix.DEBUG, [f"data.shards={shards}", f"train.out_dir={run}", "train.steps=2"]))
        for case in matrix.CASES:
            case_dir = Path(tmp) / "cases" / case.id
            case_dir.mkdir(parents=True)
            r = matrix.outcome(case, matrix.Ctx(case_dir, shards, run))
            results[case.id] = [r.kind, r.why or (r.output.strip().splitlines() or [""])[-1][:160]]
            print(f"{case.id}: {r.kind} {results[case.id][1]}", file=sys.__stderr__, flush=True)
    json_out.write_text(json.dumps(results))


def _measure(code_root: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, __file__, "--worker", f.name], env=env, cwd=code_root, check=True)
        return json.loads(Path(f.name).read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="git commit of the code before the fixes")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bad_inputs.md"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        run_matrix(Path(args.worker))
        return 0
    t0, load = time.time(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as base:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", base], input=archive.stdout, check=True)
        before = _measure(Path(base))
    after = _measure(ROOT)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    lines = ["# Bad-input matrix: before and after", "",
             f"`python benchmarks/bad_inputs.py --baseline {args.baseline}` on {platform.node()} "
             f"({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d %H:%M')}, {time.time() - t0:.0f} s; load average "
             f"(1 min) before the run: {load:.1f}, shared with other jobs. Before = {args.baseline}, after = "
             f"{head.stdout.strip()} (this checkout; uncommitted changes included).", "",
             "Each case runs a real command line in-process (see tests/integration/test_bad_inputs.py). clean: "
             "a nonzero exit with one `error:` line naming the field or file, no traceback, nothing written "
             "(or, for the three inputs that are repaired instead of refused, exit 0 with one note or warning "
             "naming it); silent: accepted (or a bad file left behind); wrong-message: refused, but the line "
             "misses the field/file, there are several lines, or files were written.", "",
             "| totals | tried | " + " | ".join(KINDS) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in KINDS) + " |"]
    for name, res in (("before", before), ("after", after)):
        counts = collections.Counter(kind for kind, _ in res.values())
        lines.append(f"| {name} | {len(res)} | " + " | ".join(str(counts[k]) for k in KINDS) + " |")
    lines += ["", "| case | before | after | after: what is wrong |", "| --- | --- | --- | --- |"]
    for case, (kind, why) in after.items():
        old = before.get(case, ["-", ""])[0]
        lines.append(f"| {case} | {old} | {kind} | {'' if kind == 'clean' else why.replace('|', '/')} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
