"""The one-process command line: recipe + dotted overrides -> validated Config -> train -> evaluate.

    python launch/train_local.py --config launch/recipes/debug.yaml [--set key=value ...] [--dry-run]

launch/train.py (cluster/cli.py) runs the same flags on Ray Train (tgan.app.recipe).
"""
from __future__ import annotations

import sys
from pathlib import Path

from tgan.app.recipe import recipe_parser, resolve_config


def main(argv: list[str] | None = None) -> int:
    p = recipe_parser("Train a metric-learning GAN from a YAML recipe in this process, then evaluate it.")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end of training")
    args = p.parse_args(argv)
    cfg = resolve_config(args)
    if isinstance(cfg, int):
        return cfg
    # Imported here so that --dry-run and config errors need neither the data nor the model code.
    from tgan import runinfo
    from tgan.app.baseline import ensure_baseline
    from tgan.eval.run import evaluate, evaluated_files, report_text
    from tgan.train.checkpoint import best_checkpoint, read_best
    from tgan.train.loop import USER_ERRORS, train

    out = Path(cfg.train.out_dir)
    try:
        ensure_baseline(cfg, train)
        result = train(cfg)
        table = None if args.no_eval else evaluate(cfg, result.nets, out / "eval")
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
