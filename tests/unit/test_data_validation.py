"""The validation split: stratified, held out of both training streams, the same in every process,
restart and labelled setting, and the unlabelled stream's exact resume still holds around it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from toy_shards import write_toy_shards

from tgan.config import ConfigError, DataConfig, load_config
from tgan.data.index import DataError
from tgan.data.labelled import validation_counts
from tgan.data.streams import build_streams

REPO = Path(__file__).resolve().parents[2]
COUNTS = [50, 30, 10, 10]  # 100 training examples, unbalanced on purpose


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_toy_shards(tmp_path_factory.mktemp("validation"), COUNTS)


def _cfg(shards, **kw) -> DataConfig:
    base = dict(shards=str(shards), image_size=8, batch_size=5, labelled_batch_size=4, shuffle_buffer=8,
                validation_size=10)
    return DataConfig(**{**base, **kw})


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(img.flatten().tolist()) for img in images}


def test_validation_is_stratified_and_never_in_either_training_stream(shards):
    assert validation_counts(COUNTS, 10) == [5, 3, 1, 1]
    streams = build_streams(_cfg(shards, labels_per_class=9), rank=0, world_size=1, seed=0)
    val = streams.validation
    assert torch.bincount(val.labels, minlength=4).tolist() == [5, 3, 1, 1]
    assert not set(val.keys) & set(streams.labelled.keys)
    # Class 2 has 10 examples: 1 held out, so all 9 others are the labelled ones.
    assert torch.bincount(streams.labelled.labels, minlength=4).tolist() == [9, 9, 9, 9]
    # One epoch of the unlabelled stream (90 = 18 batches of 5) is exactly the other 90 examples.
    seen = [next(streams.unlabelled)[0] for _ in range(18)]
    unlabelled = _rows(((torch.cat(seen) + 1) * 127.5).round().to(torch.uint8))
    assert len(unlabelled) == 90
    assert not unlabelled & _rows(val.images)
    assert not _rows(val.images) & _rows(streams.labelled.images)


SUBPROCESS = """
import json, sys
from tgan.config import DataConfig
from tgan.data.streams import build_streams
cfg = DataConfig(shards=sys.argv[1], image_size=8, batch_size=5, labelled_batch_size=0, validation_size=10)
print(json.dumps(build_streams(cfg, rank=1, world_size=2, seed=7).validation.keys))
"""


def test_validation_is_the_same_in_every_process_rank_and_labelled_setting(shards):
    keys = build_streams(_cfg(shards, labelled_fraction=0.2, label_seed=3), rank=0, world_size=1,
                         seed=0).validation.keys
    other = subprocess.run([sys.executable, "-c", SUBPROCESS, str(shards)], capture_output=True, text=True,
                           cwd=REPO, timeout=120, check=True)
    assert json.loads(other.stdout.strip().splitlines()[-1]) == keys
    assert build_streams(_cfg(shards, validation_seed=1), rank=0, world_size=1, seed=0).validation.keys != keys


def test_the_unlabelled_stream_resumes_exactly_across_an_epoch_around_the_held_out_keys(shards):
    cfg = _cfg(shards, labelled_batch_size=0)
    ahead = build_streams(cfg, rank=0, world_size=1, seed=0).unlabelled
    batches = [next(ahead) for _ in range(25)]  # 90 usable samples = 18 batches per epoch
    resumed = build_streams(cfg, rank=0, world_size=1, seed=0).unlabelled
    resumed.seek(23)
    for want in batches[23:]:
        got = next(resumed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_the_gallery_is_stratified_and_holds_no_validation_example(shards):
    streams = build_streams(_cfg(shards, labelled_batch_size=0), rank=0, world_size=1, seed=0, gallery_size=45)
    assert torch.bincount(streams.gallery.labels, minlength=4).tolist() == [23, 14, 5, 5]  # of 45/90 of the rest
    assert not set(streams.gallery.keys) & set(streams.validation.keys)


def test_impossible_sizes_name_the_field(shards):
    with pytest.raises(DataError, match=r"data.validation_size=100 holds out the whole training split"):
        build_streams(_cfg(shards, validation_size=100), rank=0, world_size=1, seed=0)
    with pytest.raises(DataError, match=r"class 2 has 10 training examples: 1 held out .* lower data.validation_size"):
        build_streams(_cfg(shards, labels_per_class=10), rank=0, world_size=1, seed=0)
    with pytest.raises(ConfigError, match=r"eval.every=5 is invalid: expected 0 unless data.validation_size > 0"):
        load_config(REPO / "launch" / "recipes" / "debug.yaml", ["eval.every=5", "data.validation_size=0"])
