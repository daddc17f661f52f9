"""`tgan prepare` (launch/prepare_data.py): a dataset -> WebDataset shards `train-*.tar`, `test-*.tar`
and `index.json` in a directory or under a URL prefix (written locally, then uploaded). See docs/DATA.md."""
from __future__ import annotations

import logging
import sys

from tgan.data.index import DataError
from tgan.data.prepare import write_shards
from tgan.data.sources import DEFAULT_SHARD_SIZE, make_source


def run_prepare(dataset: str, out: str, *, root: str | None = None, download: bool = False,
                shard_size: int = DEFAULT_SHARD_SIZE, image_size: int | None = None, svhn_extra: bool = False,
                progress: bool = True) -> int:
    """Write the shards of `dataset` to `out`, print the count per split and return the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        source = make_source(dataset, root, download=download, image_size=image_size, svhn_extra=svhn_extra)
        index = write_shards(source, out, shard_size=shard_size, progress=progress)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C): the shards completed in {out} are kept; run the same command to "
              "finish (it checks them and writes the rest)", file=sys.stderr)
        return 130
    for name, split in index.splits.items():
        print(f"{name}: {split.count} images in {len(split.shards)} shard(s), per class {split.counts_per_class}")
    return 0
