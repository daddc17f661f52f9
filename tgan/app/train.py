"""The one-process job: recipe + dotted overrides -> validated Config -> train -> evaluate.

    tgan train-local --config launch/recipes/debug.yaml [--set key=value ...] [--dry-run] [--no-eval]

`tgan train` (cluster/cli.py) runs the same recipe on Ray Train; launch/cli.py parses both.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

from tgan.app.recipe import resolve_config


def run_local(recipe: str, overrides: list[str], *, dry_run: bool = False, evaluate: bool = True) -> int:
    """Train `recipe` with `overrides` in this process, then (unless not `evaluate`) evaluate it;
    prints the result and returns the exit code."""
    cfg = resolve_config(recipe, overrides, dry_run=dry_run)
    if isinstance(cfg, int):
        return cfg
    return train_and_evaluate(cfg, evaluate_after=evaluate)


def train_and_evaluate(cfg, *, evaluate_after: bool = True) -> int:
    """Train `cfg` in this process holding train.out_dir's lock (tgan.runlock), then evaluate; the
    exit status. The first Ctrl-C finishes the step under way, writes a checkpoint and exits 130
    (the same command continues the run); a second one, or one outside training, stops at once."""
    from tgan import runlock

    out = Path(cfg.train.out_dir)
    try:
        with runlock.hold(out, "train.out_dir"):  # before the heavy imports: a refusal comes at once
            return _train_and_evaluate(cfg, out, evaluate_after)
    except runlock.LockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _train_and_evaluate(cfg, out: Path, evaluate_after: bool) -> int:
    # Imported here so that --dry-run and config errors need neither the data nor the model code.
    from tgan import runinfo
    from tgan.app.baseline import ensure_baseline
    from tgan.evaluate import evaluate as evaluate_networks, evaluated_files, report_text
    from tgan.train.checkpoint import best_checkpoint, read_best
    from tgan.train.loop import USER_ERRORS, train

    stop = threading.Event()
    try:
        ensure_baseline(cfg, train)
        with _first_interrupt_sets(stop):
            result = train(cfg, stop=stop)
        if result.interrupted:
            print(f"interrupted (Ctrl-C): checkpoint {result.checkpoint} written at step {result.step} of "
                  f"{cfg.train.steps}; run the same command to continue", file=sys.stderr, flush=True)
            return 130
        table = evaluate_networks(cfg, result.nets, out / "eval") if evaluate_after else None
        summary = runinfo.record_phase(out, "evaluation", table["seconds"]) if table is not None else runinfo.load(out)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C): {out / 'checkpoints'} keeps every checkpoint completed so far; run the same "
              "command to continue", file=sys.stderr, flush=True)
        return 130
    shown = {k: round(v, 4) for k, v in result.scalars.items() if k.startswith(("loss/", "perf/images"))}
    print(f"done: {result.step} steps, checkpoint {result.checkpoint}" + (f", last {shown}" if shown else ""))
    if (best := read_best(out)) is not None:
        print(f"best checkpoint on validation ({best['metric']} {best['value']:.4f} at step {best['step']}): "
              f"{best_checkpoint(out)}")
    print(f"run: {runinfo.describe(summary)} ({out / runinfo.RUN_JSON})")
    if table is not None:
        print(f"evaluation: {out / 'eval'} ({evaluated_files(table)}; open index.html)")
        print(report_text(table), end="")
    return 0


@contextlib.contextmanager
def _first_interrupt_sets(stop: threading.Event) -> Iterator[None]:
    """While training: the first SIGINT (Ctrl-C) sets `stop` (the loop checkpoints and returns), the
    next one raises KeyboardInterrupt as usual. Signals reach the main thread only: elsewhere nothing changes."""
    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
