"""Rank helpers that fall back to rank 0 / world size 1 with no process group, per-rank seeds, and
the device this rank computes on (shared by training and evaluation)."""
from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist

from tgan.config import ConfigError


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def rank_seed(seed: int, rank_: int, stream: str = "") -> int:
    """A 63-bit seed that is a pure function of (seed, rank, stream name): no coordination needed."""
    digest = hashlib.sha256(f"{seed}/{rank_}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_device(name: str) -> torch.device:
    """train.device: auto -> cuda when available; on CUDA each rank takes its local GPU (LOCAL_RANK,
    set by launchers)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device='cuda' but no CUDA device is available: use auto or cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank() % torch.cuda.device_count())))
    return torch.device("cpu")
