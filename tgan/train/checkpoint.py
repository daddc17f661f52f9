"""Checkpoints: everything the next step depends on, written atomically, the last few kept.

Layout of `<out_dir>/checkpoints/step_00000042/`:
- `state.pt` (rank 0): resolved config dict, completed step count, every network's state_dict (from
  the raw modules, so evaluation needs no backend), counters, and the data set's shape (`meta`);
- `rank_<r>.pt` (every rank): that rank's RNG states (torch CPU and CUDA, numpy, python) and its
  data position (`streams.state_dict()`);
- whatever `backend.save(dir)` writes (TorchBackend: `optim.pt` with every group's optimizer state).

A checkpoint is written into `.tmp_step_...` and renamed when every rank has finished, so a run
killed mid-save leaves the previous checkpoint intact and never a half-written one under a final name.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tgan import dist
from tgan.config import Config, config_from_dict
from tgan.families.base import build_networks

PREFIX = "step_"


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run (those with a state.pt), oldest first."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: str | Path, step: int, *, state: dict[str, Any], rank_state: dict[str, Any],
                    backend: Any, keep: int) -> Path:
    """Collective (every rank calls it): write one checkpoint, then keep only the newest `keep`.

    `state` is rank 0's shared part (config, networks, counters, meta; `step` is added here),
    `rank_state` this rank's part (world_size, rng, data), `backend` anything with `save(dir)`.
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
        if final.exists():  # only when a run was restarted from an earlier checkpoint
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old)
    dist.barrier()
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The shared part (state.pt) of a checkpoint directory."""
    file = Path(path) / "state.pt"
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint directory: it has no state.pt")
    # Our own run output; it holds numpy RNG arrays and data positions, not only tensors.
    return torch.load(file, map_location="cpu", weights_only=False)


def load_rank_state(path: str | Path, rank: int, world_size: int) -> dict[str, Any]:
    """This rank's part (RNG state, data position); the world size must match the one that saved it."""
    file = Path(path) / f"rank_{rank}.pt"
    state = torch.load(file, map_location="cpu", weights_only=False) if file.is_file() else None
    if state is None or state["world_size"] != world_size:
        saved = "fewer" if state is None else state["world_size"]
        raise ValueError(f"checkpoint {path} was written by {saved} ranks but this run has {world_size}: "
                         "resume with the same cluster.num_workers or start a new train.out_dir")
    return state


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
