"""What a start continues, and what may change when it does.

A run directory holds one run. Starting with the same config again continues it from its newest
checkpoint (train.resume=auto), so a retried job just works. The checkpoint carries the config it
was trained with; the new config is compared with it field by field:

- fields in MUTABLE only steer the rest of the run (length, learning rates, clipping, loss weights,
  logging, checkpoint cadence, evaluation, where files and Ray live): a change is applied from the
  next step (the backend sets the optimizers' learning rates and betas after restoring their state)
  and recorded in the checkpoint's `config_history` and in `<out_dir>/config_history.jsonl`. PBT
  relies on this: it continues a better trial's checkpoint with perturbed settings;
- every other field defines what the checkpoint holds (family, widths, latent and embedding sizes,
  image size, dataset, labelled subset, validation split, seeds, batch sizes, backend...): a change
  is refused with the list of differences, before anything is written into the run directory.

A checkpoint that fails verification or loading is reported in one line and the next older one is
tried; the run fails only when none loads.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tgan.config import Config, ConfigError, config_from_dict
from tgan.train import checkpoint as ckpt
from tgan.train.checkpoint import CheckpointError

MUTABLE = (
    "train.steps", "train.time_limit_s", "train.out_dir", "train.device", "train.log_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.max_nonfinite_in_row", "train.fault_step",
    "train.deterministic", "train.resume", "train.ema_decay",
    "optim.lr", "optim.lr_d", "optim.lr_g", "optim.beta1", "optim.beta2", "optim.grad_clip",
    "loss.",
    "data.shards", "data.num_workers", "data.verify_checksums",
    "eval.",
    "cluster.num_workers", "cluster.use_gpu", "cluster.cpus_per_worker", "cluster.gpus_per_worker",
    "cluster.storage_path", "cluster.max_failures", "cluster.metrics", "cluster.report_every",
)
"""Fields a resume may change (an entry ending in "." covers its whole section). data.shards may
move, but the data set it holds must keep the checkpoint's image shape and classes (checked against
the index); cluster.num_workers must keep the checkpoint's world size (checked against state.pt)."""

HISTORY_FILE = "config_history.jsonl"


def mutable(key: str) -> bool:
    return any(key == m or (m.endswith(".") and key.startswith(m)) for m in MUTABLE)


def _flat(values: dict) -> dict[str, Any]:
    return {f"{section}.{name}": v for section, fields in values.items() for name, v in fields.items()}


def config_changes(saved: dict, cfg: Config) -> dict[str, list]:
    """{dotted field: [saved value, new value]} for every field that differs."""
    try:
        old = _flat(config_from_dict(saved).to_dict())
    except ConfigError as e:
        raise CheckpointError(f"state.pt holds a config this version cannot read ({e})") from e
    new = _flat(cfg.to_dict())
    return {k: [old[k], new[k]] for k in new if old.get(k) != new[k]}


def check_changes(changes: dict[str, list], path: Path) -> None:
    """Refuse the resume when a field outside MUTABLE changed, listing every such difference."""
    refused = [f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items() if not mutable(k)]
    if refused:
        raise ConfigError(f"cannot continue {path} with a different {'; '.join(refused)}: these fields define what "
                          "the checkpoint holds, so keep their saved values or choose a new train.out_dir (a resume "
                          "may change only steps, optim.*, loss.*, logging, checkpointing, eval.* and where files "
                          "live)")


def check_meta(path: Path, saved: dict, meta: dict) -> None:
    """The data set (wherever data.shards now points) must have the checkpoint's image shape and classes."""
    if saved != meta:
        raise ConfigError(f"data.shards holds images of {meta} but checkpoint {path} was trained on {saved}: "
                          "point data.shards at the data set the run was trained on")


def candidates(cfg: Config, resume_from: str | Path | Iterable[Path] | None) -> tuple[Iterable[Path], bool]:
    """The checkpoints a start may continue from, best first, and whether to fall back to the next
    when one cannot be loaded (not for a checkpoint the user named). `resume_from`: one checkpoint,
    or several newest first (an iterable that may fetch each only when it is reached, see
    cluster/trainer.py), handed over by whoever restarts the run (Ray); the run's own checkpoints
    in train.out_dir back them up."""
    newest_first = list(reversed(ckpt.list_checkpoints(cfg.train.out_dir)))
    if resume_from is not None:
        handed = [Path(resume_from)] if isinstance(resume_from, (str, Path)) else resume_from
        return _unique(itertools.chain(handed, newest_first)), True
    choice = cfg.train.resume
    if choice == "never":
        if newest_first:
            raise ConfigError(f"train.resume=never but train.out_dir={cfg.train.out_dir!r} already holds checkpoints "
                              f"(newest {newest_first[0].name}): choose a new train.out_dir or train.resume=auto")
        return [], False
    if choice == "auto":
        return newest_first, True
    named = Path(choice)
    first = ckpt.MANIFEST.format(rank=0)
    if not ((named / first).is_file() or (named / "state.pt").is_file()):
        raise ConfigError(f"train.resume={choice!r} is not a checkpoint directory (no {first} in it): "
                          "expected auto, never or the path of a checkpoints/step_N directory")
    return [named], False


def _unique(paths: Iterable[Path]) -> Iterable[Path]:
    """Each directory once (a handed-over checkpoint may also be one of train.out_dir's), lazily."""
    seen = set()
    for path in paths:
        if Path(path).resolve() not in seen:
            seen.add(Path(path).resolve())
            yield Path(path)


@dataclass
class Resumed:
    path: Path
    state: dict
    """state.pt: config, step, world_size, nets, counters, meta, config_history (and ema, see tgan/train/ema.py)."""
    rank_state: dict | None
    """This rank's rank_<r>.pt (rng, data); None when opened without a rank."""
    changes: dict[str, list] = field(default_factory=dict)
    """The accepted changes of MUTABLE fields, {field: [saved, new]}."""

    @property
    def step(self) -> int:
        return self.state["step"]

    def history(self) -> list[dict]:
        """The checkpoint's config history plus this resume's changes (from the next step on)."""
        past = list(self.state.get("config_history", []))
        return past + ([{"from_step": self.step + 1, "changes": self.changes}] if self.changes else [])


def open_resume(cfg: Config, resume_from: str | Path | Iterable[Path] | None = None, *, world_size: int, rank: int | None = None,
                all_ok: Callable[[bool], bool] = lambda ok: ok,
                report: Callable[[str], None] = print) -> Resumed | None:
    """The checkpoint this start continues (verified, loaded, its config compared), or None for a
    fresh start. `rank` None opens only state.pt (a driver's check before any worker starts);
    `all_ok` makes every rank take the same decision about each checkpoint.

    Raises ConfigError when the config may not continue the run (refused fields, world size) and
    CheckpointError when no candidate loads (one line, naming the newest one's file and why).
    """
    found, fallback = candidates(cfg, resume_from)
    failures: list[str] = []
    for path in found:
        resumed, error = None, None
        try:
            state = ckpt.load_checkpoint(path)
            rank_state = ckpt.load_rank_state(path, rank) if rank is not None else None
            resumed = Resumed(path, state, rank_state)
        except CheckpointError as e:
            error = e
        if all_ok(resumed is not None):
            ckpt.check_world_size(path, resumed.state, world_size)
            resumed.changes = config_changes(resumed.state["config"], cfg)
            check_changes(resumed.changes, path)
            return resumed
        if not fallback:
            raise error or CheckpointError(f"checkpoint {path} cannot be loaded on another rank (see its log)")
        why = str(error) if error is not None else "cannot be loaded on another rank"
        failures.append(why)
        report(f"checkpoint {path.name} skipped: {why}")
    if failures:
        where = ckpt.checkpoint_dir(cfg.train.out_dir) if resume_from is None else "the run's storage"
        raise CheckpointError(f"none of the {len(failures)} checkpoints in {where} can be loaded (newest: "
                              f"{failures[0]}): move them away to start again")
    return None


def write_history(out_dir: Path, history: list[dict]) -> None:
    """<out_dir>/config_history.jsonl: one line per resume that changed a setting (rewritten whole,
    so that a fallback to an older checkpoint drops the entries of the abandoned ones)."""
    (out_dir / HISTORY_FILE).write_text("".join(json.dumps(h) + "\n" for h in history))
