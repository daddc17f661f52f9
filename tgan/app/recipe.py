"""What every training command shares: a recipe, its --set overrides and --dry-run, resolved to a Config.

Used by `tgan train-local` (tgan.app.train, one process) and by `tgan train` and `tgan sweep`
(cluster.cli, on Ray), so a recipe and its overrides mean the same on every entry point; the flags
themselves are parsed in launch/cli.py.
"""
from __future__ import annotations

import sys

import yaml

from tgan.config import Config, ConfigError
from tgan.resolve import load_config


def resolve_config(recipe: str, overrides: list[str], *, dry_run: bool = False) -> Config | int:
    """The validated Config of `recipe` with the dotted `overrides` ("loss.alpha=20"), or the exit code
    when there is nothing to train: 0 after `dry_run` printed the config, 2 after a config error was printed."""
    from tgan.app.baseline import baseline_config
    from tgan.eval_inputs import check_eval_inputs

    try:
        cfg = load_config(recipe, overrides)  # with the family's and the miner's checks
        if cfg.eval.baseline_recipe:
            baseline_config(cfg)  # its recipe's mistakes before anything trains
        check_eval_inputs(cfg)  # the baseline run and the Inception weights, loaded before any training
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        print("# " + world_arithmetic(cfg).replace("\n", "\n# "))
        return 0
    return cfg


def world_arithmetic(cfg: Config) -> str:
    """How the per-rank batch sizes add up over cluster.num_workers ranks."""
    from tgan.families import get_family
    from tgan.losses.mining import mining_summary
    from tgan.resolve import mining_dim

    w, d = cfg.cluster.num_workers, cfg.data
    lines = [f"world size: {w} (cluster.num_workers, backend {cfg.cluster.backend}, "
             f"{'GPU' if cfg.cluster.use_gpu else 'CPU'} workers)",
             f"global batch: {w} x {d.batch_size} (data.batch_size) = {w * d.batch_size} unlabelled images per step"]
    if d.has_labels and d.labelled_batch_size > 0:
        lines.append(f"global labelled batch: {w} x {d.labelled_batch_size} (data.labelled_batch_size) = "
                     f"{w * d.labelled_batch_size} labelled images per step (triplets are mined over all of them)")
    lines.append(mining_summary(cfg, mining_dim(cfg)) if get_family(cfg.model.family).mines_triplets
                 else f"triplet mining: none (model.family={cfg.model.family})")
    lines.append(f"images seen: {cfg.train.steps} steps x {w * d.batch_size} = {cfg.train.steps * w * d.batch_size}")
    return "\n".join(lines)
