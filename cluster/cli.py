"""launch/train.py: recipe + dotted overrides -> Ray Train run (local Ray, RAY_ADDRESS or `ray job
submit`) -> evaluation table. The flags are the one-process CLI's (tgan.app.recipe) plus --resume.
The same command starts the run of train.out_dir or continues it (train.resume=never refuses to).
launch/sweep.py (`sweep_main`): the same flags plus --sweep SPEC / --grid -> a Ray Tune sweep of such runs."""
from __future__ import annotations

import sys
from pathlib import Path

from tgan.app.recipe import recipe_parser, resolve_config


def main(argv: list[str] | None = None) -> int:
    p = recipe_parser("Train a metric-learning GAN from a YAML recipe on Ray Train.")
    p.add_argument("--resume", action="store_true",
                   help="fail unless train.out_dir holds a run to continue (without it, an existing run is "
                        "continued and a new one started)")
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray Train's own INFO logs (each report's metrics dict, each checkpoint)")
    args = p.parse_args(argv)
    cfg = resolve_config(args)
    if isinstance(cfg, int):
        return cfg
    # Imported here so that --dry-run and config errors start no Ray.
    from cluster.ray_env import ClusterError
    from cluster.trainer import evaluate_checkpoint, run
    from tgan import runinfo
    from tgan.app.baseline import ensure_baseline
    from tgan.eval.run import evaluated_files, report_text
    from tgan.train.loop import USER_ERRORS

    try:
        ensure_baseline(cfg, lambda base: run(base, verbose=args.verbose))  # a second Ray Train run, first
        result = run(cfg, resume=args.resume, verbose=args.verbose)
    except (ClusterError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(cfg.train.out_dir).resolve()
    eval_dir = out / "eval"
    table = evaluate_checkpoint(result.checkpoint, eval_dir)
    summary = runinfo.record_phase(out, "evaluation", table["seconds"])
    print(f"done: {result.step} steps")
    print(f"checkpoints: {result.run_dir} (last: {Path(result.checkpoint.path).name})")
    print(f"metrics: {out / 'metrics.jsonl'}; times and machine: {out / runinfo.RUN_JSON}")
    print(f"evaluation: {eval_dir} ({evaluated_files(table)}; open index.html)")
    print(f"run: {runinfo.describe(summary)}")
    print(report_text(table), end="")
    return 0


def sweep_main(argv: list[str] | None = None) -> int:
    """launch/sweep.py: a Ray Tune sweep of tgan Ray Train runs, as a spec (or --grid) says."""
    p = recipe_parser("Sweep config fields with Ray Tune: one Ray Train run per trial, compared on live "
                      "validation metrics; the best trial is evaluated on test once.")
    p.add_argument("--sweep", metavar="SPEC", help="sweep spec, e.g. launch/sweeps/debug.yaml (see cluster/sweep_spec.py)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="shortcut: a grid over one field, repeatable (e.g. --grid loss.alpha=0.2,2,20); added "
                        "to the spec's space, or a fifo grid sweep on --metric without --sweep")
    p.add_argument("--metric", default="val/map", help="with --grid alone: the validation metric to rank on")
    p.add_argument("--resume", action="store_true",
                   help="finish the interrupted sweep in train.out_dir: unfinished trials continue from "
                        "their checkpoints, finished ones are kept")
    args = p.parse_args(argv)
    from cluster.sweep_spec import Domain, grid_spec, load_spec, parse_grid
    from tgan.config import ConfigError

    try:
        grid = parse_grid(args.grid)
        if args.sweep:
            spec = load_spec(args.sweep)
            spec.space.update({k: Domain("grid", v) for k, v in grid.items()})
        elif grid:
            spec = grid_spec(grid, args.metric)
        else:
            raise ConfigError("give a sweep spec (--sweep launch/sweeps/debug.yaml) or at least one --grid KEY=V1,V2")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.overrides = spec.overrides + args.overrides  # recipe < spec's set < command line
    cfg = resolve_config(args)
    if isinstance(cfg, int):
        return cfg
    from cluster.ray_env import ClusterError
    from cluster.sweep import sweep, unfinished_trials
    from cluster.sweep_report import finish
    from tgan.train.loop import USER_ERRORS

    try:
        results, base = sweep(cfg, spec, resume=args.resume)
        unfinished = unfinished_trials(base.train.out_dir)
        if unfinished:  # Ctrl-C (or the driver was stopped): Tune saved its state
            print(f"sweep interrupted with {len(unfinished)} unfinished trial(s) ({', '.join(unfinished)}): "
                  "finish it with the same command plus --resume", file=sys.stderr)
            return 1
        rows = finish(results, base, spec)
    except (ClusterError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    out = Path(base.train.out_dir)
    print(f"sweep of {len(rows)} trials in {out} (trials/<id>: one run each; Tune's state in tune/); "
          f"sweep.csv, sweep.md, plots/; best {spec.metric} first:")
    print((out / "sweep.md").read_text(), end="")
    return 0 if all(r.error is None for r in rows) else 1

