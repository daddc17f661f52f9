"""Shards in a bucket, on a real S3 API server (moto's, over HTTP; see tests/conftest.py).

- launch/prepare_data.py --out s3://... uploads the same bytes it writes to a directory;
- the streams read from s3:// exactly what they read from a directory (batches, labelled subset,
  test split) and resume to the same batches;
- a missing or damaged object, a missing index, and a truncated shard (counted, not fatal, with
  data.verify_checksums=false) are reported with their s3:// URL.
"""
import dataclasses
import importlib.util
import logging
from pathlib import Path

import pytest
import s3fs
import torch

from tgan.config import load_config
from tgan.data.index import DataError, load_index
from tgan.data.streams import build_streams, load_split

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"


def _data(shards, **overrides):
    """The debug recipe's data settings on `shards`."""
    return dataclasses.replace(load_config(DEBUG).data, shards=str(shards), **overrides)


def _batches(streams, n):
    return [next(streams.unlabelled) for _ in range(n)], [next(streams.labelled) for _ in range(n)]


def test_prepare_data_uploads_shards_that_stream_exactly_like_the_directory(s3_bucket, debug_shards, capsys):
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "launch" / "prepare_data.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    url = f"{s3_bucket}/cli-digits"
    # The debug recipe's shards: digits at 16 px in shards of 200 (tgan.train.shards.DIGITS_SHARD_SIZE).
    assert cli.main(["--dataset", "digits", "--image-size", "16", "--shard-size", "200", "--out", url,
                     "--no-progress"]) == 0, capsys.readouterr().err
    assert load_index(url).to_dict() == load_index(debug_shards).to_dict()  # same shards, same sha256s
    assert load_index(url).location() == f"{url}/index.json"

    local = build_streams(_data(debug_shards), rank=1, world_size=2, seed=3)
    remote = build_streams(_data(url), rank=1, world_size=2, seed=3)
    assert remote.labelled.keys == local.labelled.keys
    (xa, la), (xb, lb) = _batches(local, 12), _batches(remote, 12)  # 12 x 16 > one pass of rank 1's shards
    for (a, ya), (b, yb) in zip(xa + la, xb + lb):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    # Exact resume from the bucket: a fresh stream told to continue at batch 5 yields batches 5, 6, ...
    resumed = build_streams(_data(url), rank=1, world_size=2, seed=3)
    resumed.load_state_dict({**local.state_dict(), "unlabelled_batches": 5, "labelled_batches": 5})
    (xr, lr) = _batches(resumed, 7)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(xr + lr, xa[5:] + la[5:]))
    x_local, y_local = load_split(debug_shards, "test")
    x_remote, y_remote = load_split(url, "test")
    assert torch.equal(x_local, x_remote) and torch.equal(y_local, y_remote)
    for s in (local, remote, resumed):
        s.close()


def test_a_missing_damaged_or_truncated_object_is_named_by_its_url(s3_bucket, debug_shards, caplog):
    fs = s3fs.S3FileSystem()
    url = f"{s3_bucket}/broken"
    names = sorted(p.name for p in debug_shards.glob("*.tar"))
    for name in [*names, "index.json"]:
        fs.put_file(str(debug_shards / name), f"{url[5:]}/{name}")
    with pytest.raises(DataError, match=rf"{s3_bucket}/nowhere/index.json not found.*prepare_data.py"):
        build_streams(_data(f"{s3_bucket}/nowhere"), rank=0, world_size=1, seed=0)

    good = (debug_shards / "train-000004.tar").read_bytes()
    fs.rm_file(f"{url[5:]}/train-000004.tar")
    with pytest.raises(DataError, match=rf"shard {url}/train-000004.tar listed in {url}/index.json is missing"):
        build_streams(_data(url), rank=0, world_size=1, seed=0)

    damaged = bytearray(good)
    damaged[3000] ^= 0x01
    fs.pipe_file(f"{url[5:]}/train-000004.tar", bytes(damaged))
    with pytest.raises(DataError, match=rf"shard {url}/train-000004.tar is damaged: sha256"):
        build_streams(_data(url), rank=0, world_size=1, seed=0)  # the labelled scan reads every shard

    # Truncated, and checksums off: its lost samples are skipped, counted and logged with the URL.
    fs.pipe_file(f"{url[5:]}/train-000004.tar", good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="tgan.data"):
        streams = build_streams(_data(url, verify_checksums=False, labelled_batch_size=0), rank=0,
                                world_size=1, seed=0)
        for _ in range(100):  # 1600 samples: more than one pass over the 1437 training images
            next(streams.unlabelled)
    streams.close()
    assert streams.corrupt_samples > 0
    assert any(f"{url}/train-000004.tar" in r.getMessage() and "skipped and counted" in r.getMessage()
               for r in caplog.records)


def test_shards_over_http_read_like_the_directory_and_a_missing_one_is_named(debug_shards, tmp_path):
    """http(s):// has no listing: presence is checked with one HEAD per shard (storage.missing)."""
    import functools
    import http.server
    import shutil
    import threading

    served = tmp_path / "www"
    shutil.copytree(debug_shards, served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        local = build_streams(_data(debug_shards), rank=0, world_size=1, seed=1)
        remote = build_streams(_data(url), rank=0, world_size=1, seed=1)
        assert remote.labelled.keys == local.labelled.keys
        for _ in range(3):
            assert torch.equal(next(local.unlabelled)[0], next(remote.unlabelled)[0])
        (served / "train-000006.tar").unlink()
        with pytest.raises(DataError, match=rf"shard {url}/train-000006.tar listed in {url}/index.json is missing"):
            build_streams(_data(url), rank=0, world_size=1, seed=1)
    finally:
        server.shutdown()
