"""launch/train.py: recipe + dotted overrides -> Ray Train run (local Ray, RAY_ADDRESS or `ray job
submit`) -> evaluation table. The flags are the one-process CLI's (tgan.train.cli) plus --resume."""
from __future__ import annotations

import sys
from pathlib import Path

from tgan.train.cli import recipe_parser, resolve_config


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
    from cluster.trainer import USER_ERRORS, evaluate_checkpoint, run
    from tgan.eval.run import markdown_table

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
