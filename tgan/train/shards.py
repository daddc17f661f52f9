"""Make sure the shards a run reads exist before any rank opens them.

The offline "digits" set needs no download, so a missing digits shard directory is prepared here
(by rank 0 while the others wait, and by one run at a time: see
write_shards); any other missing data set fails with the command that makes it.
"""
from __future__ import annotations

from pathlib import Path

from tgan import dist
from tgan.config import DataConfig
from tgan.data import storage
from tgan.data.index import INDEX_NAME, DataError
from tgan.data.prepare import write_shards
from tgan.data.sources import make_source

# Digits has 1,437 training images; small shards give every rank and loader worker its own share.
DIGITS_SHARD_SIZE = 200


def ensure_shards(data_cfg: DataConfig) -> str:
    """data.shards (a directory or URL prefix) once it holds an index.json. A store that cannot be
    reached, or a bucket that does not exist, is refused in one line naming data.shards and the endpoint."""
    shards = data_cfg.shards
    if not storage.is_url(shards) and Path(shards).exists() and not Path(shards).is_dir():
        raise DataError(f"data.shards={str(shards)!r} is a file: give the directory that launch/prepare_data.py "
                        "wrote (it holds index.json)")
    try:
        present = storage.exists(storage.join(shards, INDEX_NAME))
    except storage.StorageError as e:
        raise DataError(f"data.shards: {e}") from None
    if not present:
        if data_cfg.dataset != "digits" or storage.read_only(shards):
            out = "<a directory or bucket that this URL serves>" if storage.read_only(shards) else shards
            raise FileNotFoundError(
                f"data.shards={str(shards)!r} has no {INDEX_NAME}; make the shards first with: python "
                f"launch/prepare_data.py --dataset {data_cfg.dataset} --root <directory with its files> "
                f"--out {out} --image-size {data_cfg.image_size}")
        if dist.rank() == 0:
            source = make_source("digits", None, image_size=data_cfg.image_size)
            # reuse_complete: another run that found the directory missing too may have made it meanwhile.
            write_shards(source, shards, shard_size=DIGITS_SHARD_SIZE, progress=False, reuse_complete=True,
                         setting="data.shards")
    dist.barrier()
    return shards
