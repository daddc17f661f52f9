"""Checkpoints: everything the next step depends on, written atomically, verified before loading,
loaded without unpickling arbitrary objects, the last few kept.

Layout of a checkpoint directory `step_00000042/`:
- `state.pt` (rank 0): resolved config dict, completed step count, world size, every network's
  state_dict (from the raw modules, so evaluation needs no backend), counters, the data set's shape
  (`meta`), the history of config changes made on resume (`config_history`) and, with
  train.ema_decay, the weights' moving average (`ema`: update count and state_dicts, tgan/train/ema.py);
- `rank_<r>.pt` (every rank): that rank's RNG states (torch CPU and CUDA, numpy, python) and its
  data position (`streams.state_dict()`);
- whatever `backend.save(dir)` writes (TorchBackend: `optim.pt` on rank 0; DeepSpeed: each rank its
  engines' files);
- `manifest_rank_<r>.json` (every rank): the step, the world size and the size and sha256 of every
  file that rank wrote.

Each rank writes its files into a directory of its own and lists them in its own manifest, because
under Ray Train (cluster/trainer.py) `train.out_dir` may be node-local and no rank sees the others'
files: there each rank hands its directory (`rank_dir`) to Ray Train's report, which merges every
rank's files into one checkpoint directory in its storage. Without Ray the ranks write into
`<out_dir>/checkpoints/.tmp_step_.../.rank_<r>`, rank 0 merges them when every rank is done and
renames the result to `step_...`, so a run killed mid-save leaves the previous checkpoint intact and
never a half-written one under a final name.

Everything tgan writes is tensors and plain Python data, so it is read with
`torch.load(weights_only=True)`: a planted pickle cannot run code there. DeepSpeed reads its own
files with full unpickling, so `verify_checkpoint` checks the union of the manifests before anything
is loaded: a missing manifest (a rank's files never arrived), manifests of different saves, and a
truncated, damaged, replaced or added file are refused, naming the file.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
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
MANIFEST = "manifest_rank_{rank}.json"
"""Each rank's manifest, `MANIFEST.format(rank=r)`; rank 0's is present in every checkpoint."""
_MANIFEST_RE = re.compile(r"manifest_rank_(\d+)\.json")
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
    """{"step", "metric", "value", "weights"} of the run's best checkpoint ("weights": "ema" when the
    moving average was scored, else "trained"; absent in runs before train.ema_decay), or None."""
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
    is the truth). Under Ray `source` is rank 0's staging directory, so with several ranks the copy
    holds rank 0's files only: what evaluation reads (load_networks verifies state.pt alone), not a
    checkpoint to resume from."""
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
    """`path` when it is a checkpoint directory, else the newest checkpoint of the run directory `path`,
    else its best checkpoint on validation (None when it is neither). A run trained on Ray keeps its
    step checkpoints in Ray's storage only (cluster.storage_path), so its run directory holds just
    the best one."""
    path = Path(path)
    if (path / MANIFEST.format(rank=0)).is_file() or (path / "state.pt").is_file():
        return path
    return latest_checkpoint(path) or best_checkpoint(path)


def baseline_checkpoint(cfg: Config) -> Path | None:
    """The checkpoint eval.baseline names (None when unset, or not trained yet while eval.baseline_recipe
    will train it before this run: tgan/app/baseline.py). Checked before training starts, so that a
    run never learns at its last line that its comparison row cannot be made."""
    if not cfg.eval.baseline:
        return None
    found = find_checkpoint(cfg.eval.baseline)
    if found is None and cfg.eval.baseline_recipe:
        return None
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


def is_manifest(name: str) -> bool:
    return _MANIFEST_RE.fullmatch(name) is not None


def _files(directory: Path) -> list[str]:
    """Every file under `directory` (relative paths) but the manifests and Ray's metadata."""
    return sorted(rel for p in directory.rglob("*")
                  if p.is_file() and (rel := str(p.relative_to(directory))) != RAY_METADATA and not is_manifest(rel))


def write_manifest(directory: Path, *, rank: int, world_size: int, step: int) -> None:
    """`rank`'s manifest: size and sha256 of every file in `directory`, which holds only that rank's
    files when it is written (save_checkpoint)."""
    files = {rel: {"bytes": (directory / rel).stat().st_size, "sha256": _sha256(directory / rel)}
             for rel in _files(directory)}
    body = {"step": step, "world_size": world_size, "files": files}
    (directory / MANIFEST.format(rank=rank)).write_text(json.dumps(body, indent=1) + "\n")


def _read_manifest(file: Path) -> tuple[int, int, dict[str, tuple[int, str]]]:
    """(step, world_size, {relative path: (bytes, sha256)}) of one manifest."""
    try:
        body = json.loads(file.read_text())
        files = {rel: (int(v["bytes"]), str(v["sha256"])) for rel, v in body["files"].items()}
        return int(body["step"]), int(body["world_size"]), files
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{file} is damaged ({type(e).__name__}: {e})") from e


def verify_checkpoint(path: str | Path) -> None:
    """Raise CheckpointError, naming the file, unless every rank's manifest is there, all come from
    the same save, every file matches the manifest listing it and no file was added: called before
    anything of a checkpoint is loaded (DeepSpeed unpickles its files)."""
    path = Path(path)
    first = path / MANIFEST.format(rank=0)
    if not first.is_file():
        raise CheckpointError(f"{first} is missing: {path} is not a complete tgan checkpoint")
    step, world, expected = _read_manifest(first)
    if checkpoint_step(path) not in (None, step):  # None: a copy under another name (Ray's download)
        raise CheckpointError(f"{first} is of step {step} but the directory is {path.name}: replaced or damaged")
    listed_by = {rel: first.name for rel in expected}
    for r in range(1, world):
        file = path / MANIFEST.format(rank=r)
        if not file.is_file():
            raise CheckpointError(f"{file} is missing: {path} was written by {world} ranks and rank {r}'s files "
                                  "never arrived")
        other = _read_manifest(file)
        if other[:2] != (step, world):
            raise CheckpointError(f"{file} is of step {other[0]} with {other[1]} ranks but {first.name} of step "
                                  f"{step} with {world}: files of two different saves")
        expected.update(other[2])
        listed_by.update({rel: file.name for rel in other[2]})
    for rel, (size, digest) in expected.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{f} is missing (listed in {listed_by[rel]})")
        if f.stat().st_size != size:
            raise CheckpointError(f"{f} has {f.stat().st_size} bytes but {listed_by[rel]} says {size}: truncated "
                                  "or replaced")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f} does not match its sha256 in {listed_by[rel]}: damaged or replaced")
    manifests = {MANIFEST.format(rank=r) for r in range(world)}
    extra = sorted((set(_files(path)) - set(expected))
                   | {p.name for p in path.iterdir() if is_manifest(p.name) and p.name not in manifests})
    if extra:
        raise CheckpointError(f"{path / extra[0]} is not listed in any of the {world} manifests: a file was added "
                              "to the checkpoint")


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
                    backend: Any, keep: int, rank_dir: str | Path | None = None) -> Path:
    """Collective (every rank calls it): write one checkpoint, then keep only the newest `keep`.

    `state` is rank 0's shared part (config, networks, counters, meta, config_history; `step` and
    `world_size` are added here), `rank_state` this rank's part (rng, data), `backend` anything with
    `save(dir)`. All of it must be tensors and plain data (what weights_only loading accepts).
    With `rank_dir`, this rank writes only its own files into `<rank_dir>/step_N` and returns it, for
    whoever gathers the ranks' files (Ray Train), and `keep` is theirs to apply.
    """
    if rank_dir is not None:
        final = Path(rank_dir) / f"{PREFIX}{step:08d}"
        shutil.rmtree(final, ignore_errors=True)  # left over from a run restarted before this step
        final.mkdir(parents=True)
        _write_rank_files(final, step, state, rank_state, backend)
        return final
    root = checkpoint_dir(out_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp_{final.name}"
    rank = dist.rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    own = tmp / f".rank_{rank}"
    own.mkdir(parents=True)
    _write_rank_files(own, step, state, rank_state, backend)
    dist.barrier()
    if rank == 0:
        for r in range(dist.world_size()):
            _merge_into(tmp, tmp / f".rank_{r}")
        if final.exists():  # only when a run was restarted from an earlier checkpoint
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old)
    dist.barrier()
    return final


def _write_rank_files(directory: Path, step: int, state: dict[str, Any], rank_state: dict[str, Any],
                      backend: Any) -> None:
    """This rank's files of a checkpoint (rank_<r>.pt, the backend's, on rank 0 state.pt) and its manifest."""
    rank, world = dist.rank(), dist.world_size()
    torch.save(rank_state, directory / f"rank_{rank}.pt")
    backend.save(directory)
    if rank == 0:
        torch.save({**state, "step": step, "world_size": world}, directory / "state.pt")
    write_manifest(directory, rank=rank, world_size=world, step=step)


def _merge_into(target: Path, rank_dir: Path) -> None:
    """Move one rank's files into the checkpoint directory (renames within one file system).
    A rank whose directory is absent (an out_dir that is not shared) leaves its manifest missing,
    which verify_checkpoint refuses."""
    if not rank_dir.is_dir():
        return
    for file in sorted(p for p in rank_dir.rglob("*") if p.is_file()):
        dest = target / file.relative_to(rank_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        file.rename(dest)
    shutil.rmtree(rank_dir)


def verify_state(path: str | Path) -> None:
    """Raise CheckpointError, naming the file, unless state.pt matches its entry in rank 0's manifest:
    what evaluation needs, which reads nothing else (the run's best checkpoint under Ray is a copy
    of rank 0's files only, see keep_best)."""
    path = Path(path)
    first = path / MANIFEST.format(rank=0)
    if not first.is_file():
        raise CheckpointError(f"{first} is missing: {path} is not a complete tgan checkpoint")
    size, digest = _read_manifest(first)[2].get("state.pt", (None, None))
    f = path / "state.pt"
    if size is None:
        raise CheckpointError(f"{f} is not listed in {first.name}")
    if not f.is_file():
        raise CheckpointError(f"{f} is missing (listed in {first.name})")
    if f.stat().st_size != size:
        raise CheckpointError(f"{f} has {f.stat().st_size} bytes but {first.name} says {size}: truncated or replaced")
    if _sha256(f) != digest:
        raise CheckpointError(f"{f} does not match its sha256 in {first.name}: damaged or replaced")


def load_checkpoint(path: str | Path, *, whole: bool = True) -> dict[str, Any]:
    """The shared part (state.pt) of a checkpoint directory, verified first: the whole checkpoint
    against every rank's manifest (before a resume), or with `whole=False` state.pt alone (verify_state)."""
    path = Path(path)
    if whole:
        verify_checkpoint(path)
    else:
        verify_state(path)
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
    """The config and the networks of a checkpoint, on CPU in eval mode, for evaluation: the weights'
    moving average when the run kept one (train.ema_decay), else the trained weights."""
    state = load_checkpoint(path, whole=False)
    cfg = config_from_dict(state["config"])
    meta = state["meta"]
    nets = build_networks(cfg, channels=meta["channels"], image_size=meta["image_size"],
                          num_classes=meta["num_classes"])
    weights = state["ema"]["nets"] if "ema" in state else state["nets"]
    for name, net in nets.items():
        net.load_state_dict(weights[name])
        net.eval()
    return cfg, nets
