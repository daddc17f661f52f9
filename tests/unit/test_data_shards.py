"""Shard writing and the checks before training: round trip, rerun/interrupt, and every bad input."""
from __future__ import annotations

import importlib.util
import io
import json
import logging
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from tgan.config import DataConfig
from tgan.data.codec import encode_sample
from tgan.data.index import DataError, load_index, sha256_file
from tgan.data.prepare import PARTIAL_NAME, write_shards
from tgan.data.sources import array_source
from tgan.data.streams import build_streams, iter_split, load_split

REPO = Path(__file__).resolve().parents[2]


def random_source(n_train=60, n_test=20, size=8, channels=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = {s: rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
              for s, n in (("train", n_train), ("test", n_test))}
    labels = {s: np.arange(len(images[s])) % classes for s in images}
    return array_source("random", images, labels, [f"c{i}" for i in range(classes)], image_size=size), images, labels


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_every_image_and_label_comes_back_exactly(tmp_path, channels):
    source, images, labels = random_source(channels=channels)
    index = write_shards(source, tmp_path, shard_size=16, progress=False)
    assert [s.count for s in index.split("train").shards] == [16, 16, 16, 12]
    assert index.split("train").counts_per_class == [20, 20, 20]
    assert load_index(tmp_path).to_dict() == index.to_dict()
    for split in ("train", "test"):
        x, y = load_split(tmp_path, split)
        assert x.dtype == torch.float32 and x.shape == (len(images[split]), channels, 8, 8)
        assert x.min() >= -1 and x.max() <= 1
        np.testing.assert_array_equal(to_uint8(x), images[split])
        np.testing.assert_array_equal(y.numpy(), labels[split])
    x, _ = load_split(tmp_path, "test", limit=5)
    assert x.shape[0] == 5
    batches = list(iter_split(tmp_path, "train", batch_size=25))
    assert [b[0].shape[0] for b in batches] == [25, 25, 10]
    np.testing.assert_array_equal(to_uint8(torch.cat([b[0] for b in batches])), images["train"])
    assert [b[0].shape[0] for b in iter_split(tmp_path, "train", batch_size=25, limit=30)] == [25, 5]


def test_shards_are_byte_reproducible(tmp_path):
    source, _, _ = random_source()
    a = write_shards(source, tmp_path / "a", shard_size=16, progress=False)
    b = write_shards(source, tmp_path / "b", shard_size=16, progress=False)
    assert [s.sha256 for s in a.split("train").shards] == [s.sha256 for s in b.split("train").shards]


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_keeping_complete_shards_and_rewriting_damaged_ones(tmp_path):
    source, _, _ = random_source()
    good_sample = source.splits["train"].sample

    def dies_at_40(i):  # the writer is killed while writing the third shard (samples 32..47)
        if i == 40:
            raise Interrupted
        return good_sample(i)

    source.splits["train"].sample = dies_at_40
    with pytest.raises(Interrupted):
        write_shards(source, tmp_path, shard_size=16, progress=False)
    assert not (tmp_path / "index.json").exists() and (tmp_path / PARTIAL_NAME).exists()
    assert (tmp_path / "train-000002.tar.tmp").exists() and not (tmp_path / "train-000002.tar").exists()
    done = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("train-00000[01].tar")}
    assert len(done) == 2

    source.splits["train"].sample = good_sample
    # damage a complete shard: the rerun must notice (sha256) and rewrite it
    damaged = tmp_path / "train-000001.tar"
    data = bytearray(damaged.read_bytes())
    data[700] ^= 0xFF
    damaged.write_bytes(bytes(data))
    index = write_shards(source, tmp_path, shard_size=16, progress=False)
    assert (tmp_path / "train-000000.tar").stat().st_mtime_ns == done["train-000000.tar"]  # kept
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / PARTIAL_NAME).exists()
    reference = write_shards(random_source()[0], tmp_path / "ref", shard_size=16, progress=False)
    assert index.to_dict()["splits"] == reference.to_dict()["splits"]
    for shard in index.split("train").shards:
        assert sha256_file(tmp_path / shard.name) == shard.sha256


def test_rerun_with_other_settings_withdraws_the_index_until_done_and_removes_stale_shards(tmp_path):
    source, _, _ = random_source()
    write_shards(source, tmp_path, shard_size=16, progress=False)
    good_sample = source.splits["train"].sample

    def dies_at_50(i):
        if i == 50:
            raise Interrupted
        return good_sample(i)

    source.splits["train"].sample = dies_at_50
    with pytest.raises(Interrupted):
        write_shards(source, tmp_path, shard_size=25, progress=False)
    assert not (tmp_path / "index.json").exists()  # shards 0-1 changed: the old index must not be trusted
    with pytest.raises(DataError, match="index.json not found"):
        load_index(tmp_path)
    source.splits["train"].sample = good_sample
    index = write_shards(source, tmp_path, shard_size=25, progress=False)
    assert sorted(p.name for p in tmp_path.glob("train-*")) == ["train-000000.tar", "train-000001.tar",
                                                                "train-000002.tar"]
    assert [s.count for s in index.split("train").shards] == [25, 25, 10]
    x, _ = load_split(tmp_path, "train")
    assert x.shape[0] == 60


def _cfg(path, **kw) -> DataConfig:
    return DataConfig(shards=str(path), image_size=kw.pop("image_size", 8), batch_size=kw.pop("batch_size", 4),
                      labelled_batch_size=kw.pop("labelled_batch_size", 0), **kw)


@pytest.fixture
def shards(tmp_path):
    write_shards(random_source()[0], tmp_path / "shards", shard_size=16, progress=False)
    return tmp_path / "shards"


def test_missing_index_and_missing_shard_name_the_file(tmp_path, shards):
    with pytest.raises(DataError, match=r"nowhere/index.json not found.*prepare_data.py"):
        build_streams(_cfg(tmp_path / "nowhere"), rank=0, world_size=1, seed=0)
    (shards / "train-000003.tar").unlink()
    with pytest.raises(DataError, match=r"train-000003.tar .*is missing"):
        build_streams(_cfg(shards), rank=0, world_size=1, seed=0)


def test_an_index_with_an_unknown_encoding_is_refused_naming_it(shards):
    path = shards / "index.json"
    index = json.loads(path.read_text())
    assert load_index(shards).encoding == index["encoding"] == "png"
    path.write_text(json.dumps({**index, "encoding": "jpeg"}))
    with pytest.raises(DataError, match=r"index.json has encoding 'jpeg', this code reads png"):
        load_index(shards)


def _first_error(streams, limit=40):
    """Read batches until a DataError; returns (images read before it, the error)."""
    seen = []
    for _ in range(limit):
        try:
            x, _ = next(streams.unlabelled)
        except DataError as e:
            return torch.cat(seen) if seen else torch.empty(0), e
        seen.append(x)
    raise AssertionError(f"no DataError within {limit} batches")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_flipped_byte_refuses_the_shard_when_read_before_any_of_its_samples_is_used(shards, num_workers):
    path = shards / "train-000002.tar"
    data = bytearray(path.read_bytes())
    data[1500] ^= 0x01
    path.write_bytes(bytes(data))
    # Start-up reads no shard of the unlabelled stream: the reader checks each when it fetches it.
    streams = build_streams(_cfg(shards, num_workers=num_workers, shuffle_buffer=1), rank=0, world_size=1, seed=0)
    seen, error = _first_error(streams)
    assert re.fullmatch(r"shard \S*train-000002.tar is damaged: sha256 \w+ does not match \w+ in its index.json; "
                        r"rerun launch/prepare_data.py to rewrite it", str(error)), str(error)  # one line, also from a worker
    _, images, _ = random_source()
    damaged = torch.from_numpy(images["train"][32:48]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    assert not any(torch.equal(x, d) for x in seen for d in damaged)  # none of its samples was used
    # With a labelled subset, the start-up scan (split over the ranks) reads every shard and refuses it.
    with pytest.raises(DataError, match=r"train-000002.tar is damaged: sha256"):
        build_streams(_cfg(shards, labelled_batch_size=2, labels_per_class=2), rank=0, world_size=1, seed=0)


def _rewrite_shard(shards: Path, name: str, samples: list[dict]) -> None:
    """Replace a shard and record its new sha256 and count in the index, as a buggy writer might have."""
    with open(shards / name, "wb") as f, wds.TarWriter(f, encoder=False) as w:
        for s in samples:
            w.write(s)
    d = json.loads((shards / "index.json").read_text())
    for shard in d["splits"]["train"]["shards"]:
        if shard["name"] == name:
            shard["sha256"], shard["count"] = sha256_file(shards / name), len(samples)
    (shards / "index.json").write_text(json.dumps(d))


def test_wrong_size_or_channel_image_is_refused_when_its_shard_is_read(shards):
    rng = np.random.default_rng(1)
    ok = [encode_sample(f"train_{i:06d}", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 0)
          for i in range(16, 31)]
    _rewrite_shard(shards, "train-000001.tar",
                   ok + [encode_sample("train_000031", np.zeros((9, 9, 3), np.uint8), 0)])
    _, error = _first_error(build_streams(_cfg(shards), rank=0, world_size=1, seed=0))
    assert re.search(r"train-000001.tar, sample train_000031: image is 9x9 with 3 .*8x8 with 3", str(error))
    _rewrite_shard(shards, "train-000001.tar",
                   ok + [encode_sample("train_000031", np.zeros((8, 8, 1), np.uint8), 0)])
    with pytest.raises(DataError, match=r"sample train_000031: image is 8x8 with 1 channel"):
        build_streams(_cfg(shards, labelled_batch_size=2, labels_per_class=2), rank=0, world_size=1, seed=0)


def test_config_image_size_must_match_the_index(shards):
    with pytest.raises(DataError, match=r"data.image_size=16 but .*index.json holds 8x8"):
        build_streams(_cfg(shards, image_size=16), rank=0, world_size=1, seed=0)


def test_fewer_shards_than_readers_is_an_error_unless_resampled(shards):
    with pytest.raises(DataError, match=r"4 train shard\(s\) but 3 rank\(s\) x 2 loader worker\(s\).*data.resampled"):
        build_streams(_cfg(shards, num_workers=2), rank=2, world_size=3, seed=0)
    streams = build_streams(_cfg(shards, resampled=True), rank=4, world_size=5, seed=0)
    for _ in range(40):  # several resampled epochs; the rank never runs dry
        x, y = next(streams.unlabelled)
        assert x.shape == (4, 3, 8, 8) and y.shape == (4,)


def _truncate(path: Path, keep_fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def _corrupt_png(shards: Path, name: str, key: str) -> None:
    """Overwrite the middle of one sample's PNG data in place (the tar structure stays valid)."""
    data = bytearray((shards / name).read_bytes())
    at = data.index(f"{key}.png".encode()) + 512 + 40  # past the tar header, into the IDAT chunk
    data[at:at + 16] = b"\x00" * 16
    (shards / name).write_bytes(bytes(data))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_samples_mid_stream_are_skipped_logged_and_counted(shards, num_workers, caplog):
    _truncate(shards / "train-000000.tar", 0.5)  # about half of its 16 samples remain
    _corrupt_png(shards, "train-000003.tar", "train_000050")
    cfg = _cfg(shards, num_workers=num_workers, verify_checksums=False, shuffle_buffer=1, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="tgan.data"):
        streams = build_streams(cfg, rank=0, world_size=1, seed=0)
        for _ in range(60):  # 240 good samples: over four passes of the 60-sample training split
            x, _ = next(streams.unlabelled)
            assert x.shape[0] == 4
    readable = sum(1 for _ in _readable_keys(shards / "train-000000.tar"))
    assert 8 <= readable < 16
    per_pass = (16 - readable) + 1  # the truncated shard's lost samples plus the broken PNG
    passes = 240 / (60 - per_pass)
    if num_workers == 0:  # one reader: the count is exactly the skips of the passes it went through
        assert int(passes) * per_pass <= streams.corrupt_samples <= (int(passes) + 1) * per_pass
        # worker-process logs do not reach caplog (the count above does): logged once per shard
        unreadable = [r for r in caplog.records if "skipped and counted" in r.getMessage()]
        assert len(unreadable) == 2 and {Path(r.args[0]).name for r in unreadable} == {
            "train-000000.tar", "train-000003.tar"}
    else:  # each worker went through at least three of its passes, and their counts reach this process
        assert streams.corrupt_samples >= 3 * per_pass


def test_a_reader_whose_shards_are_all_unreadable_fails_instead_of_hanging(shards):
    for path in shards.glob("train-*.tar"):
        _truncate(path, 0.0)
    streams = build_streams(_cfg(shards, verify_checksums=False), rank=0, world_size=1, seed=0)
    with pytest.raises(DataError, match=r"reader 0 \(rank 0\) found no usable sample"):
        next(streams.unlabelled)


def _readable_keys(path: Path):
    from tgan.data.codec import read_shard
    return (s["__key__"] for s in read_shard(path, 0, lambda *a: None))


def test_load_split_refuses_a_truncated_shard(shards):
    _truncate(shards / "test-000001.tar", 0.6)
    with pytest.raises(DataError, match=r"test-000001.tar is damaged"):
        load_split(shards, "test")
    with pytest.raises(DataError, match=r"test-000001.tar: \d+ sample\(s\) unreadable"):
        load_split(shards, "test", verify_checksums=False)


def _cli(capsys, *args: str) -> tuple[int, str]:
    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "launch/prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main([*args, "--no-progress"])
    return code, capsys.readouterr().err


def test_cli_names_a_missing_root_and_writes_digits(tmp_path, capsys):
    code, err = _cli(capsys, "--dataset", "cifar10", "--out", str(tmp_path / "c"))
    assert code == 2 and "--root is required for --dataset cifar10" in err
    code, err = _cli(capsys, "--dataset", "svhn", "--root", str(tmp_path / "absent"), "--out", str(tmp_path / "s"))
    assert code == 2 and f"--root {tmp_path / 'absent'} does not exist" in err and "ufldl.stanford.edu" in err
    code, err = _cli(capsys, "--dataset", "digits", "--out", str(tmp_path / "d"), "--image-size", "16",
                     "--shard-size", "500")
    assert code == 0, err
    index = load_index(tmp_path / "d")
    assert (index.image_size, index.channels, index.num_classes) == (16, 1, 10)
    assert index.split("train").count + index.split("test").count == 1797
    assert [s.name for s in index.split("train").shards] == ["train-000000.tar", "train-000001.tar",
                                                             "train-000002.tar"]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_agrees_with_tarfile_on_archives_from_other_writers(tmp_path, fmt):
    from tgan.data.codec import tar_members
    files = [("train_000000.png", b"abc"), ("train_000000.cls", b"1"), ("d" * 120 + "/train_000001.png", b"x" * 600),
             ("train_000001.cls", b"")]
    path = tmp_path / "other.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        directory = tarfile.TarInfo("somedir")
        directory.type = tarfile.DIRTYPE  # not a regular file: skipped
        tar.addfile(directory)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        members = [m for m in tar if m.isreg()]
        expected = [(m.name, tar.extractfile(m).read()) for m in members]
    assert list(tar_members(path.read_bytes())) == expected
    # Cut right after a member: every member is whole, but the archive is not (no end-of-archive marker).
    end = members[-1].offset_data + (members[-1].size + 511) // 512 * 512
    with pytest.raises(ValueError, match="truncated: no end-of-archive marker"):
        list(tar_members(path.read_bytes()[:end]))
    broken = bytearray(path.read_bytes())
    broken[512 + 10] ^= 0xFF  # inside the second header (train_000000.png): its checksum no longer matches
    with pytest.raises(ValueError, match="bad tar header checksum"):
        list(tar_members(bytes(broken)))
