"""Checkpoints: everything the next step depends on, written atomically, verified before loading,
loaded without unpickling arbitrary objects, the last few kept.

Layout of `<out_dir>/checkpoints/step_00000042/`:
- `state.pt` (rank 0): resolved config dict, completed step count, world size, every network's
  state_dict (from the raw modules, so evaluation needs no backend), counters, the data set's shape
  (`meta`) and the history of config changes made on resume (`config_history`);
- `rank_<r>.pt` (every rank): that rank's RNG states (torch CPU and CUDA, numpy, python) and its
  data position (`streams.state_dict()`);
- whatever `backend.save(dir)` writes (TorchBackend: `optim.pt`; DeepSpeed: its engines' files);
- `manifest.json` (rank 0, after every rank wrote): size and sha256 of every other file.

Everything tgan writes is tensors and plain Python data, so it is read with
`torch.load(weights_only=True)`: a planted pickle cannot run code there. DeepSpeed reads its own
files with full unpickling, so `verify_checkpoint` checks every file against the manifest before
anything is loaded: a truncated, damaged, replaced or added file is refused, naming it.

A checkpoint is written into `.tmp_step_...` and renamed when every rank has finished, so a run
killed mid-save leaves the previous checkpoint intact and never a half-written one under a final name.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tgan import dist
from tgan.config import Config, ConfigError, config_from_dict
from tgan.families.base import build_networks


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names the file and why (missing, damaged, unsafe)."""


PREFIX = "step_"
MANIFEST = "manifest.json"
RAY_METADATA = ".metadata.json"
"""Ray's Checkpoint.set_metadata may add this JSON file to a stored copy; nothing loads it as code."""


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def checkpoint_step(path: Path) -> int | None:
    """N of a `step_N` directory, None for any other name (e.g. a downloaded copy)."""
    digits = path.name[len(PREFIX):]
    return int(digits) if path.name.startswith(PREFIX) and digits.isdigit() else None


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """The run's checkpoint directories, oldest first. Each was complete when it was renamed into
    place; whether it still is, `verify_checkpoint` tells."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


BEST = "best"
"""<out_dir>/checkpoints/best: a copy of the checkpoint with the best live validation metric
(eval.best_metric), described by best.json beside it; list_checkpoints and resume never pick it."""


def read_best(out_dir: str | Path) -> dict[str, Any] | None:
    """{"step", "metric", "value"} of the run's best checkpoint, or None when it has none (yet)."""
    file = checkpoint_dir(out_dir) / f"{BEST}.json"
    if not file.is_file() or not (checkpoint_dir(out_dir) / BEST).is_dir():
        return None
    return json.loads(file.read_text())


def best_checkpoint(out_dir: str | Path) -> Path | None:
    """The run's best checkpoint on validation, or None."""
    return checkpoint_dir(out_dir) / BEST if read_best(out_dir) is not None else None


def keep_best(out_dir: str | Path, source: Path, record: dict[str, Any]) -> Path:
    """Rank 0: make a copy of the checkpoint `source` the run's best, `record` its best.json. The old
    best is replaced only once the copy is complete, so a run killed meanwhile leaves a complete best
    checkpoint (best.json, written last, may then still describe the previous one; state.pt's step
    is the truth)."""
    root = checkpoint_dir(out_dir)
    best, tmp, old = root / BEST, root / f".tmp_{BEST}", root / f".old_{BEST}"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    shutil.copytree(source, tmp)
    if best.exists():
        best.rename(old)
    tmp.rename(best)
    shutil.rmtree(old, ignore_errors=True)
    (root / f"{BEST}.json").write_text(json.dumps(record) + "\n")
    return best


def find_checkpoint(path: str | Path) -> Path | None:
    """`path` when it is a checkpoint directory, else the newest checkpoint of the run directory `path`
    (None when it is neither)."""
    path = Path(path)
    if (path / MANIFEST).is_file() or (path / "state.pt").is_file():
        return path
    return latest_checkpoint(path)


def baseline_checkpoint(cfg: Config) -> Path | None:
    """The checkpoint eval.baseline names (None when unset). Checked before training starts, so that a
    run never learns at its last line that its comparison row cannot be made."""
    if not cfg.eval.baseline:
        return None
    found = find_checkpoint(cfg.eval.baseline)
    if found is None:
        raise ConfigError(f"eval.baseline={cfg.eval.baseline!r} holds no checkpoint: train that run first (its "
                          "recipe's train.out_dir, e.g. launch/recipes/digits_triplet.yaml) or set eval.baseline=''")
    return found


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain data (numpy's key array becomes a tensor)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(rel for p in directory.rglob("*")
                  if p.is_file() and (rel := str(p.relative_to(directory))) not in (MANIFEST, RAY_METADATA))


def write_manifest(directory: Path) -> None:
    """Size and sha256 of every file in `directory` (call once every rank has written its files)."""
    files = {rel: {"bytes": (directory / rel).stat().st_size, "sha256": _sha256(directory / rel)}
             for rel in _files(directory)}
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")


def verify_checkpoint(path: str | Path) -> None:
    """Raise CheckpointError, naming the file, unless every file matches the manifest and no file
    was added: called before anything of a checkpoint is loaded (DeepSpeed unpickles its files)."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {path} is not a complete tgan checkpoint")
    try:
        files = json.loads(file.read_text())["files"]
        expected = {rel: (int(v["bytes"]), str(v["sha256"])) for rel, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{file} is damaged ({type(e).__name__}: {e})") from e
    for rel, (size, digest) in expected.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{f} is missing (listed in {MANIFEST})")
        if f.stat().st_size != size:
            raise CheckpointError(f"{f} has {f.stat().st_size} bytes but {MANIFEST} says {size}: truncated or replaced")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f} does not match its sha256 in {MANIFEST}: damaged or replaced")
    extra = sorted(set(_files(path)) - set(expected))
    if extra:
        raise CheckpointError(f"{path / extra[0]} is not in {MANIFEST}: a file was added to the checkpoint")


def safe_load(file: Path) -> Any:
    """torch.load with weights_only=True (tensors and plain data only), errors as one line naming the file."""
    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{file} holds objects other than tensors and plain data; refused, since "
                              "loading it could run code") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "empty or truncated"
        raise CheckpointError(f"{file} cannot be read ({type(e).__name__}: {first})") from e


def save_checkpoint(out_dir: str | Path, step: int, *, state: dict[str, Any], rank_state: dict[str, Any],
                    backend: Any, keep: int) -> Path:
    """Collective (every rank calls it): write one checkpoint, then keep only the newest `keep`.

    `state` is rank 0's shared part (config, networks, counters, meta, config_history; `step` and
    `world_size` are added here), `rank_state` this rank's part (rng, data), `backend` anything with
    `save(dir)`. All of it must be tensors and plain data (what weights_only loading accepts).
    """
    root = checkpoint_dir(out_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp_{final.name}"
    rank = dist.rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    tmp.mkdir(parents=True, exist_ok=True)  # a no-op on shared storage; a node-local out_dir needs it
    torch.save(rank_state, tmp / f"rank_{rank}.pt")
    backend.save(tmp)
    if rank == 0:
        torch.save({**state, "step": step, "world_size": dist.world_size()}, tmp / "state.pt")
    dist.barrier()
    if rank == 0:
        write_manifest(tmp)
        if final.exists():  # only when a run was restarted from an earlier checkpoint
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old)
    dist.barrier()
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The shared part (state.pt) of a checkpoint directory, verified against its manifest first."""
    path = Path(path)
    verify_checkpoint(path)
    return safe_load(path / "state.pt")


def load_rank_state(path: str | Path, rank: int) -> dict[str, Any]:
    """This rank's part (RNG state, data position) of a checkpoint verified with `load_checkpoint`."""
    return safe_load(Path(path) / f"rank_{rank}.pt")


def check_world_size(path: str | Path, state: dict[str, Any], world_size: int) -> None:
    """A checkpoint's RNG states and data positions are per rank: resume with the same number of ranks."""
    if state["world_size"] != world_size:
        raise ConfigError(f"checkpoint {path} was written by {state['world_size']} ranks but this run has "
                          f"{world_size}: resume with cluster.num_workers={state['world_size']} or start a new "
                          "train.out_dir")


def load_networks(path: str | Path) -> tuple[Config, dict[str, nn.Module]]:
    """The config and the trained networks of a checkpoint, on CPU in eval mode, for evaluation."""
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"])
    meta = state["meta"]
    nets = build_networks(cfg, channels=meta["channels"], image_size=meta["image_size"],
                          num_classes=meta["num_classes"])
    for name, net in nets.items():
        net.load_state_dict(state["nets"][name])
        net.eval()
    return cfg, nets
