"""Sweep specs (launch/sweeps/*.yaml): what a sweep searches, how, and how its trials are compared.

    set:          {dotted.key: value}   fixed overrides of the recipe for every trial (--set wins over them)
    space:        {dotted.key: DOMAIN}  what is searched, DOMAIN one of
                    {grid: [v, ...]}        every value (crossed with the other grid keys), search: grid or random
                    {choice: [v, ...]}      one value drawn per trial
                    {uniform: [lo, hi]}     a float in [lo, hi]
                    {loguniform: [lo, hi]}  a float, log-uniform in [lo, hi], 0 < lo < hi
                    {randint: [lo, hi]}     an integer in [lo, hi) (hi excluded, like Tune and range())
    search:       grid (default; only grid domains) | random | optuna (Optuna's TPE; no grid domains)
    scheduler:    fifo (default) | asha | pbt
    asha:         {grace_period: steps before a trial may be stopped, reduction_factor: 2}
    pbt:          {perturbation_interval: steps, mutations: {dotted.key: DOMAIN or [values]} (default: space),
                   synch: false (true: trials wait for each other at every interval, so each exploit compares one step)}
    num_samples:  trials per grid point (random, optuna: trials in all)
    metric:       a live validation metric (val/map, val/knn1, val/knn<k>, val/probe); never a test metric
    mode:         max (default) | min
    resources:    {num_workers, cpus_per_worker, gpus_per_worker, use_gpu}: the cluster.* of each trial's
                  Train run; gpus_per_worker may be a fraction, so that small trials share a GPU
    max_concurrent: trials at once (0 = as many as the cluster's CPUs and GPUs hold)
    max_failures: retries of a failed trial, each continuing from its last checkpoint

Trials are compared on live validation (eval.every), so schedulers act during training; ASHA and
PBT count time in training steps. Everything here is checked before Ray starts: a bad spec fails
with one line naming the spec file and field.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tgan.config import Config, ConfigError, apply_overrides, parse_yaml
from tgan.resolve import check
from tgan.eval.validation import validation_keys

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
FIELDS = ("set", "space", "search", "scheduler", "asha", "pbt", "num_samples", "metric", "mode", "resources",
          "max_concurrent", "max_failures")
RESOURCES = ("num_workers", "cpus_per_worker", "gpus_per_worker", "use_gpu")


@dataclass
class Domain:
    kind: str
    values: list
    """grid/choice: the values; uniform/loguniform/randint: [lo, hi]."""

    def candidates(self) -> list:
        """Values that stand for the whole domain when checking configs: all of a list, the bounds of a range."""
        if self.kind == "randint":
            return [self.values[0], self.values[1] - 1]
        return list(self.values)


@dataclass
class SweepSpec:
    space: dict[str, Domain]
    source: str = "the sweep"
    """The spec file (for messages)."""
    set: dict[str, Any] = field(default_factory=dict)
    search: str = "grid"
    scheduler: str = "fifo"
    asha: dict = field(default_factory=lambda: {"grace_period": 1, "reduction_factor": 2})
    pbt_interval: int = 0
    pbt_synch: bool = False
    mutations: dict[str, Domain] = field(default_factory=dict)
    num_samples: int = 1
    metric: str = "val/map"
    mode: str = "max"
    resources: dict = field(default_factory=dict)
    max_concurrent: int = 0
    max_failures: int = 0

    @property
    def overrides(self) -> list[str]:
        """The spec's `set` and `resources` as --set items (JSON values are YAML); each trial keeps its
        best checkpoint by the spec's metric (eval.best_metric), which the selected trial is tested with."""
        fixed = {"eval.best_metric": self.metric, **self.set, **{f"cluster.{k}": v for k, v in self.resources.items()}}
        return [f"{key}={json.dumps(value)}" for key, value in fixed.items()]


def _fail(source: str, where: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {message}")


def parse_domain(raw: Any, where: str, source: str) -> Domain:
    if isinstance(raw, list):  # a bare list is a grid (PBT mutations: values to choose from)
        raw = {"grid": raw}
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in KINDS:
        raise _fail(source, where, f"{raw!r} is not a domain: expected one of "
                    + ", ".join(f"{{{k}: [...]}}" for k in KINDS))
    kind, values = next(iter(raw.items()))
    if not isinstance(values, list) or not values:
        raise _fail(source, f"{where}.{kind}", f"{values!r} is empty or not a list: give at least one value")
    if kind in ("uniform", "loguniform", "randint"):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if len(values) != 2 or not numbers or not values[0] < values[1]:
            raise _fail(source, f"{where}.{kind}", f"{values!r} is invalid: expected [low, high] numbers with low < high")
        if kind == "loguniform" and values[0] <= 0:
            raise _fail(source, f"{where}.loguniform", f"{values!r} is invalid: both bounds must be > 0")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise _fail(source, f"{where}.randint", f"{values!r} is invalid: expected integer bounds")
    return Domain(kind, values)


def _positive_int(raw: dict, name: str, source: str, default: int, minimum: int = 1) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(source, name, f"{value!r} is invalid: expected an integer >= {minimum}")
    return value


def parse_spec(raw: dict, source: str = "the sweep") -> SweepSpec:
    """A SweepSpec from the YAML mapping of a spec file (shape checks only; `check_spec` checks the keys)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a sweep spec must be a YAML mapping of {', '.join(FIELDS)}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise _fail(source, unknown[0], f"unknown field: valid fields are {', '.join(FIELDS)}")
    space = raw.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise _fail(source, "space", "is empty: give at least one dotted.key: {grid: [...]} (or another domain)")
    spec = SweepSpec(space={k: parse_domain(v, f"space.{k}", source) for k, v in space.items()}, source=source)
    spec.set = dict(raw.get("set") or {})
    spec.search = raw.get("search", "grid")
    if spec.search not in ("grid", "random", "optuna"):
        raise _fail(source, "search", f"{spec.search!r} is invalid: expected grid, random or optuna")
    spec.scheduler = raw.get("scheduler", "fifo")
    if spec.scheduler not in ("fifo", "asha", "pbt"):
        raise _fail(source, "scheduler", f"{spec.scheduler!r} is invalid: expected fifo, asha or pbt")
    for name in ("asha", "pbt"):
        if name in raw and spec.scheduler != name:
            raise _fail(source, name, f"is given but scheduler is {spec.scheduler}: set scheduler: {name} or remove it")
    asha = dict(raw.get("asha") or {})
    bad = sorted(set(asha) - {"grace_period", "reduction_factor"})
    if bad:
        raise _fail(source, f"asha.{bad[0]}", "unknown field: valid fields are grace_period, reduction_factor")
    spec.asha = {"grace_period": _positive_int(asha, "grace_period", source, 1),
                 "reduction_factor": _positive_int(asha, "reduction_factor", source, 2, minimum=2)}
    pbt = dict(raw.get("pbt") or {})
    bad = sorted(set(pbt) - {"perturbation_interval", "mutations", "synch"})
    if bad:
        raise _fail(source, f"pbt.{bad[0]}", "unknown field: valid fields are perturbation_interval, mutations, synch")
    if spec.scheduler == "pbt":
        spec.pbt_interval = _positive_int(pbt, "perturbation_interval", source, 0, minimum=0)
        spec.pbt_synch = bool(pbt.get("synch", False))
        mutations = pbt.get("mutations") or {k: v for k, v in space.items()}
        spec.mutations = {k: parse_domain(v, f"pbt.mutations.{k}", source) for k, v in mutations.items()}
    spec.num_samples = _positive_int(raw, "num_samples", source, 1)
    spec.metric = raw.get("metric", "val/map")
    spec.mode = raw.get("mode", "max")
    if spec.mode not in ("max", "min"):
        raise _fail(source, "mode", f"{spec.mode!r} is invalid: expected max or min")
    spec.resources = dict(raw.get("resources") or {})
    bad = sorted(set(spec.resources) - set(RESOURCES))
    if bad:
        raise _fail(source, f"resources.{bad[0]}", f"unknown field: valid fields are {', '.join(RESOURCES)}")
    spec.max_concurrent = _positive_int(raw, "max_concurrent", source, 0, minimum=0)
    spec.max_failures = _positive_int(raw, "max_failures", source, 0, minimum=0)
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--sweep {p} does not exist (sweep specs live in launch/sweeps/)")
    return parse_spec(parse_yaml(p.read_text(), f"--sweep {p}"), source=str(p))


def parse_grid(items: list[str]) -> dict[str, list]:
    """["loss.alpha=0.2,2,20", "model.embedding_dim=100,500"] -> {"loss.alpha": [0.2, 2, 20], ...}."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        values = [parse_yaml(v, f"--grid {item!r}") for v in raw.split(",") if v.strip()]
        if not sep or not key.strip() or not values:
            raise ConfigError(f"--grid {item!r} is not of the form section.field=v1,v2,... (e.g. --grid loss.alpha=0.2,2,20)")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice: list all its values in one --grid")
        grid[key.strip()] = values
    return grid


def grid_spec(grid: dict[str, list], metric: str = "val/map") -> SweepSpec:
    """The spec of the --grid shortcut: a grid over these values, fifo, ranked on `metric`."""
    return SweepSpec(space={k: Domain("grid", v) for k, v in grid.items()}, source="--grid", metric=metric)


def trial_config(base: Config, point: dict[str, Any], out_dir: str | Path) -> Config:
    """`base` with the point's values and train.out_dir = `out_dir`, validated (with the family's checks).

    The two exclusive ways of choosing the labelled subset replace each other: a point that sets
    data.labelled_fraction clears the recipe's data.labels_per_class, and the other way round.
    """
    cleared = {}
    for key, other in (("data.labelled_fraction", "labels_per_class"), ("data.labels_per_class", "labelled_fraction")):
        if key in point and f"data.{other}" not in point:
            cleared[f"data.{other}"] = None
    return check(apply_overrides(base, {**cleared, **point, "train.out_dir": str(out_dir)}))


def check_spec(spec: SweepSpec, base: Config) -> None:
    """Fail before any trial starts, naming the spec field, when a trial could not run or be compared."""
    src = spec.source
    grid_keys = [k for k, d in spec.space.items() if d.kind == "grid"]
    if spec.search == "grid" and len(grid_keys) < len(spec.space):
        key = next(k for k in spec.space if k not in grid_keys)
        raise _fail(src, f"space.{key}", f"is a {spec.space[key].kind} domain but search is grid: use "
                    "search: random or optuna, or give it {grid: [...]}")
    if spec.search == "optuna" and grid_keys:
        raise _fail(src, f"space.{grid_keys[0]}", "is a grid domain but Optuna samples every key: use {choice: [...]}")
    if spec.scheduler == "pbt" and spec.pbt_interval < 1:
        raise _fail(src, "pbt.perturbation_interval", "is missing: give the steps between PBT exploits (>= 1)")
    for section, domains in (("space", spec.space), ("pbt.mutations", spec.mutations)):
        for key, domain in domains.items():
            for value in domain.candidates():
                try:
                    trial_config(base, {key: value}, base.train.out_dir)
                except ConfigError as e:
                    raise _fail(src, f"{section}.{key}", str(e)) from None
    grid = [spec.space[k].values for k in grid_keys]
    if math.prod(len(v) for v in grid) <= 1000:  # combinations can be invalid where single values are not
        for combo in itertools.product(*grid):
            try:
                trial_config(base, dict(zip(grid_keys, combo)), base.train.out_dir)
            except ConfigError as e:
                raise _fail(src, "space", f"the grid point {dict(zip(grid_keys, combo))} is invalid: {e}") from None
    produced = validation_keys(base)
    if spec.metric not in produced or not spec.metric.startswith("val/"):
        have = ", ".join(k for k in produced if k.startswith("val/")) or "nothing (eval.every=0)"
        raise _fail(src, "metric", f"{spec.metric!r} is not produced by these trials: they report {have}; trials "
                    "are compared on live validation (set eval.every > 0 and data.validation_size > 0, "
                    "eval.live_probe=true for val/probe)")
    if spec.scheduler in ("asha", "pbt") and base.eval.every >= base.train.steps:
        raise _fail(src, "scheduler", f"{spec.scheduler} needs several validation reports per trial but "
                    f"eval.every={base.eval.every} >= train.steps={base.train.steps}: lower eval.every")
