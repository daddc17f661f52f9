"""The `tgan` command: every command line of the project is parsed here, and only here.

    tgan train       --config RECIPE [--set k=v ...] [--resume] [--dry-run] [--verbose]   # on Ray Train
    tgan train-local --config RECIPE [--set k=v ...] [--dry-run] [--no-eval]             # one process, no Ray
    tgan sweep       --config RECIPE (--sweep SPEC | --grid k=v1,v2) [--set k=v ...] [--resume]
    tgan evaluate    CHECKPOINT [--set eval.k=v ...] [--out DIR]
    tgan prepare     --dataset NAME --out DIR_OR_URL [--root DIR] ...

`python launch/train.py ...` is `tgan train ...` (likewise sweep.py, train_local.py, evaluate.py,
prepare_data.py), so `ray job submit -- python launch/train.py` works on any image that installed the
project. The parsers hold no logic: each subcommand hands its flags to one plain function of cluster/
(the Ray jobs) or tgan/app/ (one process), which prints its result and returns the exit code.

This module lives in launch/, above cluster/ and tgan/, because it is the one place that knows every
entry point; cluster/ and tgan/ stay importable without argparse (docs/CONTRIBUTING.md).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tgan.data.sources import DATASETS, DEFAULT_SHARD_SIZE, DEFAULT_SIZE  # no torch: --help stays fast


def _flags() -> dict[str, argparse.ArgumentParser]:
    """The shared flags, each defined once; a subcommand takes the ones it names as argparse parents."""
    flags = {name: argparse.ArgumentParser(add_help=False) for name in ("config", "set", "dry_run", "verbose")}
    flags["config"].add_argument("--config", required=True, help="recipe, e.g. launch/recipes/debug.yaml")
    flags["set"].add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="dotted override, repeatable; the value is YAML (e.g. --set loss.alpha=20 --set train.steps=100)")
    flags["dry_run"].add_argument("--dry-run", action="store_true",
                                  help="print the resolved config and the world-size arithmetic, then exit")
    flags["verbose"].add_argument("--verbose", action="store_true",
                                  help="also show Ray Train's own INFO logs (each report's metrics dict, each checkpoint)")
    return flags


def _train(args: argparse.Namespace) -> int:
    from cluster.cli import run_train

    return run_train(args.config, args.overrides, dry_run=args.dry_run, resume=args.resume, verbose=args.verbose)


def _train_local(args: argparse.Namespace) -> int:
    from tgan.app.train import run_local

    return run_local(args.config, args.overrides, dry_run=args.dry_run, evaluate=not args.no_eval)


def _sweep(args: argparse.Namespace) -> int:
    from cluster.cli import run_sweep

    return run_sweep(args.config, args.overrides, spec_path=args.sweep, grid=args.grid, metric=args.metric,
                     dry_run=args.dry_run, resume=args.resume)


def _evaluate(args: argparse.Namespace) -> int:
    from tgan.app.evaluate import run_evaluate

    return run_evaluate(args.checkpoint, args.overrides, out=args.out)


def _prepare(args: argparse.Namespace) -> int:
    from tgan.app.prepare import run_prepare

    return run_prepare(args.dataset, args.out, root=args.root, download=args.download, shard_size=args.shard_size,
                       image_size=args.image_size, svhn_extra=args.svhn_extra, progress=not args.no_progress)


def parser() -> argparse.ArgumentParser:
    flags = _flags()
    recipe = [flags["config"], flags["set"], flags["dry_run"]]
    top = argparse.ArgumentParser(prog="tgan", description="Metric-learning GANs on Ray Train: train, sweep, "
                                                           "evaluate and prepare data.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "train", parents=[*recipe, flags["verbose"]], help="train a recipe on Ray Train, then evaluate it",
        description="Train a metric-learning GAN from a YAML recipe on Ray Train, then evaluate it. Joins the "
                    "cluster of RAY_ADDRESS or `ray job submit`, else starts a local Ray in this process. The "
                    "same command starts the run of train.out_dir or continues it.")
    p.add_argument("--resume", action="store_true",
                   help="fail unless train.out_dir holds a run to continue (without it, an existing run is "
                        "continued and a new one started)")
    p.set_defaults(run=_train)

    p = commands.add_parser(
        "train-local", parents=recipe, help="train a recipe in this process (no Ray), then evaluate it",
        description="Train a metric-learning GAN from a YAML recipe in this process, then evaluate it.")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end of training")
    p.set_defaults(run=_train_local)

    p = commands.add_parser(
        "sweep", parents=recipe, help="sweep config fields with Ray Tune",
        description="Sweep config fields with Ray Tune: one Ray Train run per trial, compared on live "
                    "validation metrics; the best trial is evaluated on test once. Writes sweep.csv, sweep.md "
                    "and plots/ into train.out_dir and prints the table best first.")
    p.add_argument("--sweep", metavar="SPEC", help="sweep spec, e.g. launch/sweeps/debug.yaml (see cluster/sweep_spec.py)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="shortcut: a grid over one field, repeatable (e.g. --grid loss.alpha=0.2,2,20); added "
                        "to the spec's space, or a fifo grid sweep on --metric without --sweep")
    p.add_argument("--metric", default="val/map", help="with --grid alone: the validation metric to rank on")
    p.add_argument("--resume", action="store_true",
                   help="finish the interrupted sweep in train.out_dir: unfinished trials continue from "
                        "their checkpoints, finished ones are kept")
    p.set_defaults(run=_sweep)

    p = commands.add_parser(
        "evaluate", parents=[flags["set"]], help="evaluate a checkpoint and print its table",
        description="Evaluate a checkpoint: k-NN accuracy, mAP and a linear probe beside random-init and "
                    "raw-pixel baselines, plus pictures. --set may change only eval.*, data.* and "
                    "train.device (the networks and their config come from the checkpoint).")
    p.add_argument("checkpoint", help="checkpoint directory (runs/<name>/checkpoints/step_...) or a run "
                                      "directory (its newest checkpoint is used)")
    p.add_argument("--out", help="output directory (default: <run directory>/eval/<checkpoint name>)")
    p.set_defaults(run=_evaluate)

    p = commands.add_parser(
        "prepare", help="turn a dataset into WebDataset shards",
        description="Turn a dataset into WebDataset shards: train-*.tar, test-*.tar and index.json. Rerunning "
                    "is safe: complete shards (checked by sha256) are kept, the rest rewritten. See docs/DATA.md.")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", help="directory holding the dataset's files (not needed for digits)")
    p.add_argument("--out", required=True, help="output directory or URL prefix (s3://, gs://) for the shards and index.json")
    p.add_argument("--download", action="store_true", help="let torchvision download missing files")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="samples per shard")
    p.add_argument("--image-size", type=int, help=f"side in pixels (defaults: {DEFAULT_SIZE})")
    p.add_argument("--svhn-extra", action="store_true", help="SVHN: append the 531,131 'extra' images to train")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_prepare)
    return top


def main(argv: list[str] | None = None) -> int:
    """`tgan COMMAND ...`: parse, then run the command's function; returns its exit code."""
    args = parser().parse_args(argv)
    return args.run(args)


def command(name: str) -> Callable[[list[str] | None], int]:
    """The main() of launch/<script>.py: `tgan <name>` with the script's own arguments."""
    def script_main(argv: list[str] | None = None) -> int:
        return main([name, *(sys.argv[1:] if argv is None else argv)])
    return script_main


if __name__ == "__main__":
    sys.exit(main())
