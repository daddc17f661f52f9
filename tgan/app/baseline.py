"""eval.baseline_recipe: the one-command main job trains its own comparison row.

A main recipe names its triplet-only twin (eval.baseline_recipe) and where that run lives
(eval.baseline). Before the model trains, `ensure_baseline` reuses the baseline's checkpoint when
eval.baseline holds one, else trains it with the caller's `train` (a second Ray Train run under
launch/train.py, the one-process loop under launch/train_local.py) on the SAME labels and budget:
the baseline takes the main run's whole data section (images, labelled subset, validation split,
batches), train.steps, train.seed and cluster section; its network, loss and optimiser come from its
own recipe. Plain config and checkpoint logic, shared by both entry points (tgan.app.train, cluster.cli).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tgan.config import Config, ConfigError, apply_overrides
from tgan.resolve import load_config

SHARED = ("data", "cluster")
"""Sections the baseline takes whole from the main run: what it sees and where it runs."""
SHARED_TRAIN = ("steps", "seed")
"""train fields it takes too: the same budget and the same initial draw of data order."""


def baseline_config(cfg: Config) -> Config:
    """The baseline run's Config: eval.baseline_recipe with the main run's data, cluster, steps and seed.
    ConfigError (one line, naming the field) when the recipe is missing, invalid, on another data set,
    trains elsewhere than eval.baseline, or would keep no checkpoint for evaluation to read."""
    field = f"eval.baseline_recipe={cfg.eval.baseline_recipe!r}"
    try:
        own = load_config(cfg.eval.baseline_recipe)
    except ConfigError as e:
        raise ConfigError(f"{field}: {e}") from e
    if own.data.dataset != cfg.data.dataset:
        raise ConfigError(f"{field} trains on data.dataset={own.data.dataset}: expected {cfg.data.dataset}, this "
                          "run's data set (the baseline is scored on the same images)")
    if Path(own.train.out_dir).resolve() != Path(cfg.eval.baseline).resolve():
        raise ConfigError(f"{field} trains into train.out_dir={own.train.out_dir!r} but eval.baseline="
                          f"{cfg.eval.baseline!r}: make them the same directory")
    values = own.to_dict()
    for section in SHARED:
        values[section] = cfg.to_dict()[section]
    values["train"].update({k: getattr(cfg.train, k) for k in SHARED_TRAIN})
    values["eval"].update(baseline="", baseline_recipe="")
    try:
        base = apply_overrides(values, {})
    except ConfigError as e:
        raise ConfigError(f"{field} with this run's data and budget: {e}") from e
    if base.eval.every == 0:
        # On Ray a run's step checkpoints stay in Ray's storage: train.out_dir keeps only the best
        # one on validation, which is what eval.baseline then finds.
        raise ConfigError(f"{field} has eval.every=0: set it > 0 so that its best checkpoint on validation "
                          f"is kept in {cfg.eval.baseline}")
    return base


def _trained_on(saved: Config) -> tuple:
    d = saved.data
    return (d.dataset, d.image_size, d.labels_per_class, d.labelled_fraction, d.label_seed, d.validation_size,
            d.validation_seed, saved.train.steps)


def ensure_baseline(cfg: Config, train: Callable[[Config], object]) -> Path | None:
    """eval.baseline's checkpoint, trained first with `train(baseline_config(cfg))` when it holds none;
    None without eval.baseline_recipe. Says which in one line. A baseline trained on other labels or
    another budget is refused rather than shown beside this model."""
    if not cfg.eval.baseline_recipe:
        return None
    # torch: imported only when a baseline is asked for
    from tgan.eval_inputs import load_baseline
    from tgan.train.checkpoint import find_checkpoint

    base = baseline_config(cfg)
    found = find_checkpoint(cfg.eval.baseline)
    if found is None:
        print(f"baseline: training {base.model.family} ({cfg.eval.baseline_recipe}, {base.train.steps} steps, "
              f"the same labels) into {cfg.eval.baseline}", flush=True)
        train(base)
        found = find_checkpoint(cfg.eval.baseline)
        if found is None:
            raise ConfigError(f"eval.baseline={cfg.eval.baseline!r} holds no checkpoint after training "
                              f"{cfg.eval.baseline_recipe}")
        load_baseline(cfg)  # verified in full, as before any run that names an existing baseline
        return found
    saved, _ = load_baseline(cfg)  # verified in full before this run trains (a damaged newest one falls back)
    if _trained_on(saved) != _trained_on(base):
        raise ConfigError(f"eval.baseline={cfg.eval.baseline!r} was trained on other labels or another budget "
                          f"(dataset, size, labels, seeds, steps: {_trained_on(saved)} against this run's "
                          f"{_trained_on(base)}): delete it to retrain it, or point eval.baseline elsewhere")
    print(f"baseline: reusing {found} ({saved.model.family}, {cfg.eval.baseline_recipe})", flush=True)
    return found
