"""launch/train.py: recipe + dotted overrides -> Ray Train run (local Ray, RAY_ADDRESS or `ray job
submit`) -> evaluation table. The flags are the one-process CLI's (tgan.app.recipe) plus --resume.
launch/sweep.py (`sweep_main`): the same flags plus --grid -> a Ray Tune sweep of such runs."""
from __future__ import annotations

import sys
from pathlib import Path

from tgan.app.recipe import recipe_parser, resolve_config


def main(argv: list[str] | None = None) -> int:
    p = recipe_parser("Train a metric-learning GAN from a YAML recipe on Ray Train.")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped run in train.out_dir from its last checkpoint")
    args = p.parse_args(argv)
    cfg = resolve_config(args)
    if isinstance(cfg, int):
        return cfg
    # Imported here so that --dry-run and config errors start no Ray.
    from cluster.ray_env import ClusterError
    from cluster.trainer import evaluate_checkpoint, run
    from tgan.eval.run import markdown_table
    from tgan.train.loop import USER_ERRORS

    try:
        result = run(cfg, resume=args.resume)
    except (ClusterError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(cfg.train.out_dir).resolve()
    eval_dir = out / "eval"
    table = evaluate_checkpoint(result.checkpoint, eval_dir)
    print(f"done: {result.step} steps")
    print(f"checkpoints: {out / 'checkpoints'} (Ray's copy: {result.run_dir}; last {result.checkpoint.path})")
    print(f"metrics: {out / 'metrics.jsonl'}")
    print(f"samples and evaluation: {eval_dir} (eval.json, eval.md, pictures)")
    print(markdown_table(table))
    return 0


def sweep_main(argv: list[str] | None = None) -> int:
    """launch/sweep.py: a Ray Tune grid over config fields, one tgan Ray Train run per point."""
    p = recipe_parser("Sweep config fields with Ray Tune: one Ray Train run per grid point, ranked by "
                      "its evaluation.")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", required=True,
                   help="values of one field, repeatable (e.g. --grid loss.alpha=0.2,2,20 "
                        "--grid model.embedding_dim=100,500 --grid data.labelled_fraction=0.01,0.1)")
    p.add_argument("--metric", default="map", help="rank trials by map, knn9 or probe (default map)")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="trials at once (default: as many as the cluster's CPUs hold)")
    args = p.parse_args(argv)
    cfg = resolve_config(args)
    if isinstance(cfg, int):
        return cfg
    from cluster.ray_env import ClusterError
    from cluster.sweep import markdown, parse_grid, sweep
    from tgan.config import ConfigError

    try:
        grid = parse_grid(args.grid)
        trials = sweep(cfg, grid, metric=args.metric, max_concurrent=args.max_concurrent)
    except (ClusterError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    print(f"sweep of {len(trials)} trials in {Path(cfg.train.out_dir).resolve()} (one directory per trial; "
          f"Tune's state in tune/), best {args.metric} first:")
    print(markdown(trials, grid), end="")
    return 0 if all(t.error is None for t in trials) else 1
