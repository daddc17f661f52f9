"""The unlabelled stream: rank x worker coverage, endless equal batches, exact resume, augmentation."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from toy_shards import assert_resume_repeats

from tgan.config import DataConfig
from tgan.data.augment import augment
from tgan.data.index import load_index
from tgan.data.prepare import write_shards
from tgan.data.reader import ShardStream
from tgan.data.sources import array_source
from tgan.data.streams import build_streams

N_TRAIN = 203  # not a multiple of the shard size, the batch size or the number of readers


def keyed_images(n: int) -> np.ndarray:
    """8x8 grey images whose first two pixels spell their index, so a batch tells which samples it holds."""
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 1, 0] = np.arange(n) // 256
    return images


def ids(x: torch.Tensor) -> list[int]:
    pixels = ((x[:, 0, 0, :2] + 1) * 127.5).round().long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("keyed")
    images = {"train": keyed_images(N_TRAIN), "test": keyed_images(10)}
    labels = {s: np.arange(len(v)) % 5 for s, v in images.items()}
    write_shards(array_source("keyed", images, labels, list("abcde"), image_size=8), out, shard_size=20,
                 progress=False)
    return out


def _stream(shards, **kw) -> ShardStream:
    index = load_index(shards)
    train = index.split("train").shards
    return ShardStream([index.shard_path(s) for s in train], [s.count for s in train], image_size=8, channels=1,
                       **kw)


def test_two_ranks_times_two_workers_cover_one_epoch_exactly_once(shards):
    seen: list[int] = []
    per_rank = []
    for rank in range(2):
        loader = DataLoader(_stream(shards, batch_size=7, seed=3, rank=rank, world_size=2, num_workers=2,
                                    shuffle_buffer=50, epochs=1), batch_size=None, num_workers=2)
        got = [i for x, _, corrupt in loader for i in ids(x)]
        per_rank.append(got)
        seen += got
    assert sorted(seen) == list(range(N_TRAIN))  # every sample once, no duplicates
    assert all(len(g) > 0 for g in per_rank)
    assert per_rank[0] != sorted(per_rank[0])  # the shuffle buffer did shuffle


def test_each_epoch_is_reshuffled_and_still_covers_everything(shards):
    stream = _stream(shards, batch_size=N_TRAIN, seed=0, epochs=2, shuffle_buffer=64)
    batches = [ids(x) for x, _, _ in stream]
    first, second = batches[0], batches[1]
    assert sorted(first) == sorted(second) == list(range(N_TRAIN)) and first != second


def _cfg(shards, **kw) -> DataConfig:
    base = dict(shards=str(shards), image_size=8, batch_size=16, labelled_batch_size=6, labelled_fraction=0.05,
                num_workers=2, shuffle_buffer=30)
    return DataConfig(**{**base, **kw})


def test_every_rank_yields_full_batches_forever(shards):
    # 203 samples over 2 ranks x 2 workers = 4 readers of ~50: 40 batches of 16 cross several epochs
    for rank in range(2):
        streams = build_streams(_cfg(shards), rank=rank, world_size=2, seed=1)
        for _ in range(40):
            x, y = next(streams.unlabelled)
            assert x.shape == (16, 1, 8, 8) and y.shape == (16,) and y.dtype == torch.int64
        streams.close()


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("num_workers,augment_name", [(0, "none"), (2, "crop_flip"), (3, "flip")])
def test_resume_continues_with_exactly_the_batches_of_the_uninterrupted_run(shards, num_workers, augment_name):
    cfg = _cfg(shards, num_workers=num_workers, augment=augment_name)
    # 13 batches x 16 > one rank's epoch: the fast-forward skips whole epochs
    ends = assert_resume_repeats(cfg, stops=(5, 13), batches=30)
    assert [state["unlabelled_batches"] for state in ends] == [30, 30]


def test_resume_far_into_the_run_skips_whole_epochs_without_reading_them(shards):
    streams = build_streams(_cfg(shards), rank=0, world_size=2, seed=7)
    state = streams.state_dict()
    state["unlabelled_batches"] = 300_000  # ~100,000 epochs (4.8M samples): reading them takes a minute
    streams.load_state_dict(state)
    start = time.perf_counter()
    x, _ = next(streams.unlabelled)
    assert x.shape == (16, 1, 8, 8) and time.perf_counter() - start < 10
    streams.close()


def test_different_seeds_and_ranks_read_different_batches(shards):
    def first_ids(rank, seed):
        s = build_streams(_cfg(shards, num_workers=0), rank=rank, world_size=2, seed=seed)
        return ids(next(s.unlabelled)[0])
    assert first_ids(0, 0) == first_ids(0, 0)
    assert first_ids(0, 0) != first_ids(0, 1)
    assert not set(first_ids(0, 0)) & set(first_ids(1, 0))


def test_augmentations():
    x = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert augment(x, "none", gen()) is x
    flipped = augment(x.repeat(16, 1, 1, 1), "flip", gen())
    is_flip = [torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x.repeat(16, 1, 1, 1))]
    is_same = [torch.equal(f, o) for f, o in zip(flipped, x.repeat(16, 1, 1, 1))]
    assert all(a or b for a, b in zip(is_flip, is_same)) and any(is_flip) and any(is_same)
    cropped = augment(x, "crop_flip", gen())
    assert cropped.shape == x.shape and not torch.equal(cropped, x)
    assert cropped.min() >= -1 and cropped.max() <= 1
    assert torch.equal(augment(x, "crop_flip", gen()), cropped)  # same seed, same crop
    with pytest.raises(ValueError, match="data.augment='rotate'"):
        augment(x, "rotate", gen())


def test_resume_with_another_layout_warns_that_the_order_differs(shards, caplog):
    state = build_streams(_cfg(shards, num_workers=0), rank=0, world_size=2, seed=7).state_dict()
    resumed = build_streams(_cfg(shards, num_workers=0, batch_size=8), rank=0, world_size=2, seed=7)
    with caplog.at_level("WARNING", logger="tgan.data"):
        resumed.load_state_dict(state)
    assert "different data layout" in caplog.text and "'batch_size': (16, 8)" in caplog.text
    assert next(resumed.unlabelled)[0].shape == (8, 1, 8, 8)


def test_labelled_augment_applies_to_the_labelled_stream_only(shards):
    def first_batches(**kw):
        streams = build_streams(_cfg(shards, **kw), rank=0, world_size=1, seed=0)
        try:
            return next(streams.unlabelled)[0], next(streams.labelled)[0]
        finally:
            streams.close()

    plain_x, plain_xl = first_batches()
    x, xl = first_batches(labelled_augment="flip")
    assert torch.equal(x, plain_x)  # the unlabelled stream keeps data.augment (none)
    flipped = [torch.equal(a, b.flip(-1)) for a, b in zip(xl, plain_xl)]
    assert any(flipped) and all(f or torch.equal(a, b) for f, a, b in zip(flipped, xl, plain_xl))
    # Unset, the labelled stream follows data.augment as before.
    _, xl_default = first_batches(augment="flip")
    assert torch.equal(xl_default, xl)
