"""The shard index (`index.json`): what a shard directory (or URL prefix) holds.

`launch/prepare_data.py` writes the index next to the `train-*.tar` / `test-*.tar` shards. Readers
trust nothing else: the shard list, sample counts and sha256 checksums all come from here, so a
missing, truncated or modified shard is caught with a message naming the file or URL (missing ones
before training, by one listing; damaged ones when read, before any of their samples is used).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tgan.data import storage

INDEX_NAME = "index.json"
FORMAT_VERSION = 1
ENCODINGS = ("png",)
"""Image encodings of the shards that tgan.data.codec decodes (index field `encoding`)."""


class DataError(ValueError):
    """Bad input data (missing file, checksum mismatch, wrong image size); the message names the file."""


@dataclass(kw_only=True)
class ShardInfo:
    name: str
    """File name relative to the shard directory, e.g. `train-000003.tar`."""
    count: int
    """Samples in the shard."""
    sha256: str
    counts_per_class: list[int] = field(default_factory=list)


@dataclass(kw_only=True)
class SplitIndex:
    count: int
    counts_per_class: list[int]
    shards: list[ShardInfo]


@dataclass(kw_only=True)
class DatasetIndex:
    dataset: str
    image_size: int
    channels: int
    num_classes: int
    """0 for datasets without classes (CelebA); their samples carry no `cls` and read back as y = -1."""
    class_names: list[str]
    splits: dict[str, SplitIndex]
    shard_size: int
    encoding: str = "png"
    """How the images are stored in the shards; one of ENCODINGS (checked when the index is read)."""
    notes: dict = field(default_factory=dict)
    """Conversion choices worth knowing later (e.g. whether SVHN `extra` is included)."""
    format: int = FORMAT_VERSION
    root: str | None = None
    """Directory or URL prefix the index was loaded from (not serialised)."""

    def split(self, name: str) -> SplitIndex:
        if name not in self.splits:
            raise DataError(f"{self.location()}: no split {name!r} (has {', '.join(sorted(self.splits))})")
        return self.splits[name]

    def shard_path(self, shard: ShardInfo) -> str:
        """The shard's path or URL."""
        assert self.root is not None, "shard_path needs an index loaded from a directory"
        return storage.join(self.root, shard.name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("root")
        return d

    def location(self) -> str:
        return storage.join(self.root, INDEX_NAME) if self.root is not None else "index"


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def index_from_dict(d: dict, root: str | Path | None = None) -> DatasetIndex:
    root = None if root is None else str(root)
    where = storage.join(root, INDEX_NAME) if root is not None else "index"
    if not isinstance(d, dict) or not isinstance(d.get("splits"), dict):
        found = type(d.get("splits") if isinstance(d, dict) else d).__name__
        raise DataError(f"{where} is malformed: 'splits' must map split names (train, test) to their shards, "
                        f"found a {found}; rerun launch/prepare_data.py to rewrite it")
    try:
        splits = {
            name: SplitIndex(count=s["count"], counts_per_class=list(s["counts_per_class"]),
                             shards=[ShardInfo(**sh) for sh in s["shards"]])
            for name, s in d["splits"].items()
        }
        fields = {k: d[k] for k in ("dataset", "image_size", "channels", "num_classes", "class_names",
                                    "shard_size")}
    except (KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{where} is malformed ({e!r}); rerun launch/prepare_data.py to rewrite it") from e
    for name, split in splits.items():
        counts = [("count", split.count), *((f"shards[{i}].count", s.count) for i, s in enumerate(split.shards))]
        bad = [(field_, v) for field_, v in counts if not _is_count(v)]
        if bad:
            raise DataError(f"{where} is malformed: splits.{name}.{bad[0][0]}={bad[0][1]!r} is not a count; "
                            "rerun launch/prepare_data.py to rewrite it")
    if d.get("format") != FORMAT_VERSION:
        raise DataError(f"{where} has format {d.get('format')!r}, this code reads {FORMAT_VERSION}: "
                        "rerun launch/prepare_data.py")
    encoding = d.get("encoding", "png")
    if encoding not in ENCODINGS:
        raise DataError(f"{where} has encoding {encoding!r}, this code reads {', '.join(ENCODINGS)}: "
                        "rerun launch/prepare_data.py")
    return DatasetIndex(**fields, splits=splits, encoding=encoding, notes=d.get("notes", {}), root=root)


def load_index(shards_dir: str | Path) -> DatasetIndex:
    """Read `<shards_dir>/index.json` (a directory or URL prefix); a missing index says how to make one."""
    path = storage.join(shards_dir, INDEX_NAME)
    try:
        d = json.loads(storage.read_bytes(path))
    except storage.StorageError as e:
        raise DataError(f"data.shards: {e}") from None
    except FileNotFoundError as e:
        raise DataError(f"{path} not found: make the shards with `python launch/prepare_data.py --dataset NAME "
                        f"--root DATA_ROOT --out {shards_dir}` (data.shards must point at that --out)") from e
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e}); check the URL and the storage credentials "
                        "(AWS_* environment variables for s3://)") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); rerun launch/prepare_data.py") from e
    return index_from_dict(d, shards_dir)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary name and rename, so an interrupted write never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_shards_present(index: DatasetIndex, split: str) -> None:
    """Every shard of `split` exists: one listing of the directory, not a read of every shard.
    Their contents are checked when they are read (see codec.read_shard's `sha256`)."""
    names = [shard.name for shard in index.split(split).shards]
    try:
        gone = storage.missing(index.root, names)
    except storage.StorageError as e:
        raise DataError(f"data.shards: {e}") from None
    except OSError as e:
        raise DataError(f"{index.root} cannot be listed ({e}); check the URL and the storage credentials") from e
    if gone:
        raise DataError(f"shard {storage.join(index.root, gone[0])} listed in {index.location()} is missing"
                        f"{f' (and {len(gone) - 1} more)' if len(gone) > 1 else ''}: rerun launch/prepare_data.py "
                        "(it rewrites only missing or damaged shards)")
