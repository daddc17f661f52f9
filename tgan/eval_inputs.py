"""What an evaluation reads besides the model: the checkpoint to evaluate, the eval.baseline run's
networks and the Inception weights; each loaded in full before anything depends on it.

Light to import (no torchmetrics, no sklearn): the training command lines call check_eval_inputs
before training, and --dry-run too.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from tgan.config import Config, ConfigError
from tgan.families import get_family
from tgan.train import checkpoint as ckpt
from tgan.train.checkpoint import CheckpointError


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def open_networks(location: str | Path, report: Callable[[str], None] = _to_stderr
                  ) -> tuple[Path, Config, dict[str, nn.Module]] | None:
    """(checkpoint, its config, its networks) of `location`, each checkpoint verified before it is loaded
    (ckpt.load_networks), or None when `location` holds none. A checkpoint directory is used or
    refused, never replaced by another; a run directory's checkpoints are tried newest first, then its
    best one (all that a run trained on Ray keeps there): one that fails is reported in one line and
    the next older one is used, as resume does. CheckpointError, naming the newest, when none loads."""
    path = Path(location)
    if ckpt.find_checkpoint(path) == path:
        return path, *ckpt.load_networks(path)
    best = ckpt.best_checkpoint(path)
    found = [*reversed(ckpt.list_checkpoints(path)), *([best] if best is not None else [])]
    failures = []
    for candidate in found:
        try:
            return candidate, *ckpt.load_networks(candidate)
        except CheckpointError as e:
            failures.append(str(e))
            report(f"checkpoint {candidate} skipped: {e}")
    if failures:
        raise CheckpointError(f"none of the {len(failures)} checkpoints of {path} can be loaded (newest: "
                              f"{failures[0]})")
    return None


def load_baseline(cfg: Config) -> tuple[Config, dict[str, nn.Module]] | None:
    """The config and trained networks of the eval.baseline run (None when unset), refused in one
    ConfigError line when it has no loadable checkpoint or was trained on other images."""
    if not cfg.eval.baseline:
        return None
    setting = f"eval.baseline={cfg.eval.baseline!r}"
    try:
        found = open_networks(cfg.eval.baseline, report=lambda line: _to_stderr(f"{setting}: {line}"))
    except CheckpointError as e:
        raise ConfigError(f"{setting}: {e}") from e
    if found is None:
        raise ConfigError(f"{setting} holds no checkpoint: train that run first (its recipe's train.out_dir, "
                          "e.g. launch/recipes/digits_triplet.yaml) or set eval.baseline=''")
    _, saved, nets = found
    if (saved.data.dataset, saved.data.image_size) != (cfg.data.dataset, cfg.data.image_size):
        raise ConfigError(f"{setting} is a run on {saved.data.dataset} at {saved.data.image_size} px: expected "
                          f"{cfg.data.dataset} at {cfg.data.image_size} px, the images this model is scored on")
    return saved, nets


def check_eval_inputs(cfg: Config) -> None:
    """Before training: what the evaluation at its end reads besides the model, loaded once in full
    (the eval.baseline checkpoint, the eval.inception_weights network), so that a run never learns
    at its last line that one of them is missing, damaged or of other images. ConfigError naming the field."""
    if not (cfg.eval.baseline_recipe and ckpt.find_checkpoint(cfg.eval.baseline) is None):
        load_baseline(cfg)  # else tgan.app.baseline trains it first, then loads it the same way
    if cfg.eval.inception_weights and cfg.eval.fid_samples and get_family(cfg.model.family).generator is not None:
        from tgan.eval.generation import inception_features  # torchmetrics: seconds to import, so only here

        inception_features(cfg.eval.inception_weights)  # cached: the evaluation reuses it
