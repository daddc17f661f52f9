"""The one-process command line: recipe + dotted overrides -> validated Config -> train (or --dry-run).

    python -m tgan.train.cli --config launch/recipes/debug.yaml [--set key=value ...] [--dry-run]

launch/train.py runs the same flags on Ray Train (cluster/cli.py), reusing `world_arithmetic`.
"""
from __future__ import annotations

import argparse
import sys

import yaml

from tgan.config import Config, ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a metric-learning GAN from a YAML recipe.")
    p.add_argument("--config", required=True, help="recipe, e.g. launch/recipes/debug.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable (e.g. --set loss.alpha=20 --set train.steps=100)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the world-size arithmetic, then exit")
    return p.parse_args(argv)


def world_arithmetic(cfg: Config) -> str:
    """How the per-rank batch sizes add up over cluster.num_workers ranks."""
    w, d = cfg.cluster.num_workers, cfg.data
    lines = [f"world size: {w} (cluster.num_workers, backend {cfg.cluster.backend}, "
             f"{'GPU' if cfg.cluster.use_gpu else 'CPU'} workers)",
             f"global batch: {w} x {d.batch_size} (data.batch_size) = {w * d.batch_size} unlabelled images per step"]
    if d.has_labels and d.labelled_batch_size > 0:
        lines.append(f"global labelled batch: {w} x {d.labelled_batch_size} (data.labelled_batch_size) = "
                     f"{w * d.labelled_batch_size} labelled images per step (triplets are mined over all of them)")
    lines.append(f"images seen: {cfg.train.steps} steps x {w * d.batch_size} = {cfg.train.steps * w * d.batch_size}")
    return "\n".join(lines)


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
    # Imported here so that --dry-run and config errors need neither the data nor the model code.
    from tgan.data.index import DataError
    from tgan.train.loop import NonFiniteError, train

    try:
        result = train(cfg)
    except (ConfigError, DataError, FileNotFoundError, NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    shown = {k: round(v, 4) for k, v in result.scalars.items() if k.startswith(("loss/", "perf/images"))}
    print(f"done: {result.step} steps, checkpoint {result.checkpoint}, last {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
