"""data.mode=memory: each rank's share of the training split decoded once into one uint8 tensor and
batches gathered from it. Same samples per epoch as the stream (over all ranks; the order differs),
exact resume, the held-out keys excluded, unreadable samples counted, a one-line refusal when the
share does not fit."""
from __future__ import annotations

import pytest
import torch
from test_data_shards import _corrupt_png, _truncate
from test_data_streams import N_TRAIN, _stream, ids, shards  # noqa: F401 (the keyed shard fixture)
from toy_shards import assert_resume_repeats, write_toy_shards

from tgan.config import ConfigError, DataConfig
from tgan.data.augment import augment
from tgan.data.index import DataError, load_index
from tgan.data.streams import build_streams


def _cfg(shards, **kw) -> DataConfig:  # noqa: F811
    base = dict(shards=str(shards), image_size=8, batch_size=16, labelled_batch_size=6, labelled_fraction=0.05,
                num_workers=0, shuffle_buffer=30, mode="memory")
    return DataConfig(**{**base, **kw})


def _epoch(stream, n: int) -> list[int]:
    """The ids of the first n samples a stream yields (its batches run across epoch ends)."""
    got: list[int] = []
    while len(got) < n:
        got += ids(next(stream)[0])
    return got[:n]


def test_an_epoch_over_all_ranks_holds_every_sample_once_and_each_is_repermuted(shards):  # noqa: F811
    per_rank = [build_streams(_cfg(shards), rank=r, world_size=2, seed=3) for r in range(2)]
    sizes = [len(s.unlabelled.images) for s in per_rank]
    assert sum(sizes) == N_TRAIN and min(sizes) > 0
    two = [_epoch(s.unlabelled, 2 * n) for s, n in zip(per_rank, sizes)]
    firsts, seconds = [t[:n] for t, n in zip(two, sizes)], [t[n:] for t, n in zip(two, sizes)]
    assert sorted(firsts[0] + firsts[1]) == list(range(N_TRAIN))  # every sample once per epoch
    for first, second in zip(firsts, seconds):  # each epoch re-permuted, over the same rank-held set
        assert sorted(first) == sorted(second) and first != second
    # Stream mode's first epoch over the same 2 ranks holds the same samples; which rank reads which
    # sample, and the order, differ (memory mode keeps shards r, r+2, ... on rank r; the stream re-deals
    # the shards every epoch).
    streamed = [ids(x) for r in range(2) for x, _, _ in _stream(shards, batch_size=16, seed=3, rank=r, world_size=2,
                                                                 shuffle_buffer=30, epochs=1)]
    assert sorted(sum(streamed, [])) == sorted(firsts[0] + firsts[1])
    assert sum(streamed, [])[:16] != firsts[0][:16]


@pytest.mark.parametrize("augment_name,num_workers,stops", [("none", 0, (3, 9)), ("crop_flip", 2, (9,))])
def test_resume_continues_with_exactly_the_batches_of_the_uninterrupted_run(shards, augment_name,  # noqa: F811
                                                                            num_workers, stops):
    cfg = _cfg(shards, augment=augment_name, num_workers=num_workers)  # the workers decode the shards at start-up
    # 9 batches x 16 > the rank's 100 samples: mid-way through its second epoch
    assert_resume_repeats(cfg, stops=stops, batches=20)


def test_the_labelled_stream_is_the_same_in_both_modes(shards):  # noqa: F811
    memory = build_streams(_cfg(shards), rank=0, world_size=2, seed=5).labelled
    stream = build_streams(_cfg(shards, mode="stream"), rank=0, world_size=2, seed=5).labelled
    for _ in range(4):
        (x, y), (x_ref, y_ref) = next(memory), next(stream)
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_the_validation_split_is_held_out_of_both_memory_streams(tmp_path):
    toy = write_toy_shards(tmp_path / "toy", [50, 30, 10, 10])
    cfg = _cfg(toy, batch_size=5, labelled_batch_size=4, labelled_fraction=None, labels_per_class=9,
               validation_size=10)
    streams = build_streams(cfg, rank=0, world_size=1, seed=0)
    rows = (lambda images: {bytes(img.flatten().tolist()) for img in images})  # noqa: E731
    held = rows(streams.validation.images)
    assert len(held) == 10 and len(streams.unlabelled.images) == 90
    seen = torch.cat([next(streams.unlabelled)[0] for _ in range(18)])  # one epoch: 18 batches of 5
    assert len(rows(((seen + 1) * 127.5).round().to(torch.uint8))) == 90
    assert not rows(streams.unlabelled.images) & held and not rows(streams.labelled.images) & held


def test_unreadable_samples_are_skipped_and_counted_at_load(tmp_path):
    toy = write_toy_shards(tmp_path / "toy", [20, 20, 20])
    _truncate(toy / "train-000000.tar", 0.5)
    _corrupt_png(toy, "train-000003.tar", "train_000050")
    streams = build_streams(_cfg(toy, verify_checksums=False, labelled_batch_size=0, labelled_fraction=None),
                            rank=0, world_size=1, seed=0)
    assert streams.corrupt_samples > 1  # the truncated shard's lost samples plus the broken PNG
    assert len(streams.unlabelled.images) == 60 - streams.corrupt_samples
    assert streams.state_dict()["corrupt_samples"] == streams.corrupt_samples


def test_a_rank_whose_shards_are_all_unreadable_fails_naming_them(tmp_path):
    toy = write_toy_shards(tmp_path / "toy", [20, 20])
    for path in toy.glob("train-*.tar"):
        _truncate(path, 0.0)
    with pytest.raises(DataError, match=r"rank 0 found no usable sample in its shards \[.*train-000000.tar"):
        build_streams(_cfg(toy, verify_checksums=False, labelled_batch_size=0, labelled_fraction=None),
                      rank=0, world_size=1, seed=0)


def test_a_share_that_does_not_fit_is_refused_in_one_line(shards):  # noqa: F811
    with pytest.raises(DataError) as e:
        build_streams(_cfg(shards, memory_limit_gb=1e-6), rank=0, world_size=2, seed=0)
    message = str(e.value)
    assert "\n" not in message and "data.mode=memory: rank 0 would hold 103 training images of 1x8x8" in message
    assert "data.memory_limit_gb=1e-06" in message and "data.mode=stream" in message
    assert len(load_index(shards).split("train").shards) == 11  # fewer than ranks: one would hold nothing
    with pytest.raises(DataError, match=r"11 train shard\(s\) but data.mode=memory gives each of the 12 rank"):
        build_streams(_cfg(shards), rank=0, world_size=12, seed=0)
    with pytest.raises(ConfigError, match=r"data.resampled=True is invalid: expected false with data.mode=memory"):
        _cfg(shards, resampled=True)


def test_vectorised_crop_equals_cropping_each_image():
    x = torch.randn(6, 3, 8, 8)
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    g = gen()
    offsets = torch.randint(0, 3, (6, 2), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    crops = torch.stack([padded[i, :, dy:dy + 8, dx:dx + 8] for i, (dy, dx) in enumerate(offsets.tolist())])
    assert torch.equal(augment(x, "crop_flip", gen()), torch.where(flip[:, None, None, None], crops.flip(-1), crops))
