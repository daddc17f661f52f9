"""Ray Tune sweeps of tgan runs: a grid over any config fields (alpha, K, the labelled fraction...).

Ray Train V2's pattern for Tune: every trial is a small driver function (`_trial`) that builds the
trial's config, launches one full tgan Ray Train run (`cluster.trainer.run`: DDP or DeepSpeed over
cluster.num_workers workers) and evaluates its last checkpoint; it reports the evaluation to Tune
once, at the end. The trials are compared on the evaluation (mAP, 9-NN, linear probe of the
model's first feature set), not on GAN losses, which say little about feature quality. Schedulers
that stop trials early (ASHA) would need intermediate reports and are not wired in.

Each trial writes into <train.out_dir>/<trial tag> (its own checkpoints, metrics.jsonl, eval/);
Tune's own state goes to <train.out_dir>/tune. A trial's driver holds no CPU of its own, so its
workers get the cluster's CPUs; `max_concurrent` trials run side by side.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tgan.config import Config, ConfigError, apply_overrides, config_from_dict

METRICS = {"map": "mAP", "knn9": "9-NN accuracy", "probe": "linear-probe accuracy"}


def parse_grid(items: list[str]) -> dict[str, list]:
    """["loss.alpha=0.2,2,20", "model.embedding_dim=100,500"] -> {"loss.alpha": [0.2, 2, 20], ...}."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
        if not sep or not key.strip() or not values:
            raise ConfigError(f"--grid {item!r} is not of the form section.field=v1,v2,... (e.g. --grid loss.alpha=0.2,2,20)")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice: list all its values in one --grid")
        grid[key.strip()] = values
    return grid


def trial_config(base: Config, point: dict[str, Any]) -> Config:
    """`base` with the grid point's values and its own train.out_dir (<out_dir>/<tag>), validated.

    The two exclusive ways of choosing the labelled subset replace each other: a point that sets
    data.labelled_fraction clears the recipe's data.labels_per_class, and the other way round.
    """
    overrides = {}
    for key, other in (("data.labelled_fraction", "labels_per_class"), ("data.labels_per_class", "labelled_fraction")):
        if key in point and f"data.{other}" not in point:
            overrides[f"data.{other}"] = None
    tag = "_".join(f"{key.split('.')[-1]}={value}" for key, value in point.items())
    return apply_overrides(base, {**overrides, **point, "train.out_dir": str(Path(base.train.out_dir) / tag)})


def check_grid(base: Config, grid: dict[str, list]) -> None:
    """Every point of the grid must be a valid config: fail before any trial starts."""
    for combo in itertools.product(*grid.values()):
        trial_config(base, dict(zip(grid, combo)))


def _trial(params: dict) -> None:
    """One Tune trial: a tgan Ray Train run, evaluated; reports the evaluation once."""
    import ray.tune

    from cluster.trainer import evaluate_checkpoint, run

    point = {key: value for key, value in params.items() if key != "base"}
    cfg = trial_config(config_from_dict(params["base"]), point)
    result = run(cfg)
    table = evaluate_checkpoint(result.checkpoint, Path(cfg.train.out_dir) / "eval")
    name, row = next((n, r) for n, r in table["rows"].items() if n.startswith("model "))
    ray.tune.report({"step": result.step, "features": name, "map": row["map"], "knn9": row["knn"].get("9"),
                     "probe": row["probe_accuracy"], "out_dir": cfg.train.out_dir})


@dataclass
class Trial:
    point: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None


def sweep(base: Config, grid: dict[str, list], *, metric: str = "map", max_concurrent: int = 0) -> list[Trial]:
    """Run every grid point as a trial; returns them best first by `metric` (failed trials last)."""
    import ray
    from ray import tune

    from cluster import ray_env
    from cluster.trainer import absolute_paths

    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r} is invalid: expected one of {', '.join(METRICS)}")
    if not grid:
        raise ConfigError("a sweep needs at least one --grid section.field=v1,v2,...")
    base = absolute_paths(base)
    check_grid(base, grid)
    ray_env.connect()
    ray_env.check_resources(base.cluster)
    if max_concurrent <= 0:  # as many trials as the cluster's CPUs hold at once
        per_trial = base.cluster.num_workers * base.cluster.cpus_per_worker
        max_concurrent = max(1, int(ray.cluster_resources().get("CPU", 0) // per_trial))
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"CPU": 0, "memory": 1 << 20}),  # a bundle may not be empty
        param_space={"base": base.to_dict(), **{key: tune.grid_search(values) for key, values in grid.items()}},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name="tune", storage_path=base.train.out_dir, verbose=0))
    results = tuner.fit()
    trials = [Trial({key: r.config[key] for key in grid}, dict(r.metrics or {}),
                    None if r.error is None else str(r.error).strip().splitlines()[-1]) for r in results]
    return sorted(trials, key=lambda t: (t.error is not None, -(t.metrics.get(metric) or 0.0)))


def markdown(trials: list[Trial], grid: dict[str, list]) -> str:
    keys = list(grid)
    lines = [f"| {' | '.join(keys)} | steps | mAP | 9-NN | probe | features |",
             "| " + " | ".join("---" for _ in keys) + " | ---: | ---: | ---: | ---: | --- |"]
    for t in trials:
        cells = " | ".join(str(t.point[k]) for k in keys)
        if t.error:
            lines.append(f"| {cells} | failed: {t.error} | | | | |")
            continue
        m = t.metrics
        knn9 = "-" if m.get("knn9") is None else f"{100 * m['knn9']:.2f}"
        lines.append(f"| {cells} | {m['step']} | {100 * m['map']:.2f} | {knn9} | {100 * m['probe']:.2f} | "
                     f"{m['features']} |")
    return "\n".join(lines) + "\n"
