"""The unlabelled stream: shards split by rank and loader worker, shuffled, batched, resumable.

Readers: every (rank, loader worker) pair is one reader, `reader = rank * workers + worker`. Each
epoch the shard list is permuted with a seed shared by all ranks (seed, epoch) and reader r takes
`order[r::readers]`, so one epoch covers every shard exactly once with no coordination. With
`resampled`, each reader instead draws ceil(shards / readers) shards with replacement per epoch
(for clusters with more readers than shards). Samples go through webdataset's shuffle buffer,
seeded per (reader, epoch), then are decoded and batched; batches run across epoch boundaries and
the stream never ends, so every rank yields a batch at every step.

Shards are paths or URLs (s3://, gs://, http(s)://, see storage.py), fetched one at a time. Each is
checked when its reader fetches it, before any of its samples is used (codec.ShardCheck: sha256
when `checksums` are given, every image header, every class), so start-up reads no shard for this
stream and a damaged shard is still refused, naming its URL.

What is webdataset's and what is ours: the shuffle buffer is webdataset's (`wds.shuffle` with our
seeded generator). Ours: the shard order and its split across ranks and loader workers (webdataset's
`split_by_node` / `split_by_worker` are fixed slices of one list; exact resume needs a fresh
permutation per epoch and the round-robin role of each worker below), the tar parser (codec.py;
4.6x faster per member than `tarfile` stream mode, which webdataset's `tar_file_iterator` uses, and
it reports how many samples a truncated shard lost), skipping samples without decoding them, and
the corrupt-sample count.

Exact resume: the position is the number of batches the rank consumed. A DataLoader with k
workers hands out batch i from worker i % k, so after n batches a fresh loader's worker w plays
reader role (w + n) % k and skips the batches that role already produced: whole epochs by
arithmetic on the index's shard counts, the rest by reading raw samples without decoding them.
(Exact as long as no sample was corrupt; corrupt ones are counted, so this is visible.)

Corrupt samples: a truncated tar or an undecodable image is skipped, logged once per shard and
counted; the count travels with each batch out of the worker process (`(x, y, corrupt_delta)`).
A refused shard (DataError) is yielded in place of a batch and raised by the consumer, so its
one-line message crosses the worker-process boundary as it was.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from tgan.data.augment import augment
from tgan.data.codec import ShardCheck, decode_image, decode_label, to_float
from tgan.data.index import DataError
from tgan.dist import rank_seed

log = logging.getLogger("tgan.data")


class ShardStream(IterableDataset):
    """Yields `(x float [B,C,H,W] in [-1,1], y int64 [B], corrupt_delta int)` batches of one rank.

    `epochs=None` repeats forever (training); `epochs=1` reads one pass and yields the last partial batch.
    `paths` are paths or URLs; with `checksums` (the index's sha256 per shard) each shard is verified
    when read; `num_classes` > 0 checks every class is in range.
    """

    def __init__(self, paths: list[str | Path], counts: list[int], *, image_size: int, channels: int,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 shuffle_buffer: int = 1000, augment: str = "none", resampled: bool = False,
                 epochs: int | None = None, start_batch: int = 0, exclude: dict[int, frozenset[str]] | None = None,
                 checksums: list[str] | None = None, num_classes: int = 0):
        self.paths, self.counts = [str(p) for p in paths], list(counts)
        self.exclude = exclude or {}
        """Shard index -> keys this stream never yields (the validation split)."""
        self.checksums = checksums
        self.check = ShardCheck(image_size=image_size, channels=channels, num_classes=num_classes)
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers = max(1, num_workers)
        self.shuffle_buffer, self.augment, self.resampled = shuffle_buffer, augment, resampled
        self.epochs, self.start_batch = epochs, start_batch
        readers = world_size * self.workers
        assert resampled or len(paths) >= readers, "build_streams checks shards >= readers before this"

    def usable(self, i: int) -> int:
        """Samples that shard i contributes: those stored minus the excluded ones."""
        return self.counts[i] - len(self.exclude.get(i, ()))

    def epoch_shards(self, epoch: int, reader: int) -> list[int]:
        n, readers = len(self.paths), self.world_size * self.workers
        if self.resampled:
            rng = random.Random(rank_seed(self.seed, reader, f"resample/{epoch}"))
            return rng.choices(range(n), k=math.ceil(n / readers))
        order = list(range(n))
        random.Random(rank_seed(self.seed, 0, f"shards/{epoch}")).shuffle(order)
        return order[reader::readers]

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        k = self.workers
        role = (worker + self.start_batch) % k
        reader = self.rank * k + role
        done = (self.start_batch - role + k - 1) // k if self.start_batch > role else 0
        try:
            yield from self._batches(reader, skip=done * self.batch_size, batch_index=done)
        except DataError as e:
            yield e

    def _samples(self, i: int, missing) -> list[dict]:
        """Shard i's samples, checked (codec.ShardCheck), without the excluded keys."""
        sha256 = self.checksums[i] if self.checksums is not None else None
        skip = self.exclude.get(i, frozenset())
        return [s for s in self.check.samples(self.paths[i], self.counts[i], missing, sha256=sha256)
                if s["__key__"] not in skip]

    def _batches(self, reader: int, skip: int, batch_index: int):
        xs, ys, corrupt = [], [], [0]
        logged: set[str] = set()

        def missing(path: str, n: int, reason: str) -> None:
            corrupt[0] += n
            if path not in logged:
                logged.add(path)
                log.warning("shard %s: %d sample(s) unreadable (%s); skipped and counted", path, n, reason)

        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            shards = self.epoch_shards(epoch, reader)
            total = sum(self.usable(i) for i in shards)
            if skip >= total:  # a whole epoch already consumed before the restart: no need to read it
                skip -= total
                epoch += 1
                continue
            raw = (s for i in shards for s in self._samples(i, missing))
            rng = random.Random(rank_seed(self.seed, reader, f"shuffle/{epoch}"))
            usable = 0  # samples decoded, or skipped as already seen before a restart
            buffer = self.shuffle_buffer
            for sample in wds.shuffle(buffer, initial=buffer, rng=rng)(raw):
                if skip:  # fast-forward before decoding
                    skip -= 1
                    usable += 1
                    continue
                try:
                    image = decode_image(sample["png"], size=self.image_size, channels=self.channels)
                    label = decode_label(sample)
                except (KeyError, ValueError, OSError) as e:
                    missing(sample["__url__"], 1, f"{sample['__key__']}: {type(e).__name__}: {e}")
                    continue
                usable += 1
                xs.append(image)
                ys.append(label)
                if len(xs) == self.batch_size:
                    yield self._emit(xs, ys, corrupt, reader, batch_index)
                    batch_index += 1
                    xs, ys = [], []
            if usable == 0:  # otherwise this reader would loop over dead shards forever and hang its rank
                raise DataError(f"reader {reader} (rank {self.rank}) found no usable sample in its shards "
                                f"{[self.paths[i] for i in shards]}; rerun launch/prepare_data.py")
            epoch += 1
        if xs:
            yield self._emit(xs, ys, corrupt, reader, batch_index)

    def _emit(self, xs, ys, corrupt, reader, batch_index):
        x = to_float(torch.stack(xs))
        gen = torch.Generator().manual_seed(rank_seed(self.seed, reader, f"augment/{batch_index}"))
        delta, corrupt[0] = corrupt[0], 0
        return augment(x, self.augment, gen), torch.tensor(ys, dtype=torch.int64), delta
