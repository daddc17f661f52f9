"""What the training loop reads: `build_streams(data_cfg, rank=, world_size=, seed=) -> Streams`.

`data.shards` is a directory or a URL prefix (s3://, gs://, http(s)://; see storage.py).

Start-up reads as little as it can, so that it does not grow with the cluster: every rank reads
the index, checks it against `data.image_size` and the reader count, and lists the shard directory
once (a missing shard fails here, naming it). No rank reads the unlabelled stream's shards before
step 1: each reader checks a shard when it fetches it (reader.py). The subsets chosen by hash (labelled,
validation, gallery; labelled.py) are what needs every training shard before step 1: the ranks of
the process group split that scan (rank r reads shards r, r + W, ...), each checks what it reads
like a reader does and keeps its best candidates per class, and one all_gather merges them into
the same subsets on every rank (each is a per-class "smallest hashes" rule, so merging the ranks'
bests gives what one pass over everything gives). A bad shard found by any rank fails every rank
with its message. Without any of those subsets (no labels, no validation split) no shard is read.

The labelled subset is small (a fraction or a few per class), so it lives in memory as uint8 and is
resampled from there: pass p over it follows a permutation seeded by (seed, rank, p), batches run
across passes without end, and the position is just a batch count. That gives every step
`labelled_batch_size` labelled rows however small the fraction, and an exact resume for free.

The validation split (and the live-validation gallery) are picked in the same scan; the validation
images are kept in memory (`Streams.validation`) and skipped by the unlabelled stream.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader

from tgan.config import DataConfig
from tgan.data.augment import augment
from tgan import dist
from tgan.data.codec import ShardCheck, check_image, decode_image, decode_label, read_shard, to_float
from tgan.data.index import DataError, DatasetIndex, check_shards_present, load_index
from tgan.data.labelled import Selection, make_selection
from tgan.data.reader import ShardStream
from tgan.dist import rank_seed

log = logging.getLogger("tgan.data")


class LabelledStream:
    """Endless batches `(xl, yl)` from the in-memory labelled subset; `keys` names its examples."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, keys: list[str], *, batch_size: int,
                 seed: int, rank: int, augment: str = "none"):
        self.images, self.labels, self.keys = images, labels, keys
        self.batch_size, self.augment = batch_size, augment
        self.seed = rank_seed(seed, rank, "labelled")
        self.position = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, p: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != p:
            gen = torch.Generator().manual_seed(rank_seed(self.seed, 0, f"pass/{p}"))
            self._perm = (p, torch.randperm(len(self.keys), generator=gen))
        return self._perm[1]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.keys)
        start = self.position * self.batch_size
        idx = torch.stack([self._permutation(pos // n)[pos % n] for pos in range(start, start + self.batch_size)])
        gen = torch.Generator().manual_seed(rank_seed(self.seed, 0, f"augment/{self.position}"))
        self.position += 1
        return augment(to_float(self.images[idx]), self.augment, gen), self.labels[idx]


class UnlabelledStream:
    """Endless `(x, y)` batches of one rank from a DataLoader over a ShardStream, with its position."""

    def __init__(self, make_dataset, *, num_workers: int):
        self.make_dataset, self.num_workers = make_dataset, num_workers
        self.position = 0
        self.corrupt = 0
        self._it = None

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            loader = DataLoader(self.make_dataset(start_batch=self.position), batch_size=None,
                                num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
            self._it = iter(loader)
        item = next(self._it)
        if isinstance(item, DataError):  # a shard refused inside a loader worker (see reader.py)
            raise item
        x, y, delta = item
        self.position += 1
        self.corrupt += int(delta)
        return x, y

    def seek(self, position: int) -> None:
        """Continue from batch `position`; the old loader's workers stop when it is released."""
        self.position = position
        self._it = None


class Held:
    """A fixed subset of the training split in memory: uint8 images [N, C, H, W], labels, keys."""

    def __init__(self, chosen: list[tuple[str, int, tuple[int, bytes]]], index: DatasetIndex):
        self.keys = [k for k, _, _ in chosen]
        self.labels = torch.tensor([c for _, c, _ in chosen], dtype=torch.int64)
        self.images = torch.stack([_decode_held(key, i, png, index) for key, _, (i, png) in chosen]) \
            if chosen else torch.empty(0, dtype=torch.uint8)


def _decode_held(key: str, shard: int, png: bytes, index: DatasetIndex) -> torch.Tensor:
    """Decode an image kept in memory (labelled, validation, gallery): one that does not decode cannot be
    skipped like a corrupt sample of the unlabelled stream, so it is refused naming its shard and key."""
    try:
        return decode_image(png, size=index.image_size, channels=index.channels)
    except (ValueError, OSError) as e:  # PIL raises OSError subclasses for damaged pixel data
        path = index.shard_path(index.split("train").shards[shard])
        raise DataError(f"shard {path}, sample {key}: the image does not decode ({type(e).__name__}: {e}); "
                        "rerun launch/prepare_data.py") from e


class Streams:
    def __init__(self, index: DatasetIndex, unlabelled: UnlabelledStream, labelled: LabelledStream | None,
                 layout: dict, validation: Held | None = None, gallery: Held | None = None):
        self.index, self.unlabelled, self.labelled = index, unlabelled, labelled
        self.validation, self.gallery = validation, gallery
        """The held-out validation split and the live-validation gallery (None when not asked for)."""
        self._layout = layout

    @property
    def corrupt_samples(self) -> int:
        """Samples skipped as corrupt so far, including those skipped inside loader worker processes."""
        return self.unlabelled.corrupt

    def state_dict(self) -> dict:
        return {"unlabelled_batches": self.unlabelled.position,
                "labelled_batches": self.labelled.position if self.labelled is not None else 0,
                "corrupt_samples": self.unlabelled.corrupt, "layout": dict(self._layout)}

    def load_state_dict(self, state: dict) -> None:
        changed = {k: (v, self._layout.get(k)) for k, v in state.get("layout", {}).items() if self._layout.get(k) != v}
        if changed:
            log.warning("resuming with a different data layout %s (saved, now): the data order will differ from "
                        "an uninterrupted run", changed)
        self.unlabelled.seek(int(state["unlabelled_batches"]))
        self.unlabelled.corrupt = int(state.get("corrupt_samples", 0))
        if self.labelled is not None:
            self.labelled.position = int(state["labelled_batches"])

    def close(self) -> None:
        self.unlabelled.seek(self.unlabelled.position)


def _check_layout(cfg: DataConfig, index: DatasetIndex, world_size: int) -> None:
    if cfg.image_size != index.image_size:
        raise DataError(f"data.image_size={cfg.image_size} but {index.location()} holds {index.image_size}x"
                        f"{index.image_size} images: set data.image_size={index.image_size} or rerun "
                        f"launch/prepare_data.py with --image-size {cfg.image_size}")
    shards = len(index.split("train").shards)
    readers = world_size * max(1, cfg.num_workers)
    if not cfg.resampled and shards < readers:
        raise DataError(f"{index.location()} has {shards} train shard(s) but {world_size} rank(s) x "
                        f"{max(1, cfg.num_workers)} loader worker(s) (data.num_workers) = {readers} readers need one "
                        "each: rerun prepare_data.py with a smaller --shard-size, lower data.num_workers, or set "
                        "data.resampled=true to draw shards with replacement")


def _scan_train(index: DatasetIndex, make: Callable[[], Selection], verify_checksums: bool) -> Selection:
    """Offer every training sample to a Selection from `make`, the scan split over the process group's
    ranks (see the module docstring); returns the merged Selection, the same on every rank."""
    check = ShardCheck(image_size=index.image_size, channels=index.channels, num_classes=index.num_classes)

    def missing(url: str, n: int, reason: str) -> None:
        # Only reachable with data.verify_checksums=false (otherwise the shard was refused).
        log.warning("shard %s: %d sample(s) unreadable (%s); they are not candidates for the labelled subset",
                    url, n, reason)

    shards = index.split("train").shards
    mine = make()
    found: DataError | None = None
    try:
        for i in range(dist.rank(), len(shards), dist.world_size()):
            sha256 = shards[i].sha256 if verify_checksums else None
            for sample in check.samples(index.shard_path(shards[i]), shards[i].count, missing, sha256=sha256):
                mine.offer(sample["__key__"], decode_label(sample), (i, sample["png"]))
    except DataError as e:  # every rank must reach the gather below, or the others wait forever
        found = e
    if dist.world_size() == 1:
        if found is not None:
            raise found
        return mine
    parts: list = [None] * dist.world_size()
    torch_dist.all_gather_object(parts, found if found is not None else mine.candidates())
    errors = [p for p in parts if isinstance(p, DataError)]
    if errors:
        raise errors[0]
    merged = make()
    for part in parts:
        for key, cls, payload in part:
            merged.offer(key, cls, payload)
    return merged


def build_streams(cfg: DataConfig, *, rank: int, world_size: int, seed: int, gallery_size: int = 0) -> Streams:
    """The training streams of this rank, plus the validation split and (gallery_size > 0) a gallery."""
    index = load_index(cfg.shards)
    _check_layout(cfg, index, world_size)
    check_shards_present(index, "train")
    want_labels = cfg.has_labels and cfg.labelled_batch_size > 0
    make = partial(make_selection, index, validation_size=cfg.validation_size, validation_seed=cfg.validation_seed,
                   fraction=cfg.labelled_fraction if want_labels else None,
                   per_class=cfg.labels_per_class if want_labels else None, label_seed=cfg.label_seed,
                   gallery_size=gallery_size, gallery_seed=cfg.validation_seed)
    selection = make()
    if want_labels or cfg.validation_size or (gallery_size and index.num_classes):
        selection = _scan_train(index, make, cfg.verify_checksums)

    labelled = None
    if want_labels:
        held = Held(selection.labelled(), index)
        if cfg.labelled_batch_size > len(held.keys) and rank == 0:
            log.warning("data.labelled_batch_size=%d is more than the labelled subset's %d examples: every labelled "
                        "batch repeats examples (it is drawn over %.1f passes of the subset)",
                        cfg.labelled_batch_size, len(held.keys), cfg.labelled_batch_size / len(held.keys))
        labelled = LabelledStream(held.images, held.labels, held.keys, batch_size=cfg.labelled_batch_size,
                                  seed=seed, rank=rank,
                                  augment=cfg.augment if cfg.labelled_augment is None else cfg.labelled_augment)
        log.info("labelled subset: %d examples, per class %s", len(held.keys), torch.bincount(held.labels).tolist())
    validation = gallery = None
    if cfg.validation_size:
        validation = Held(selection.validation(), index)
        log.info("validation split: %d examples held out, per class %s", len(validation.keys),
                 torch.bincount(validation.labels).tolist())
    if gallery_size and index.num_classes:
        gallery = Held(selection.gallery(), index)

    shards = index.split("train").shards
    exclude: dict[int, set[str]] = {}  # the unlabelled stream skips the held-out keys
    for key, _, (i, _) in selection.validation():
        exclude.setdefault(i, set()).add(key)
    stream = partial(ShardStream, [index.shard_path(s) for s in shards], [s.count for s in shards],
                     exclude={i: frozenset(keys) for i, keys in exclude.items()},
                     image_size=index.image_size, channels=index.channels, batch_size=cfg.batch_size, seed=seed,
                     rank=rank, world_size=world_size, num_workers=cfg.num_workers,
                     shuffle_buffer=cfg.shuffle_buffer, augment=cfg.augment, resampled=cfg.resampled,
                     checksums=[s.sha256 for s in shards] if cfg.verify_checksums else None,
                     num_classes=index.num_classes)
    layout = {"world_size": world_size, "num_workers": cfg.num_workers, "batch_size": cfg.batch_size,
              "labelled_batch_size": cfg.labelled_batch_size, "seed": seed, "shards": cfg.shards}
    if cfg.validation_size:  # a different held-out set changes which samples the stream yields
        layout.update(validation_size=cfg.validation_size, validation_seed=cfg.validation_seed)
    return Streams(index, UnlabelledStream(stream, num_workers=cfg.num_workers), labelled, layout, validation, gallery)


def iter_split(shards_dir: str | Path, split: str, *, batch_size: int = 1000, limit: int = 0,
               verify_checksums: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The test stream: batches of a split in key order, one pass, for evaluating sets too large to hold as float.

    Strict, because evaluation on a silently smaller test set would be misleading: any unreadable
    or wrong-size sample raises DataError naming the shard. `limit` > 0 stops after that many samples.
    """
    index = load_index(shards_dir)
    check_shards_present(index, split)

    def missing(url: str, n: int, reason: str) -> None:
        raise DataError(f"shard {url}: {n} sample(s) unreadable ({reason}); rerun launch/prepare_data.py")

    xs, ys, total = [], [], 0
    for shard in index.split(split).shards:
        sha256 = shard.sha256 if verify_checksums else None
        for sample in read_shard(index.shard_path(shard), shard.count, missing, sha256=sha256):
            where = f"shard {index.shard_path(shard)}, sample {sample['__key__']}"
            check_image(sample.get("png", b""), size=index.image_size, channels=index.channels, where=where)
            try:
                xs.append(decode_image(sample["png"], size=index.image_size, channels=index.channels))
                ys.append(decode_label(sample))
            except (ValueError, OSError) as e:
                raise DataError(f"{where}: {type(e).__name__}: {e}; rerun launch/prepare_data.py") from e
            total += 1
            if len(xs) == batch_size or total == limit:
                yield to_float(torch.stack(xs)), torch.tensor(ys, dtype=torch.int64)
                xs, ys = [], []
            if total == limit:
                return
    if xs:
        yield to_float(torch.stack(xs)), torch.tensor(ys, dtype=torch.int64)


def load_split(shards_dir: str | Path, split: str, limit: int = 0, *,
               verify_checksums: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split in memory, in key order: (float [-1, 1] [N,C,H,W], int64 [N]); first `limit` if > 0."""
    batches = list(iter_split(shards_dir, split, limit=limit, verify_checksums=verify_checksums))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
