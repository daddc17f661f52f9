"""The Ray jobs of the `tgan` command (parsed in launch/cli.py), as plain functions that print their
result and return the exit code.

`run_train` (`tgan train`, launch/train.py): recipe + dotted overrides -> Ray Train run (local Ray,
RAY_ADDRESS or `ray job submit`) -> evaluation table. The same command starts the run of
train.out_dir or continues it (train.resume=never refuses to).
`run_sweep` (`tgan sweep`, launch/sweep.py): the same plus a sweep spec / grid -> a Ray Tune sweep of such runs."""
from __future__ import annotations

import sys
from pathlib import Path

from tgan.app.recipe import resolve_config


def run_train(config: str, overrides: list[str], *, dry_run: bool = False, resume: bool = False,
              verbose: bool = False) -> int:
    cfg = resolve_config(config, overrides, dry_run=dry_run)
    if isinstance(cfg, int):
        return cfg
    return train_on_ray(cfg, resume=resume, verbose=verbose)


def train_on_ray(cfg, *, resume: bool, verbose: bool) -> int:
    """The driver's whole run (checks, Ray Train fit, evaluation) holding train.out_dir's lock
    (tgan.runlock; cluster.trainer.run also locks an object-storage run directory); the exit status."""
    from tgan import runlock

    out = Path(cfg.train.out_dir).resolve()
    try:
        with runlock.hold(out, "train.out_dir"):  # before Ray is imported: a refusal comes at once
            return _train_on_ray(cfg, out, resume, verbose)
    except runlock.LockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _train_on_ray(cfg, out: Path, resume: bool, verbose: bool) -> int:
    # Imported here so that --dry-run and config errors start no Ray.
    from cluster.ray_env import ClusterError
    from cluster.trainer import evaluate_checkpoint, run
    from tgan import runinfo
    from tgan.app.baseline import ensure_baseline
    from tgan.evaluate import evaluated_files, report_text
    from tgan.train.loop import USER_ERRORS

    eval_dir = out / "eval"
    try:
        ensure_baseline(cfg, lambda base: run(base, verbose=verbose))  # a second Ray Train run, first
        result = run(cfg, resume=resume, verbose=verbose)
        table = evaluate_checkpoint(result.checkpoint, eval_dir)
        summary = runinfo.record_phase(out, "evaluation", table["seconds"])
    except (ClusterError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done: {result.step} steps")
    print(f"checkpoints: {result.run_dir} (last: {Path(result.checkpoint.path).name})")
    print(f"metrics: {out / 'metrics.jsonl'}; times and machine: {out / runinfo.RUN_JSON}")
    print(f"evaluation: {eval_dir} ({evaluated_files(table)}; open index.html)")
    print(f"run: {runinfo.describe(summary)}")
    print(report_text(table), end="")
    return 0


def run_sweep(config: str, overrides: list[str], *, spec_path: str | None = None, grid: list[str] = (),
              metric: str = "val/map", dry_run: bool = False, resume: bool = False) -> int:
    """A Ray Tune sweep of tgan Ray Train runs, as the spec at `spec_path` (or the `grid`) says."""
    from cluster.sweep_spec import Domain, grid_spec, load_spec, parse_grid
    from tgan.config import ConfigError

    try:
        points = parse_grid(grid)
        if spec_path:
            spec = load_spec(spec_path)
            spec.space.update({k: Domain("grid", v) for k, v in points.items()})
        elif points:
            spec = grid_spec(points, metric)
        else:
            raise ConfigError("give a sweep spec (--sweep launch/sweeps/debug.yaml) or at least one --grid KEY=V1,V2")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # recipe < spec's set < command line
    cfg = resolve_config(config, [*spec.overrides, *overrides], dry_run=dry_run)
    if isinstance(cfg, int):
        return cfg
    from cluster.ray_env import ClusterError
    from cluster.sweep import sweep, unfinished_trials
    from cluster.sweep_report import finish
    from tgan.train.loop import USER_ERRORS

    try:
        results, base = sweep(cfg, spec, resume=resume)
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

