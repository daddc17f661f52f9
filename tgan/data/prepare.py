"""Write a source as WebDataset tar shards plus `index.json` (the logic behind launch/prepare_data.py).

Safe to interrupt and idempotent: each shard is written to `<name>.tmp`, renamed when complete, and
recorded (name, count, sha256) in `index.json.partial`. A rerun with the same settings keeps every
shard whose file still has the recorded sha256 and rewrites the others; the final `index.json` is
written last, so its presence means the directory is complete. Shards are byte-reproducible (fixed
tar metadata, deterministic PNG), so a rewritten shard has the same checksum as before.

`out` may also be a URL prefix (s3://, gs://, see storage.py): the shards are written into a local
temporary directory as above, then uploaded, the old index.json withdrawn first and the new one
uploaded last, so readers never trust a half-uploaded set.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import webdataset as wds

from tgan import runlock
from tgan.data import storage
from tgan.data.codec import encode_sample, sample_key
from tgan.data.index import (FORMAT_VERSION, INDEX_NAME, DataError, DatasetIndex, ShardInfo, index_from_dict,
                             load_index, sha256_file, write_json_atomic)
from tgan.data.sources import DEFAULT_SHARD_SIZE, Source
from tgan.data.storage import StorageError
from tgan.progress import Progress

log = logging.getLogger("tgan.data")
PARTIAL_NAME = INDEX_NAME + ".partial"


def _counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels, minlength=num_classes).tolist() if num_classes else []


def _previous(out: Path, header: dict) -> dict[str, ShardInfo]:
    """Shard records of the latest earlier run (interrupted, else complete) if its settings match, by name."""
    for name in (PARTIAL_NAME, INDEX_NAME):
        path = out / name
        if not path.is_file():
            continue
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if any(d.get(k) != v for k, v in header.items()):
            log.info("%s was written with other settings; rewriting every shard", path)
            return {}
        return {sh["name"]: ShardInfo(**sh) for s in d.get("splits", {}).values() for sh in s["shards"]}
    return {}


def _write_shard(path: Path, source_split, split: str, start: int, stop: int, num_classes: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        # Fixed owner and mtime: the same samples always give the same bytes, hence the same sha256.
        with wds.TarWriter(f, encoder=False, mtime=0, user="tgan", group="tgan") as writer:
            for i in range(start, stop):
                cls = int(source_split.labels[i]) if num_classes else None
                writer.write(encode_sample(sample_key(split, i), source_split.sample(i), cls))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shards(source: Source, out: str | Path, *, shard_size: int = DEFAULT_SHARD_SIZE,
                 progress: bool = True, reuse_complete: bool = False, setting: str = "--out") -> DatasetIndex:
    """Write `<out>/{train,test}-NNNNNN.tar` and `<out>/index.json` (a directory or URL); returns the index.
    `setting`: what the user called `out` (--out, or data.shards when the trainer prepares digits), for errors.

    One process at a time per `out` (tgan.runlock): a second one waits until the first is done,
    then checks its shards as any rerun does or, with `reuse_complete`, uses a complete set as it is
    (two trainers that found the same shard directory missing at once)."""
    if shard_size < 1:
        raise DataError(f"--shard-size {shard_size} is invalid: expected an integer >= 1")
    if not str(out).strip():  # Path("") is the current directory
        raise DataError("--out is empty: give the directory to write the shards and index.json into")
    if not storage.is_url(out) and Path(out).exists() and not Path(out).is_dir():
        raise DataError(f"--out {out} is a file: give a directory for the shards and index.json")
    if storage.is_url(out):
        try:
            storage.check_writable(str(out))  # before the images are converted, not after
        except StorageError as e:
            raise DataError(f"{setting}: {e}") from None
    with runlock.hold(out, "shards", wait=True):
        if reuse_complete and storage.exists(storage.join(out, INDEX_NAME)):
            return load_index(out)
        if not storage.is_url(out):
            return _write_directory(source, Path(out), shard_size=shard_size, progress=progress)
        return _write_and_upload(source, str(out), shard_size=shard_size, progress=progress, setting=setting)


def _write_and_upload(source: Source, out: str, *, shard_size: int, progress: bool, setting: str) -> DatasetIndex:
    with tempfile.TemporaryDirectory(prefix="tgan-shards-") as tmp:
        index = _write_directory(source, Path(tmp), shard_size=shard_size, progress=progress)
        names = [shard.name for split in index.splits.values() for shard in split.shards]
        try:
            storage.remove(storage.join(out, INDEX_NAME))
            storage.upload_tree(Path(tmp), str(out), names + [INDEX_NAME])
        except StorageError as e:
            raise DataError(f"{setting}: {e}") from None
        except OSError as e:
            raise DataError(f"{setting} {out}: upload failed ({e}); check the URL and the storage credentials "
                            "(AWS_* environment variables for s3://)") from e
    log.info("%s: %d shard(s) uploaded", out, len(names))
    return index_from_dict(index.to_dict(), out)


def _write_directory(source: Source, out: Path, *, shard_size: int, progress: bool) -> DatasetIndex:
    out.mkdir(parents=True, exist_ok=True)
    num_classes = len(source.class_names)
    header = {"format": FORMAT_VERSION, "dataset": source.dataset, "image_size": source.image_size,
              "channels": source.channels, "shard_size": shard_size, "notes": source.notes,
              "split_sizes": {s: len(src) for s, src in source.splits.items()}}
    previous = _previous(out, header)
    # index.json means "complete": withdraw it while shards may change, so no reader trusts a half-rewritten set.
    (out / INDEX_NAME).unlink(missing_ok=True)
    doc = {**header, "num_classes": num_classes, "class_names": source.class_names,
           "encoding": "png", "splits": {}}
    kept = rewritten = 0
    for split, src in source.splits.items():
        shards: list[dict] = []
        doc["splits"][split] = {"count": len(src), "counts_per_class": _counts(src.labels, num_classes),
                                "shards": shards}
        bar = Progress(len(src), desc=f"{source.dataset} {split}", unit="img") if progress else None
        for start in range(0, len(src), shard_size):
            stop = min(start + shard_size, len(src))
            name = f"{split}-{start // shard_size:06d}.tar"
            path = out / name
            old = previous.get(name)
            if old is not None and old.count == stop - start and path.is_file() and sha256_file(path) == old.sha256:
                kept += 1
            else:
                _write_shard(path, src, split, start, stop, num_classes)
                rewritten += 1
            shards.append({"name": name, "count": stop - start, "sha256": sha256_file(path),
                           "counts_per_class": _counts(src.labels[start:stop], num_classes)})
            write_json_atomic(out / PARTIAL_NAME, doc)
            if bar is not None:
                bar.update(stop, note=name)
        if bar is not None:
            bar.close()
        _remove_stale(out, split, {sh["name"] for sh in shards})
    write_json_atomic(out / INDEX_NAME, doc)
    (out / PARTIAL_NAME).unlink()
    log.info("%s: %d shard(s) written, %d already complete", out, rewritten, kept)
    return index_from_dict(doc, out)


def _remove_stale(out: Path, split: str, current: set[str]) -> None:
    """Shards of an earlier run with another --shard-size (and leftover .tmp files) would confuse a reader."""
    for path in sorted(out.glob(f"{split}-*.tar*")):
        if path.name not in current:
            log.info("removing stale %s", path)
            path.unlink()
