"""The one-process job: recipe + dotted overrides -> validated Config -> train -> evaluate.

    tgan train-local --config launch/recipes/debug.yaml [--set key=value ...] [--dry-run] [--no-eval]

`tgan train` (cluster/cli.py) runs the same recipe on Ray Train; launch/cli.py parses both.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tgan.app.recipe import resolve_config


def run_local(recipe: str, overrides: list[str], *, dry_run: bool = False, evaluate: bool = True) -> int:
    """Train `recipe` with `overrides` in this process, then (unless not `evaluate`) evaluate it;
    prints the result and returns the exit code."""
    cfg = resolve_config(recipe, overrides, dry_run=dry_run)
    if isinstance(cfg, int):
        return cfg
    # Imported here so that --dry-run and config errors need neither the data nor the model code.
    from tgan import runinfo
    from tgan.evaluate import evaluate as evaluate_networks, evaluated_files, report_text
    from tgan.train.checkpoint import best_checkpoint, read_best
    from tgan.train.loop import USER_ERRORS, train

    out = Path(cfg.train.out_dir)
    try:
        result = train(cfg)
        table = evaluate_networks(cfg, result.nets, out / "eval") if evaluate else None
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = runinfo.record_phase(out, "evaluation", table["seconds"]) if table is not None else runinfo.load(out)
    shown = {k: round(v, 4) for k, v in result.scalars.items() if k.startswith(("loss/", "perf/images"))}
    print(f"done: {result.step} steps, checkpoint {result.checkpoint}, last {shown}")
    if (best := read_best(out)) is not None:
        print(f"best checkpoint on validation ({best['metric']} {best['value']:.4f} at step {best['step']}): "
              f"{best_checkpoint(out)}")
    print(f"run: {runinfo.describe(summary)} ({out / runinfo.RUN_JSON})")
    if table is not None:
        print(f"evaluation: {out / 'eval'} ({evaluated_files(table)}; open index.html)")
        print(report_text(table), end="")
    return 0
