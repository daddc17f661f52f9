"""What every training command line shares: --config/--set/--dry-run and resolving them to a Config.

Used by launch/train_local.py (tgan.app.train, one process) and by launch/train.py and launch/sweep.py
(cluster.cli, on Ray), so a recipe and its overrides mean the same on every entry point.
"""
from __future__ import annotations

import argparse
import sys

import yaml

from tgan.config import Config, ConfigError, load_config


def recipe_parser(description: str) -> argparse.ArgumentParser:
    """--config, --set and --dry-run: the flags every training entry point takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="recipe, e.g. launch/recipes/debug.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable (e.g. --set loss.alpha=20 --set train.steps=100)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the world-size arithmetic, then exit")
    return p


def resolve_config(args: argparse.Namespace) -> Config | int:
    """The validated Config, or the exit code when there is nothing to train: 0 after --dry-run
    printed the config, 2 after a config error was printed."""
    from tgan.app.baseline import baseline_config
    from tgan.losses.mining import check_mining_memory  # torch, for the miner's own constants
    from tgan.train.checkpoint import baseline_checkpoint

    try:
        cfg = load_config(args.config, args.overrides)
        check_mining_memory(cfg)
        baseline_checkpoint(cfg)
        if cfg.eval.baseline_recipe:
            baseline_config(cfg)  # its recipe's mistakes before anything trains
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        print("# " + world_arithmetic(cfg).replace("\n", "\n# "))
        return 0
    return cfg


def world_arithmetic(cfg: Config) -> str:
    """How the per-rank batch sizes add up over cluster.num_workers ranks."""
    from tgan.losses.mining import mining_summary

    w, d = cfg.cluster.num_workers, cfg.data
    lines = [f"world size: {w} (cluster.num_workers, backend {cfg.cluster.backend}, "
             f"{'GPU' if cfg.cluster.use_gpu else 'CPU'} workers)",
             f"global batch: {w} x {d.batch_size} (data.batch_size) = {w * d.batch_size} unlabelled images per step"]
    if d.has_labels and d.labelled_batch_size > 0:
        lines.append(f"global labelled batch: {w} x {d.labelled_batch_size} (data.labelled_batch_size) = "
                     f"{w * d.labelled_batch_size} labelled images per step (triplets are mined over all of them)")
    lines.append(mining_summary(cfg) or f"triplet mining: none (model.family={cfg.model.family})")
    lines.append(f"images seen: {cfg.train.steps} steps x {w * d.batch_size} = {cfg.train.steps * w * d.batch_size}")
    return "\n".join(lines)
