"""Two spawned gloo ranks, two loader workers each, reading the same shards through build_streams.

Pins what a real multi-rank run relies on: ranks read disjoint samples, every step every rank has a
batch (a per-step all_reduce never hangs, across several epochs), together they see every sample
but the held-out ones, and the subsets chosen by hash (labelled, validation) are the same on both
ranks and equal to one process's, although each rank scanned only half of the shards for them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tgan import dist as tdist
from tgan.config import DataConfig
from tgan.data.prepare import write_shards
from tgan.data.sources import array_source
from tgan.data.streams import build_streams
from spawned import leave

N_TRAIN, BATCH, STEPS, VALIDATION = 203, 5, 60, 6


def _ids(x: torch.Tensor) -> torch.Tensor:
    pixels = ((x[:, 0, 0, :2] + 1) * 127.5).round().long()
    return pixels[:, 0] + 256 * pixels[:, 1]


def _worker(rank: int, world: int, init_file: str, shards: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = DataConfig(shards=shards, image_size=8, batch_size=BATCH, labelled_batch_size=4,
                         labelled_fraction=0.1, num_workers=2, shuffle_buffer=16, validation_size=VALIDATION)
        streams = build_streams(cfg, rank=tdist.rank(), world_size=tdist.world_size(), seed=5)
        keys = [None] * world
        dist.all_gather_object(keys, (streams.labelled.keys, streams.validation.keys))
        seen = []
        for _ in range(STEPS):
            x, _ = next(streams.unlabelled)
            next(streams.labelled)
            gathered = [torch.zeros(BATCH, dtype=torch.long) for _ in range(world)]
            dist.all_gather(gathered, _ids(x))  # a collective every step: a rank without a batch would hang it
            seen.append(torch.stack(gathered))
        if rank == 0:
            torch.save({"seen": torch.stack(seen), "keys": keys}, out)
        streams.close()
        leave()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_samples_in_lockstep_and_agree_on_the_labelled_subset(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_TRAIN, 8, 8, 1), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(N_TRAIN) % 256, np.arange(N_TRAIN) // 256
    labels = np.arange(N_TRAIN) % 4
    write_shards(array_source("keyed", {"train": images}, {"train": labels}, list("abcd"), image_size=8),
                 tmp_path / "shards", shard_size=20, progress=False)
    out = tmp_path / "seen.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "shards"), str(out)), nprocs=2, join=True)
    result = torch.load(out)
    seen = result["seen"]  # [steps, ranks, batch]
    assert seen.shape == (STEPS, 2, BATCH)
    # 8 steps = 4 batches per loader worker = 20 samples per reader, less than any reader's epoch (>= 23):
    first = seen[:8].flatten().tolist()
    assert len(set(first)) == len(first)
    assert set(seen[:8, 0].flatten().tolist()).isdisjoint(seen[:8, 1].flatten().tolist())
    one = build_streams(DataConfig(shards=str(tmp_path / "shards"), image_size=8, batch_size=BATCH,
                                   labelled_batch_size=4, labelled_fraction=0.1, validation_size=VALIDATION),
                        rank=0, world_size=1, seed=5)  # no process group: one process scans every shard
    assert result["keys"][0] == result["keys"][1] == (one.labelled.keys, one.validation.keys)
    held_out = {int(k.split("_")[1]) for k in one.validation.keys}
    assert len(one.labelled.keys) > 0 and len(held_out) >= VALIDATION  # per class, rounded up
    # every reader went through a whole epoch
    assert set(seen.flatten().tolist()) == set(range(N_TRAIN)) - held_out
