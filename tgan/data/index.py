"""The shard index (`index.json`): what a shard directory holds, and the checks made before training.

`launch/prepare_data.py` writes the index next to the `train-*.tar` / `test-*.tar` shards. Readers
trust nothing else: the shard list, sample counts and sha256 checksums all come from here, so a
missing, truncated or modified shard is caught with a message naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    root: Path | None = None
    """Directory the index was loaded from (not serialised)."""

    def split(self, name: str) -> SplitIndex:
        if name not in self.splits:
            raise DataError(f"{self.location()}: no split {name!r} (has {', '.join(sorted(self.splits))})")
        return self.splits[name]

    def shard_path(self, shard: ShardInfo) -> Path:
        assert self.root is not None, "shard_path needs an index loaded from a directory"
        return self.root / shard.name

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("root")
        return d

    def location(self) -> str:
        return str(self.root / INDEX_NAME) if self.root is not None else "index"


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def index_from_dict(d: dict, root: Path | None = None) -> DatasetIndex:
    where = str(root / INDEX_NAME) if root is not None else "index"
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
    """Read `<shards_dir>/index.json`; a missing directory or index says how to make one."""
    root = Path(shards_dir)
    path = root / INDEX_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: make the shards with `python launch/prepare_data.py --dataset NAME "
                        f"--root DATA_ROOT --out {root}` (data.shards must point at that --out directory)")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); rerun launch/prepare_data.py") from e
    return index_from_dict(d, root)


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


def check_shard_files(index: DatasetIndex, split: str, *, verify_checksums: bool) -> None:
    """Every shard of `split` exists, and (optionally) its sha256 matches the index."""
    for shard in index.split(split).shards:
        path = index.shard_path(shard)
        if not path.is_file():
            raise DataError(f"shard {path} listed in {index.location()} is missing: rerun launch/prepare_data.py "
                            "(it rewrites only missing or damaged shards)")
        if verify_checksums:
            digest = sha256_file(path)
            if digest != shard.sha256:
                raise DataError(f"shard {path} is damaged: sha256 {digest} does not match {shard.sha256} in "
                                f"{index.location()}; rerun launch/prepare_data.py to rewrite it")
