"""The one-process command line: recipe + dotted overrides -> validated Config -> train -> evaluate.

    python -m tgan.train.cli --config launch/recipes/debug.yaml [--set key=value ...] [--dry-run]

launch/train.py (cluster/cli.py) runs the same flags on Ray Train: both build their parser with
`recipe_parser` and resolve the config (or print it for --dry-run) with `resolve_config`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    try:
        cfg = load_config(args.config, args.overrides)
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
    p = recipe_parser("Train a metric-learning GAN from a YAML recipe in this process, then evaluate it.")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end of training")
    args = p.parse_args(argv)
    cfg = resolve_config(args)
    if isinstance(cfg, int):
        return cfg
    # Imported here so that --dry-run and config errors need neither the data nor the model code.
    from tgan.eval.run import evaluate, markdown_table
    from tgan.train.loop import USER_ERRORS, train

    try:
        result = train(cfg)
        table = None if args.no_eval else evaluate(cfg, result.nets, Path(cfg.train.out_dir) / "eval")
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    shown = {k: round(v, 4) for k, v in result.scalars.items() if k.startswith(("loss/", "perf/images"))}
    print(f"done: {result.step} steps, checkpoint {result.checkpoint}, last {shown}")
    if table is not None:
        print(f"evaluation: {Path(cfg.train.out_dir) / 'eval'} (eval.json, eval.md, pictures)")
        print(markdown_table(table) if table["rows"] else table["note"], end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
