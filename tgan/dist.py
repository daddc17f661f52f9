"""Rank helpers that fall back to rank 0 / world size 1 with no process group, and per-rank seeds."""
from __future__ import annotations

import hashlib

import torch.distributed as dist


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
