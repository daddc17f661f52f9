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

data.mode=memory replaces the unlabelled stream's loader workers for sets that fit: after the scan,
rank r decodes its share, shards r, r + W, ... less the held-out keys (checked like a reader checks
them, unreadable samples skipped and counted), once, into one uint8 tensor on the training device,
and a MemoryStream gathers batches there as the labelled stream does (per-pass permutations seeded
by (seed, rank, pass), position = batch count, so resume is exact). An epoch covers the same
samples as a stream-mode epoch over all ranks; which rank holds which shard, and the order, differ.
"""
from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader, Dataset

from tgan import dist
from tgan.config import DataConfig
from tgan.data.augment import augment
from tgan.data.codec import ShardCheck, check_image, decode_image, decode_label, read_shard, to_float
from tgan.data.index import DataError, DatasetIndex, check_shards_present, load_index
from tgan.data.labelled import Selection, make_selection
from tgan.data.reader import ShardStream
from tgan.dist import rank_seed

log = logging.getLogger("tgan.data")


def _ignore_interrupt(worker_id: int) -> None:
    """A terminal's Ctrl-C reaches the loader workers too: the training process decides what it means
    (finish the step and checkpoint, tgan/app/train.py), so a worker must not die of it meanwhile."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

class MemoryStream:
    """Endless batches `(x, y)` gathered from uint8 images [N, C, H, W] held on their device (the labelled
    subset; the rank's share of the training split with data.mode=memory). Pass p over the N images
    follows a permutation seeded by (seed, p), batches run across passes, the position is a batch
    count, and the permutation, the gather, the float conversion and the augmentation all run on the
    images' device (random draws from a generator there), so a batch costs the host no transfer or wait."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, seed: int,
                 augment: str = "none", corrupt: int = 0):
        self.images, self.labels = images, labels.to(images.device)
        self.batch_size, self.augment, self.seed = batch_size, augment, seed
        self.position = 0
        self.corrupt = corrupt
        """Samples of this rank's shards skipped as unreadable when they were loaded."""
        self._perm: tuple[int, torch.Tensor] | None = None

    def _generator(self, purpose: str) -> torch.Generator:
        return torch.Generator(self.images.device).manual_seed(rank_seed(self.seed, 0, purpose))

    def _permutation(self, p: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != p:
            n, device = len(self.images), self.images.device
            self._perm = (p, torch.randperm(n, generator=self._generator(f"pass/{p}"), device=device))
        return self._perm[1]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.images)
        pos, end, parts = self.position * self.batch_size, (self.position + 1) * self.batch_size, []
        while pos < end:  # the slices of the passes this batch spans (several when n < batch_size)
            p, i = divmod(pos, n)
            take = min(n - i, end - pos)
            parts.append(self._permutation(p)[i:i + take])
            pos += take
        idx = torch.cat(parts)
        gen = self._generator(f"augment/{self.position}")
        self.position += 1
        return augment(to_float(self.images[idx]), self.augment, gen), self.labels[idx]

    def seek(self, position: int) -> None:
        self.position = position


class LabelledStream(MemoryStream):
    """The labelled subset's batches `(xl, yl)`; `keys` names its examples. Seeded per rank."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, keys: list[str], *, batch_size: int,
                 seed: int, rank: int, augment: str = "none"):
        super().__init__(images, labels, batch_size=batch_size, seed=rank_seed(seed, rank, "labelled"),
                         augment=augment)
        self.keys = keys


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
                                num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                                worker_init_fn=_ignore_interrupt)
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
    def __init__(self, index: DatasetIndex, unlabelled: UnlabelledStream | MemoryStream,
                 labelled: LabelledStream | None, layout: dict, validation: Held | None = None, gallery: Held | None = None):
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


class _DecodedShards(Dataset):
    """Item j: the samples of shard `mine[j]`, checked like a reader checks them and decoded, as
    `(uint8 [k, C, H, W], int64 [k], skipped)`, or the DataError that refused the shard (so that its
    one-line message crosses the loader-worker boundary as it was)."""

    def __init__(self, index: DatasetIndex, mine: list[int], exclude: dict[int, frozenset[str]], verify: bool):
        self.paths = [index.shard_path(s) for s in index.split("train").shards]
        self.shards = index.split("train").shards
        self.mine, self.exclude, self.verify = mine, exclude, verify
        self.size, self.channels = index.image_size, index.channels
        self.check = ShardCheck(image_size=index.image_size, channels=index.channels, num_classes=index.num_classes)

    def __len__(self) -> int:
        return len(self.mine)

    def __getitem__(self, j: int):
        i, skipped = self.mine[j], [0]

        def missing(url: str, n: int, reason: str) -> None:
            skipped[0] += n
            log.warning("shard %s: %d sample(s) unreadable (%s); skipped and counted", url, n, reason)

        shard, skip = self.shards[i], self.exclude.get(i, frozenset())
        try:
            samples = self.check.samples(self.paths[i], shard.count, missing,
                                         sha256=shard.sha256 if self.verify else None)
        except DataError as e:
            return e
        images, labels = [], []
        for sample in samples:
            if sample["__key__"] in skip:
                continue
            try:
                images.append(decode_image(sample["png"], size=self.size, channels=self.channels))
                labels.append(decode_label(sample))
            except (KeyError, ValueError, OSError) as e:
                missing(sample["__url__"], 1, f"{sample['__key__']}: {type(e).__name__}: {e}")
        empty = torch.empty(0, self.channels, self.size, self.size, dtype=torch.uint8)
        return (torch.stack(images) if images else empty), torch.tensor(labels, dtype=torch.int64), skipped[0]


def memory_limit_bytes(cfg: DataConfig, device: torch.device) -> tuple[int, str]:
    """The most bytes data.mode=memory may hold on this rank, and where that number comes from."""
    if cfg.memory_limit_gb > 0:
        return int(cfg.memory_limit_gb * 1e9), f"data.memory_limit_gb={cfg.memory_limit_gb:g}"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2, f"half the free memory of {device}"
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages // 2, "half the available RAM"


def _load_rank_share(cfg: DataConfig, index: DatasetIndex, exclude: dict[int, frozenset[str]], *, rank: int,
                     world_size: int, seed: int, device: torch.device) -> MemoryStream:
    """data.mode=memory: decode shards rank, rank + W, ... (minus the held-out keys) into one uint8 tensor
    on `device`, in data.num_workers loader workers; refused before reading when it would not fit."""
    shards = index.split("train").shards
    mine = list(range(rank, len(shards), world_size))
    count = sum(shards[i].count - len(exclude.get(i, ())) for i in mine)
    shape = (index.channels, index.image_size, index.image_size)
    need = count * (math.prod(shape) + 8)  # uint8 pixels + an int64 label each
    limit, source = memory_limit_bytes(cfg, device)
    if need > limit:
        raise DataError(f"data.mode=memory: rank {rank} would hold {count} training images of {shape[0]}x{shape[1]}x"
                        f"{shape[2]} ({need / 1e9:.2f} GB) but the limit is {limit / 1e9:.2f} GB ({source}): set "
                        "data.mode=stream, use more ranks, or raise data.memory_limit_gb")
    images = torch.empty((count, *shape), dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.int64)
    filled = skipped = 0
    loader = DataLoader(_DecodedShards(index, mine, exclude, cfg.verify_checksums), batch_size=None,
                        num_workers=min(cfg.num_workers, len(mine)))
    for item in loader:
        if isinstance(item, DataError):
            raise item
        x, y, lost = item
        images[filled:filled + len(x)], labels[filled:filled + len(y)] = x, y
        filled, skipped = filled + len(x), skipped + lost
    if filled == 0:
        paths = [index.shard_path(shards[i]) for i in mine]
        raise DataError(f"rank {rank} found no usable sample in its shards {paths}; rerun launch/prepare_data.py")
    log.info("data.mode=memory: rank %d holds %d training images (%.1f MB) on %s", rank, filled,
             filled * (math.prod(shape) + 8) / 1e6, device)
    return MemoryStream(images[:filled].to(device), labels[:filled], batch_size=cfg.batch_size,
                        seed=rank_seed(seed, rank, "memory"), augment=cfg.augment, corrupt=skipped)


def _check_layout(cfg: DataConfig, index: DatasetIndex, world_size: int) -> None:
    if cfg.image_size != index.image_size:
        raise DataError(f"data.image_size={cfg.image_size} but {index.location()} holds {index.image_size}x"
                        f"{index.image_size} images: set data.image_size={index.image_size} or rerun "
                        f"launch/prepare_data.py with --image-size {cfg.image_size}")
    shards = len(index.split("train").shards)
    if cfg.mode == "memory":
        if shards < world_size:
            raise DataError(f"{index.location()} has {shards} train shard(s) but data.mode=memory gives each of the "
                            f"{world_size} rank(s) whole shards: rerun prepare_data.py with a smaller --shard-size, "
                            "or set data.mode=stream with data.resampled=true")
        return
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


def build_streams(cfg: DataConfig, *, rank: int, world_size: int, seed: int, gallery_size: int = 0,
                  device: torch.device = torch.device("cpu")) -> Streams:
    """The training streams of this rank, plus the validation split and (gallery_size > 0) a gallery.
    With data.mode=memory both training streams yield batches already on `device`."""
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
        images = held.images.to(device) if cfg.mode == "memory" else held.images
        labelled = LabelledStream(images, held.labels, held.keys, batch_size=cfg.labelled_batch_size,
                                  seed=seed, rank=rank,
                                  augment=cfg.augment if cfg.labelled_augment is None else cfg.labelled_augment)
        if rank == 0:  # the same on every rank; another rank's copy reached the console after the run's table
            log.info("labelled subset: %d examples, per class %s", len(held.keys), torch.bincount(held.labels).tolist())
    validation = gallery = None
    if cfg.validation_size:
        validation = Held(selection.validation(), index)
        if rank == 0:
            log.info("validation split: %d examples held out, per class %s", len(validation.keys),
                     torch.bincount(validation.labels).tolist())
    if gallery_size and index.num_classes:
        gallery = Held(selection.gallery(), index)

    shards = index.split("train").shards
    held_out: dict[int, set[str]] = {}  # the unlabelled stream skips the held-out keys
    for key, _, (i, _) in selection.validation():
        held_out.setdefault(i, set()).add(key)
    exclude = {i: frozenset(keys) for i, keys in held_out.items()}
    layout = {"world_size": world_size, "num_workers": cfg.num_workers, "batch_size": cfg.batch_size,
              "labelled_batch_size": cfg.labelled_batch_size, "seed": seed, "shards": cfg.shards}
    if cfg.validation_size:  # a different held-out set changes which samples the stream yields
        layout.update(validation_size=cfg.validation_size, validation_seed=cfg.validation_seed)
    if cfg.mode == "memory":
        layout.update(mode="memory")
        layout.pop("num_workers")  # the loader workers only decode at start-up; they do not shape the order
        unlabelled = _load_rank_share(cfg, index, exclude, rank=rank, world_size=world_size, seed=seed, device=device)
        return Streams(index, unlabelled, labelled, layout, validation, gallery)
    stream = partial(ShardStream, [index.shard_path(s) for s in shards], [s.count for s in shards],
                     exclude=exclude,
                     image_size=index.image_size, channels=index.channels, batch_size=cfg.batch_size, seed=seed,
                     rank=rank, world_size=world_size, num_workers=cfg.num_workers,
                     shuffle_buffer=cfg.shuffle_buffer, augment=cfg.augment, resampled=cfg.resampled,
                     checksums=[s.sha256 for s in shards] if cfg.verify_checksums else None,
                     num_classes=index.num_classes)
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
