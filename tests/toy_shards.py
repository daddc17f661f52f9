"""Tiny unbalanced 4-class shard sets for the data tests: random 8x8 images, so that every sample is
unique and images identify samples in the streams' output."""
from pathlib import Path

import numpy as np

from tgan.data.prepare import write_shards
from tgan.data.sources import array_source


def write_toy_shards(out: Path, counts: list[int]) -> Path:
    """`counts[c]` training examples of class c (shuffled), the first 8 as the test split, 16 per shard."""
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(0).shuffle(labels)
    images = np.random.default_rng(1).integers(0, 256, (len(labels), 8, 8, 1), dtype=np.uint8)
    src = array_source("toy", {"train": images, "test": images[:8]}, {"train": labels, "test": labels[:8]},
                       list("abcd")[:len(counts)], image_size=8)
    write_shards(src, out, shard_size=16, progress=False)
    return out
