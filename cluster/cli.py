"""launch/train.py: recipe + dotted overrides -> Ray Train run (local Ray, RAY_ADDRESS or `ray job
submit`) -> evaluation table. The flags are the one-process CLI's (tgan.train.cli) plus --resume."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from tgan.config import ConfigError, load_config
from tgan.train.cli import world_arithmetic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a metric-learning GAN from a YAML recipe on Ray Train.")
    p.add_argument("--config", required=True, help="recipe, e.g. launch/recipes/debug.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable (e.g. --set loss.alpha=20 --set cluster.num_workers=4)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the world-size arithmetic, then exit")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped run in train.out_dir from its last checkpoint")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        print("# " + world_arithmetic(cfg).replace("\n", "\n# "))
        return 0
    # Imported here so that --dry-run and config errors start no Ray.
    from cluster.ray_env import ClusterError
    from cluster.trainer import evaluate_checkpoint, run
    from tgan.eval.run import markdown_table
    from tgan.train.loop import NonFiniteError

    try:
        result = run(cfg, resume=args.resume)
    except (ConfigError, ClusterError, FileNotFoundError, NonFiniteError) as e:
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
