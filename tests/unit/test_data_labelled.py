"""The labelled subset: exact sizes, stratified, the same in every process, rank and restart."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_shards import write_toy_shards

from tgan.config import DataConfig
from tgan.data.index import DataError
from tgan.data.labelled import LabelledSelector, label_hash, labelled_counts
from tgan.data.prepare import write_shards
from tgan.data.sources import array_source
from tgan.data.streams import build_streams

REPO = Path(__file__).resolve().parents[2]
COUNTS = [50, 31, 7, 12]  # unbalanced on purpose


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_toy_shards(tmp_path_factory.mktemp("labelled"), COUNTS)


def test_counts_follow_the_documented_rule():
    assert labelled_counts(COUNTS, fraction=0.1) == [5, 3, 1, 1]  # floor(f * n + 0.5), at least 1
    assert labelled_counts(COUNTS, fraction=0.002) == [1, 1, 1, 1]
    assert labelled_counts(COUNTS, fraction=1.0) == COUNTS
    assert labelled_counts([10, 30], fraction=0.25) == [3, 8]  # 2.5 -> 3, 7.5 -> 8 (half rounds up)
    assert labelled_counts(COUNTS, per_class=7) == [7, 7, 7, 7]


@pytest.mark.parametrize("kwargs,message", [
    (dict(fraction=0.0), r"data.labelled_fraction=0.0 is invalid"),
    (dict(fraction=1.5), r"data.labelled_fraction=1.5 is invalid"),
    (dict(per_class=0), r"data.labels_per_class=0 is invalid"),
    (dict(per_class=8), r"data.labels_per_class=8 is more than class 2 has \(7 training examples\)"),
    (dict(fraction=0.1, per_class=2), r"exactly one of"),
])
def test_invalid_settings_name_the_field(kwargs, message):
    with pytest.raises(DataError, match=message):
        labelled_counts(COUNTS, **kwargs)


def test_selection_takes_the_smallest_hashes_per_class_whatever_the_reading_order():
    items = [(f"train_{i:06d}", i % 3) for i in range(300)]
    counts = [4, 1, 9]
    picks = []
    for order_seed in range(3):
        shuffled = items[:]
        random.Random(order_seed).shuffle(shuffled)
        sel = LabelledSelector(counts, seed=11)
        for key, cls in shuffled:
            sel.offer(key, cls, payload=key.upper())
        picks.append(sel.selected())
    assert picks[0] == picks[1] == picks[2]
    for c, n in enumerate(counts):
        keys = sorted((k for k, cls in items if cls == c), key=lambda k: (label_hash(k, 11), k))[:n]
        assert sorted(k for k, cls, _ in picks[0] if cls == c) == sorted(keys)
    assert all(p == k.upper() for k, _, p in picks[0])
    other = LabelledSelector(counts, seed=12)
    for key, cls in items:
        other.offer(key, cls)
    assert [k for k, _, _ in other.selected()] != [k for k, _, _ in picks[0]]


SUBPROCESS = """
import json, sys
from tgan.config import DataConfig
from tgan.data.streams import build_streams
cfg = DataConfig(shards=sys.argv[1], image_size=8, batch_size=4, labelled_batch_size=32, labelled_fraction=0.1)
print(json.dumps(build_streams(cfg, rank=int(sys.argv[2]), world_size=2, seed=99).labelled.keys))
"""


def test_subset_is_identical_across_ranks_processes_and_restarts_and_stratified(shards):
    cfg = DataConfig(shards=str(shards), image_size=8, batch_size=4, labelled_batch_size=32, labelled_fraction=0.1)
    here = [build_streams(cfg, rank=r, world_size=2, seed=s).labelled for r, s in ((0, 0), (1, 5))]
    assert here[0].keys == here[1].keys  # training seed and rank do not change which examples are labelled
    other = subprocess.run([sys.executable, "-c", SUBPROCESS, str(shards), "1"], capture_output=True, text=True,
                           cwd=REPO, timeout=120, check=True)
    assert json.loads(other.stdout.strip().splitlines()[-1]) == here[0].keys
    assert torch.bincount(here[0].labels, minlength=4).tolist() == [5, 3, 1, 1]
    changed = DataConfig(**{**cfg.__dict__, "label_seed": 1})
    assert build_streams(changed, rank=0, world_size=1, seed=0).labelled.keys != here[0].keys


def test_tiny_subset_still_fills_every_labelled_batch_and_ranks_draw_differently(shards):
    cfg = DataConfig(shards=str(shards), image_size=8, batch_size=4, labelled_batch_size=32, labels_per_class=1)
    streams = [build_streams(cfg, rank=r, world_size=2, seed=0) for r in range(2)]
    assert len(streams[0].labelled.keys) == 4
    draws = []
    for s in streams:
        xl, yl = next(s.labelled)
        assert xl.shape == (32, 1, 8, 8) and yl.shape == (32,)
        assert torch.bincount(yl, minlength=4).tolist() == [8, 8, 8, 8]  # 8 full passes over the 4 examples
        draws.append(yl.tolist())
    assert draws[0] != draws[1]


def test_no_labelled_stream_without_a_setting_or_with_batch_zero(shards):
    assert build_streams(DataConfig(shards=str(shards), image_size=8, batch_size=4), rank=0, world_size=1,
                         seed=0).labelled is None
    cfg = DataConfig(shards=str(shards), image_size=8, batch_size=4, labelled_batch_size=0, labelled_fraction=0.5)
    assert build_streams(cfg, rank=0, world_size=1, seed=0).labelled is None


def test_dataset_without_classes_rejects_a_labelled_setting(tmp_path):
    src = array_source("faces", {"train": np.zeros((4, 8, 8, 3), np.uint8)}, {"train": np.full(4, -1)}, [],
                       image_size=8)
    write_shards(src, tmp_path, shard_size=4, progress=False)
    x, y = next(build_streams(DataConfig(shards=str(tmp_path), image_size=8, batch_size=2), rank=0, world_size=1,
                              seed=0).unlabelled)
    assert y.tolist() == [-1, -1]
    with pytest.raises(DataError, match=r"dataset faces has no classes"):
        build_streams(DataConfig(shards=str(tmp_path), image_size=8, batch_size=2, labelled_fraction=0.5),
                      rank=0, world_size=1, seed=0)
