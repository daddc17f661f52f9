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

The validation split (`data.validation_size`) is held out first, by the same rule with its own hash
h_v(key) = sha256("validation/<validation_seed>/<key>") and per-class counts proportional to the
class sizes (rule 1 with fraction = validation_size / number of training examples). The labelled
subset is then the n_c smallest h(key) among the class's remaining keys, and the live-validation
gallery (`eval.gallery_size`) likewise with sha256("gallery/<seed>/<key>"). So the validation split
does not depend on the labelled setting or label_seed, and it never overlaps what is trained on:
the unlabelled stream skips its keys too (`Selection.held_out`).
"""
from __future__ import annotations

import hashlib
import heapq
import math

from tgan.data.index import DataError, DatasetIndex


def label_hash(key: str, seed: int, salt: str = "") -> int:
    """h(key): the rank of `key` in its class; `salt` separates independent selections (validation, gallery)."""
    return int.from_bytes(hashlib.sha256(f"{salt}{seed}/{key}".encode()).digest()[:8], "big")


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


def validation_counts(counts_per_class: list[int], size: int) -> list[int]:
    """Per-class size of the validation split: `size` examples spread in proportion to the classes."""
    total = sum(counts_per_class)
    if size <= 0:
        return [0] * len(counts_per_class)
    if size >= total:
        raise DataError(f"data.validation_size={size} holds out the whole training split ({total} examples): "
                        f"use fewer than {total}")
    return labelled_counts(counts_per_class, fraction=size / total)


class LabelledSelector:
    """Feed every (key, cls, payload) of the training split; `selected()` returns the labelled ones
    (the n_c smallest hashes of each class)."""

    def __init__(self, counts: list[int], seed: int, salt: str = ""):
        self.counts = counts
        self.seed, self.salt = seed, salt
        # Per class a max-heap (by negated rank) of the n_c best seen so far.
        self.heaps: list[list] = [[] for _ in counts]

    def offer(self, key: str, cls: int, payload=None) -> None:
        n = self.counts[cls]
        item = (-label_hash(key, self.seed, self.salt), _Desc(key), payload)
        heap = self.heaps[cls]
        if len(heap) < n:
            heapq.heappush(heap, item)
        elif n and item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)

    def selected(self) -> list[tuple[str, int, object]]:
        """(key, cls, payload) sorted by key: a deterministic order independent of reading order."""
        out = [(d.key, c, p) for c, heap in enumerate(self.heaps) for _, d, p in heap]
        return sorted(out, key=lambda t: t[0])

    def ranked(self, cls: int) -> list[tuple[str, object]]:
        """(key, payload) of the kept items of class `cls`, smallest hash first."""
        return [(d.key, p) for _, d, p in sorted(self.heaps[cls], reverse=True)]


class Selection:
    """The subsets of the training split that are chosen by hash: validation (held out), labelled and
    gallery (both from the rest). Feed every sample once through `offer`, then read the subsets.

    The labelled and gallery selectors keep n_c + (validation n_c) candidates, so that after the
    validation keys are removed the n_c smallest of the rest are still among them.
    """

    def __init__(self, *, validation: list[int], labelled: list[int] | None, gallery: list[int] | None,
                 validation_seed: int, label_seed: int, gallery_seed: int):
        self.num_classes = len(validation)
        self.validation_n, self.labelled_n, self.gallery_n = validation, labelled, gallery
        widen = (lambda counts: [n + v for n, v in zip(counts, validation)])
        self._validation = LabelledSelector(validation, validation_seed, "validation/")
        self._labelled = None if labelled is None else LabelledSelector(widen(labelled), label_seed)
        self._gallery = None if gallery is None else LabelledSelector(widen(gallery), gallery_seed, "gallery/")

    def offer(self, key: str, cls: int, payload=None) -> None:
        for selector in (self._validation, self._labelled, self._gallery):
            if selector is not None and cls >= 0:
                selector.offer(key, cls, payload)

    def candidates(self) -> list[tuple[str, int, object]]:
        """(key, cls, payload) of every sample some subset still keeps: offering the candidates of
        several Selections (each over part of the split) to a fresh one gives the Selection of the
        whole split, since each subset is the smallest hashes of its class."""
        kept = {}
        for selector in (self._validation, self._labelled, self._gallery):
            if selector is not None:
                kept.update({key: (key, cls, p) for key, cls, p in selector.selected()})
        return sorted(kept.values(), key=lambda t: t[0])

    def validation(self) -> list[tuple[str, int, object]]:
        """(key, cls, payload) of the held-out examples, sorted by key."""
        return self._validation.selected()

    @property
    def held_out(self) -> frozenset[str]:
        """Keys that no training stream may yield."""
        return frozenset(key for key, _, _ in self._validation.selected())

    def _rest(self, selector: LabelledSelector, counts: list[int]) -> list[tuple[str, int, object]]:
        held = self.held_out
        out = []
        for c, n in enumerate(counts):
            out += [(key, c, p) for key, p in selector.ranked(c) if key not in held][:n]
        return sorted(out, key=lambda t: t[0])

    def labelled(self) -> list[tuple[str, int, object]]:
        """(key, cls, payload) of the labelled subset (none of them held out), sorted by key."""
        assert self._labelled is not None, "no labelled setting was given"
        return self._rest(self._labelled, self.labelled_n)

    def gallery(self) -> list[tuple[str, int, object]]:
        """(key, cls, payload) of the live-validation gallery (none of them held out), sorted by key."""
        assert self._gallery is not None, "no gallery size was given"
        return self._rest(self._gallery, self.gallery_n)


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



def make_selection(index: DatasetIndex, *, validation_size: int, validation_seed: int,
                   fraction: float | None, per_class: int | None, label_seed: int,
                   gallery_size: int = 0, gallery_seed: int = 0) -> Selection:
    """The Selection of the training split of `index` for these settings (labelled only when
    `fraction` or `per_class` is set, gallery only when `gallery_size` > 0), checked to fit."""
    counts = index.split("train").counts_per_class
    if validation_size and index.num_classes == 0:
        raise DataError(f"data.validation_size={validation_size} but dataset {index.dataset} has no classes "
                        f"({index.location()}): set data.validation_size=0")
    validation = validation_counts(counts, validation_size) if index.num_classes else []
    labelled = None
    if fraction is not None or per_class is not None:
        labelled = setting_counts(index, fraction=fraction, per_class=per_class)
        for c, (n, v, total) in enumerate(zip(labelled, validation, counts)):
            if n + v > total:
                raise DataError(f"class {c} has {total} training examples: {v} held out for validation "
                                f"(data.validation_size={validation_size}) leave fewer than the {n} labelled ones "
                                "asked for: lower data.validation_size or the labelled setting")
    gallery = None
    if gallery_size > 0 and index.num_classes:
        rest = [n - v for n, v in zip(counts, validation)]
        gallery = rest if gallery_size >= sum(rest) else labelled_counts(rest, fraction=gallery_size / sum(rest))
    return Selection(validation=validation, labelled=labelled, gallery=gallery, validation_seed=validation_seed,
                     label_seed=label_seed, gallery_seed=gallery_seed)
