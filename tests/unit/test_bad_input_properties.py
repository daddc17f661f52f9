"""Property-based bad input (hypothesis): whatever a user types after --set, and whatever bytes of a
shard get damaged, the outcome is one of the documented ones and never another exception.

- `--set key=value` for every config field, with values of every YAML shape (and some that are not
  YAML): the config resolves, or ConfigError names the problem.
- A shard with random bytes flipped or cut off: with data.verify_checksums it is refused by its sha256,
  naming the file; without, every sample is either read or skipped and counted (read + counted = the
  index's count), or the scan refuses it naming the file.

Checkpoint damage is the checkpoint manifest's business (tests/unit/test_checkpoint.py).
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tgan.config import Config, ConfigError, DataConfig, load_config
from tgan.data.index import DataError, load_index
from tgan.data.prepare import write_shards
from tgan.data.reader import ShardStream
from tgan.data.sources import array_source
from tgan.data.streams import build_streams

DEBUG = Path(__file__).resolve().parents[2] / "launch" / "recipes" / "debug.yaml"


def _dotted_fields() -> list[str]:
    """Every settable key, from the dataclasses themselves (a new field is covered without a test edit)."""
    hints = typing.get_type_hints(Config)
    return [f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
            for f in dataclasses.fields(hints[section.name])]


YAML_SHAPES = ["null", "~", "true", "no", "0", "-1", "1e9", "1000000000", "-0.0", "inf", "-inf", "nan", ".inf",
               "''", "' '", "[]", "[1, 2]", "{}", "{a: 1}", "[unclosed", "{a: ", "a: b: c", "!!python/name:os.system",
               "&x [*x]", "\t", "0x10", "1_000", "2025-01-01", "1/64", "runs/x", "s3://b/r", "/abs/path"]
VALUES = st.one_of(st.sampled_from(YAML_SHAPES), st.integers(-10**20, 10**20).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=12))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_dotted_fields()), VALUES), min_size=1, max_size=3))
def test_any_set_value_for_any_field_resolves_or_is_a_config_error(overrides):
    try:
        load_config(DEBUG, [f"{key}={value}" for key, value in overrides])
    except ConfigError as e:
        assert "\n" not in str(e).strip()  # one line


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """Two training shards of 8 grey 8x8 images in 2 classes, and their pristine bytes."""
    out = tmp_path_factory.mktemp("damage")
    labels = np.tile([0, 1], 8)
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    write_shards(array_source("toy", {"train": images, "test": images[:4]}, {"train": labels, "test": labels[:4]},
                              ["a", "b"], image_size=8), out, shard_size=8, progress=False)
    index = load_index(out)
    paths = [Path(index.shard_path(s)) for s in index.split("train").shards]
    return out, paths, [p.read_bytes() for p in paths]


def _damage(data: bytes, where: float, length: int, xor: int, cut: bool) -> bytes:
    start = min(int(where * len(data)), len(data) - 1)
    if cut:
        return data[:start]
    stop = min(start + length, len(data))
    return data[:start] + bytes(b ^ xor for b in data[start:stop]) + data[stop:]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shard=st.integers(0, 1), where=st.floats(0, 1), length=st.integers(1, 64), xor=st.integers(1, 255),
       cut=st.booleans())
def test_a_damaged_shard_is_refused_naming_it_or_its_samples_are_skipped_and_counted(shard_set, shard, where,
                                                                                       length, xor, cut):
    root, paths, pristine = shard_set
    for path, data in zip(paths, pristine):
        path.write_bytes(data)
    paths[shard].write_bytes(_damage(pristine[shard], where, length, xor, cut))
    cfg = DataConfig(shards=str(root), image_size=8, batch_size=4, labelled_batch_size=2, labels_per_class=2)
    with pytest.raises(DataError, match=f"{paths[shard]} is damaged: sha256"):
        build_streams(cfg, rank=0, world_size=1, seed=0)

    unchecked = dataclasses.replace(cfg, verify_checksums=False)
    try:
        build_streams(unchecked, rank=0, world_size=1, seed=0)  # the scan of headers, labels, labelled images
    except DataError as e:
        assert str(paths[shard]) in str(e)
        return
    stream = ShardStream(paths, [8, 8], image_size=8, channels=1, batch_size=4, seed=0, epochs=1)
    read = counted = 0
    for x, _, corrupt in stream:
        read, counted = read + len(x), counted + corrupt
    assert read + counted == 16, (read, counted)
