"""Tiny unbalanced 4-class shard sets for the data tests: random 8x8 images, so that every sample is
unique and images identify samples in the streams' output."""
from pathlib import Path

import numpy as np
import torch

from tgan.data.prepare import write_shards
from tgan.data.sources import array_source
from tgan.data.streams import build_streams


def write_toy_shards(out: Path, counts: list[int]) -> Path:
    """`counts[c]` training examples of class c (shuffled), the first 8 as the test split, 16 per shard."""
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(0).shuffle(labels)
    images = np.random.default_rng(1).integers(0, 256, (len(labels), 8, 8, 1), dtype=np.uint8)
    src = array_source("toy", {"train": images, "test": images[:8]}, {"train": labels, "test": labels[:8]},
                       list("abcd")[:len(counts)], image_size=8)
    write_shards(src, out, shard_size=16, progress=False)
    return out


def assert_resume_repeats(cfg, stops, batches: int):
    """Rank 1 of 2 streams `batches` (unlabelled, labelled) batch pairs without a stop; for each stop,
    streams restarted from the state after `stop` pairs give exactly the rest. Returns the state of
    each resumed stream at the end, one per stop."""
    full = build_streams(cfg, rank=1, world_size=2, seed=7)
    reference = [(next(full.unlabelled), next(full.labelled)) for _ in range(batches)]
    full.close()
    states = []
    for stop in stops:
        first = build_streams(cfg, rank=1, world_size=2, seed=7)
        for _ in range(stop):
            next(first.unlabelled), next(first.labelled)
        state = first.state_dict()
        first.close()
        resumed = build_streams(cfg, rank=1, world_size=2, seed=7)
        resumed.load_state_dict(state)
        for (x_ref, y_ref), (xl_ref, yl_ref) in reference[stop:]:
            x, y = next(resumed.unlabelled)
            xl, yl = next(resumed.labelled)
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
            assert torch.equal(xl, xl_ref) and torch.equal(yl, yl_ref)
        states.append(resumed.state_dict())
        resumed.close()
    return states
