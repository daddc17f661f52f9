"""Sample encoding in the shards and reading them back.

A sample is a group of tar members sharing a key: `<key>.png` (lossless, 8-bit grey or RGB),
and `<key>.cls` (class index as ASCII, absent for datasets without classes). Keys are `<split>_<index:06d>` in the source dataset's order,
so they are unique and stable across reruns.
"""
from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tgan.data import storage
from tgan.data.index import DataError


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types (IHDR byte 25) -> channels as decoded: grey, RGB (palette and alpha are not written here).
_PNG_CHANNELS = {0: 1, 2: 3}


def sample_key(split: str, i: int) -> str:
    return f"{split}_{i:06d}"


def encode_sample(key: str, image: np.ndarray, cls: int | None) -> dict:
    """`image` is uint8 HxWxC (C = 1 or 3); returns the dict that webdataset's TarWriter writes."""
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (1, 3), image.shape
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=6)
    sample = {"__key__": key, "png": buf.getvalue()}
    if cls is not None:
        sample["cls"] = str(int(cls)).encode()
    return sample


def png_header(data: bytes) -> tuple[int, int, int]:
    """(width, height, channels) from the PNG IHDR chunk, without decoding the pixels."""
    if len(data) < 26 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    bit_depth, colour = data[24], data[25]
    if bit_depth != 8 or colour not in _PNG_CHANNELS:
        raise ValueError(f"PNG of bit depth {bit_depth} and colour type {colour}; expected 8-bit grey or RGB")
    return width, height, _PNG_CHANNELS[colour]


def check_image(data: bytes, *, size: int, channels: int, where: str) -> None:
    """Raise DataError naming `where` when the stored image is not size x size with `channels` channels."""
    try:
        w, h, c = png_header(data)
    except ValueError as e:
        raise DataError(f"{where}: unreadable image ({e})") from e
    if (w, h, c) != (size, size, channels):
        raise DataError(f"{where}: image is {w}x{h} with {c} channel(s) but the index says "
                        f"{size}x{size} with {channels}; rerun launch/prepare_data.py for this directory")


def decode_image(data: bytes, *, size: int, channels: int) -> torch.Tensor:
    """PNG bytes -> uint8 tensor [C, H, W]; ValueError when it is not size x size x channels."""
    w, h, c = png_header(data)
    if (w, h, c) != (size, size, channels):
        raise ValueError(f"image is {w}x{h}x{c}, expected {size}x{size}x{channels}")
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 in [-1, 1] (the generator's tanh range)."""
    return images.float().div_(127.5).sub_(1.0)


def decode_label(sample: dict) -> int:
    """The `.cls` member as an int (-1 without one); ValueError naming the bytes when it is not a number."""
    if "cls" not in sample:
        return -1
    try:
        return int(sample["cls"])
    except ValueError:
        raise ValueError(f".cls member {sample['cls'][:20]!r} is not a class number") from None


class TarError(ValueError):
    """The tar stream is truncated or its structure is damaged."""


def tar_members(buf: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file in a tar image (ustar, with pax/GNU long names), in order.

    A small parser instead of `tarfile`'s stream mode, which spends ~0.1 ms per member in Python:
    with two members per sample that was a quarter of a loader worker's time.
    """
    pos, long_name = 0, None
    while pos + 512 <= len(buf):
        header = buf[pos:pos + 512]
        if header.count(0) == 512:  # end-of-archive marker
            return
        stored = header[148:156].split(b"\0")[0].strip()
        if not stored or int(stored, 8) != sum(header[:148]) + 256 + sum(header[156:]):
            raise TarError(f"bad tar header checksum at byte {pos}")
        size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
        kind = header[156:157]
        start, pos = pos + 512, pos + 512 + (size + 511) // 512 * 512
        if start + size > len(buf):
            raise TarError(f"truncated: member at byte {start - 512} needs {size} bytes, {len(buf) - start} left")
        data = buf[start:start + size]
        if kind == b"x":  # pax extended header: a `path` record overrides the next member's name
            for record in data.decode("utf-8", "replace").splitlines():
                if " path=" in record:
                    long_name = record.split(" path=", 1)[1]
        elif kind == b"L":  # GNU long name
            long_name = data.rstrip(b"\0").decode()
        elif kind in (b"0", b"\0"):
            name = header[:100].split(b"\0")[0].decode()
            if header[257:262] == b"ustar" and header[345]:
                name = header[345:500].split(b"\0")[0].decode() + "/" + name
            yield long_name or name, data
            long_name = None
    # A complete archive ends with the marker above; without it, it was cut (maybe at a member boundary).
    raise TarError(f"truncated: no end-of-archive marker after byte {pos}")


def read_shard(url: str | Path, expected: int, on_missing: Callable[[str, int, str], None], *,
               sha256: str | None = None) -> Iterator[dict]:
    """Yield the raw samples (`{"__key__", "__url__": url, "png": bytes, ...}`) of one tar shard, in order.

    The shard is fetched whole (one GET for an object store; shards are a few MB), so with `sha256`
    (data.verify_checksums) its digest is checked on the bytes in memory, at no extra read, and a
    shard that cannot be read or does not match is refused with a DataError naming it before any of
    its samples is yielded. Without `sha256`, an unreadable shard, a truncated or corrupt tar ends
    the shard early: the samples the index promised but that could not be read are reported once
    per shard through `on_missing(url, n_missing, reason)` instead of vanishing. An incomplete
    sample at the break is dropped (and counted among the missing).
    """
    try:
        buf = storage.read_bytes(url)
    except OSError as e:
        if sha256 is not None:
            raise DataError(f"shard {url} cannot be read ({e}); check the URL and the storage credentials, "
                            "or rerun launch/prepare_data.py") from e
        on_missing(str(url), expected, f"{type(e).__name__}: {e}")
        return
    if sha256 is not None and (digest := hashlib.sha256(buf).hexdigest()) != sha256:
        raise DataError(f"shard {url} is damaged: sha256 {digest} does not match {sha256} in its index.json; "
                        "rerun launch/prepare_data.py to rewrite it")
    yielded = 0
    reason = ""
    current: dict | None = None
    try:
        for name, data in tar_members(buf):
            key, _, ext = name.rpartition("/")[2].partition(".")
            if current is not None and current["__key__"] != key:
                yielded += 1
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": str(url)}
            current[ext] = data
    except (TarError, ValueError) as e:
        reason = f"{type(e).__name__}: {e}"
        current = None
    if current is not None:
        yielded += 1
        yield current
    if yielded < expected:
        on_missing(str(url), expected - yielded, reason or "fewer samples than the index lists")


@dataclass(frozen=True)
class ShardCheck:
    """What every sample of a shard must satisfy before any sample of that shard is used.

    These checks once ran on every shard, on every rank, before step 1; now each shard is checked
    by whoever reads it, when it reads it (the shard is in memory then anyway).
    """

    image_size: int
    channels: int
    num_classes: int
    """0: the samples carry no class."""

    def samples(self, url: str | Path, expected: int, on_missing: Callable[[str, int, str], None], *,
                sha256: str | None = None) -> list[dict]:
        """The samples of the shard at `url` (see read_shard), after checking every image header and
        class: a wrong-size image or an out-of-range class raises DataError naming shard and sample."""
        samples = list(read_shard(url, expected, on_missing, sha256=sha256))
        for sample in samples:
            where = f"shard {url}, sample {sample['__key__']}"
            if "png" not in sample:
                raise DataError(f"{where}: no .png member")
            check_image(sample["png"], size=self.image_size, channels=self.channels, where=where)
            try:
                cls = decode_label(sample)
            except ValueError as e:
                raise DataError(f"{where}: {e}; rerun launch/prepare_data.py") from e
            if self.num_classes and not 0 <= cls < self.num_classes:
                raise DataError(f"{where}: class {cls} outside 0..{self.num_classes - 1}")
        return samples
