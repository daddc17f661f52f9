"""Turn a dataset into WebDataset shards: `train-*.tar`, `test-*.tar` and `index.json`.

    python launch/prepare_data.py --dataset fashion-mnist --root /usr/share/datasets/fashion-mnist --out data/fashion-mnist
    python launch/prepare_data.py --dataset digits --out data/digits        # offline, no files needed
    python launch/prepare_data.py --dataset digits --out s3://bucket/digits # written locally, then uploaded

Rerunning is safe: complete shards (checked by sha256) are kept, the rest rewritten. See docs/DATA.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tgan.data.index import DataError  # noqa: E402
from tgan.data.prepare import DEFAULT_SHARD_SIZE, write_shards  # noqa: E402
from tgan.data.sources import DATASETS, DEFAULT_SIZE, make_source  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", help="directory holding the dataset's files (not needed for digits)")
    p.add_argument("--out", required=True, help="output directory or URL prefix (s3://, gs://) for the shards and index.json")
    p.add_argument("--download", action="store_true", help="let torchvision download missing files")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="samples per shard")
    p.add_argument("--image-size", type=int, help=f"side in pixels (defaults: {DEFAULT_SIZE})")
    p.add_argument("--svhn-extra", action="store_true", help="SVHN: append the 531,131 'extra' images to train")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        source = make_source(args.dataset, args.root, download=args.download, image_size=args.image_size,
                             svhn_extra=args.svhn_extra)
        index = write_shards(source, args.out, shard_size=args.shard_size, progress=not args.no_progress)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C): the shards completed in {args.out} are kept; run the same command to "
              "finish (it checks them and writes the rest)", file=sys.stderr)
        return 130
    for name, split in index.splits.items():
        print(f"{name}: {split.count} images in {len(split.shards)} shard(s), per class {split.counts_per_class}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
