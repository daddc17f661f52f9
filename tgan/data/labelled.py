"""Which training examples count as labelled: a pure function of (key, class, setting, seed).

The rule (also in docs/DATA.md):
1. Per class c with count_c training examples (from the index), the number labelled is
   n_c = min(count_c, max(1, floor(fraction * count_c + 0.5)))  for `labelled_fraction`, or
   n_c = labels_per_class                                        for `labels_per_class`
   (an error if a class has fewer examples than that).
2. Within class c, rank its keys by h(key) = first 8 bytes (big-endian) of sha256("<seed>/<key>"),
   ties by key, and take the n_c smallest.

Every rank, restart and process computes the same set from the shards alone, with no coordination.
Selection streams over the shards once and keeps only the current n_c best per class (a bounded heap),
so memory is proportional to the labelled subset, not to the dataset.
"""
from __future__ import annotations

import hashlib
import heapq
import math

from tgan.data.index import DataError, DatasetIndex


def label_hash(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "big")


def labelled_counts(counts_per_class: list[int], *, fraction: float | None = None,
                    per_class: int | None = None) -> list[int]:
    """n_c for every class under the setting (exactly one of `fraction`, `per_class`)."""
    if (fraction is None) == (per_class is None):
        raise DataError("set exactly one of data.labelled_fraction and data.labels_per_class")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise DataError(f"data.labelled_fraction={fraction!r} is invalid: expected a number in (0, 1]")
        return [min(n, max(1, math.floor(fraction * n + 0.5))) for n in counts_per_class]
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise DataError(f"data.labels_per_class={per_class!r} is invalid: expected an integer >= 1")
    smallest = min(counts_per_class)
    if per_class > smallest:
        c = counts_per_class.index(smallest)
        raise DataError(f"data.labels_per_class={per_class} is more than class {c} has ({smallest} training "
                        f"examples): use at most {smallest}")
    return [per_class] * len(counts_per_class)


def setting_counts(index: DatasetIndex, *, fraction: float | None, per_class: int | None) -> list[int]:
    """n_c for the training split of `index`; datasets without classes cannot have a labelled subset."""
    if index.num_classes == 0:
        raise DataError(f"data.labelled_fraction / data.labels_per_class set, but dataset {index.dataset} "
                        f"has no classes ({index.location()}): unset them")
    return labelled_counts(index.split("train").counts_per_class, fraction=fraction, per_class=per_class)


class LabelledSelector:
    """Feed every (key, cls, payload) of the training split; `selected()` returns the labelled ones."""

    def __init__(self, counts: list[int], seed: int):
        self.counts = counts
        self.seed = seed
        # Per class a max-heap (by negated rank) of the n_c best seen so far.
        self.heaps: list[list] = [[] for _ in counts]

    def offer(self, key: str, cls: int, payload=None) -> None:
        n = self.counts[cls]
        item = (-label_hash(key, self.seed), _Desc(key), payload)
        heap = self.heaps[cls]
        if len(heap) < n:
            heapq.heappush(heap, item)
        elif n and item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)

    def selected(self) -> list[tuple[str, int, object]]:
        """(key, cls, payload) sorted by key: a deterministic order independent of reading order."""
        out = [(d.key, c, p) for c, heap in enumerate(self.heaps) for _, d, p in heap]
        return sorted(out, key=lambda t: t[0])


class _Desc:
    """Key in reverse order, so the max-heap on (-hash, key) evicts the larger key among equal hashes."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key

    def __lt__(self, other: "_Desc") -> bool:
        return self.key > other.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.key == other.key

    def __gt__(self, other: "_Desc") -> bool:
        return self.key < other.key

