"""Retrieval metrics over Euclidean distances: k-NN accuracy (k = 1..max_k) and mAP over the full ranking.

Test features are the queries, training features the gallery, as in the authors' code. The distance
matrix of a full evaluation (10,000 x 60,000) is 2.4 GB in fp32, so it is never built: queries are
processed in chunks whose distance block holds about `block_elements` entries; each chunk's rows are
ranked once (one sort serves both metrics) and reduced to k-NN votes and average precisions before the
next chunk is computed. Measured for Fashion-MNIST raw pixels (10,000 x 60,000, 784-d): 0.4 s on an
H100, 32 s on 16 CPU cores, 300 s on a busy 2-core machine (100-d features there: 88 s, 1 GB peak RSS).

Tie rules (documented so results are reproducible):
- equal distances are ordered by gallery index (stable sort), for both k-NN and mAP;
- a k-NN vote tie goes to the tied class whose nearest member is closest to the query.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tgan.config import ConfigError, EvalConfig

DEFAULT_BLOCK_ELEMENTS = 1 << 22
"""About 4M distances per chunk: with the sort keys and the AP buffers, ~150 MB of working memory."""


@dataclass
class RetrievalResult:
    knn_accuracy: list[float]
    """knn_accuracy[k - 1]: fraction of queries whose k-NN majority vote is their true class."""
    mean_average_precision: float
    """Mean over queries of the average precision of the full gallery ranking (relevant = same class)."""
    num_queries_without_relevant: int
    """Queries whose class has no gallery item: they have no AP and are left out of the mAP mean."""


def check_gallery(cfg: EvalConfig, train_count: int, where: str) -> None:
    """Refuse eval.max_k larger than the gallery (the first eval.max_train of the `train_count`
    training images of `where`), before a run trains or an evaluation writes anything."""
    gallery = min(cfg.max_train, train_count) if cfg.max_train else train_count
    if cfg.max_k > gallery:
        limit = f"eval.max_train={cfg.max_train} of the {train_count} in {where}" if cfg.max_train else where
        raise ConfigError(f"eval.max_k={cfg.max_k} is more than the k-NN gallery holds ({gallery} training images, "
                          f"{limit}): use eval.max_k <= {gallery}")


def _check_inputs(gallery: torch.Tensor, gallery_labels: torch.Tensor, queries: torch.Tensor,
                  query_labels: torch.Tensor, max_k: int) -> None:
    if gallery.ndim != 2 or queries.ndim != 2 or gallery.shape[1] != queries.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D: gallery {tuple(gallery.shape)}, "
                         f"queries {tuple(queries.shape)}")
    if gallery_labels.shape != (gallery.shape[0],) or query_labels.shape != (queries.shape[0],):
        raise ValueError(f"one label per row expected: gallery {tuple(gallery.shape)} with labels "
                         f"{tuple(gallery_labels.shape)}, queries {tuple(queries.shape)} with labels "
                         f"{tuple(query_labels.shape)}")
    if (gallery_labels < 0).any() or (query_labels < 0).any():
        raise ValueError("class labels must be >= 0 (-1 marks a data set without classes: it has no k-NN or mAP)")
    if not (torch.isfinite(gallery).all() and torch.isfinite(queries).all()):
        raise ValueError("features contain NaN or inf: the network diverged or its weights are corrupt")
    if not 1 <= max_k <= gallery.shape[0]:
        raise ValueError(f"eval.max_k={max_k} must be between 1 and the gallery size {gallery.shape[0]} "
                         "(lower eval.max_k or raise eval.max_train)")


def knn_predictions(neighbour_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[Q, max_k] labels of each query's neighbours, nearest first -> [Q, max_k] predictions for k = 1..max_k.

    Majority vote among the first k neighbours; among classes with the most votes the one that occurs
    first (its nearest member is closest) wins.
    """
    q, max_k = neighbour_labels.shape
    votes = torch.nn.functional.one_hot(neighbour_labels, num_classes).cumsum(dim=1)  # [Q, k, C]
    position = torch.arange(max_k, device=neighbour_labels.device).expand(q, max_k)
    first = torch.full((q, num_classes), max_k, dtype=torch.long, device=neighbour_labels.device)
    # scatter_reduce "amin" gives each class the position of its nearest member (max_k if absent).
    first = first.scatter_reduce(1, neighbour_labels, position, reduce="amin")
    # A class with the most votes among the first k has its first member within them, so its
    # position is < max_k and "more votes, then earlier first member" is one integer score.
    score = votes * (max_k + 1) - first[:, None, :]
    return score.argmax(dim=2)


def average_precision(relevant: torch.Tensor) -> torch.Tensor:
    """[Q, N] bool relevance of each query's gallery ranking, best first -> [Q] AP (NaN without relevant items).

    AP = (1/R) * sum over relevant ranks i of precision@i, with precision@i = (#relevant in top i) / i.
    """
    hits = relevant.cumsum(dim=1, dtype=torch.float64)
    ranks = torch.arange(1, relevant.shape[1] + 1, dtype=torch.float64, device=relevant.device)
    precision_at_hits = torch.where(relevant, hits / ranks, torch.zeros((), dtype=torch.float64))
    return precision_at_hits.sum(dim=1) / hits[:, -1]


def _ranking(distances: torch.Tensor) -> torch.Tensor:
    """[Q, N] distances -> [Q, N] gallery indices, nearest first, equal distances by gallery index.

    Sorting (distance, index) pairs packed into one int64 is exact (the bits of a non-negative
    float32 order like its value) and lets numpy's vectorised value sort do the work: it is about
    three times faster on CPU than a stable argsort of the distances.
    """
    n = distances.shape[1]
    bits = (distances + 0.0).view(torch.int32).long()  # + 0.0 turns a -0.0 into 0.0
    keys = (bits << 32) | torch.arange(n, device=distances.device)
    if keys.device.type == "cpu":
        keys = torch.from_numpy(np.sort(keys.numpy(), axis=1))
    else:
        keys = keys.sort(dim=1).values
    return keys & 0xFFFFFFFF


@torch.no_grad()
def retrieval_metrics(gallery: torch.Tensor, gallery_labels: torch.Tensor, queries: torch.Tensor,
                      query_labels: torch.Tensor, *, max_k: int = 10,
                      block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> RetrievalResult:
    """k-NN accuracy for k = 1..max_k and mAP of `queries` against `gallery` (Euclidean, chunked)."""
    _check_inputs(gallery, gallery_labels, queries, query_labels, max_k)
    gallery = gallery.float()
    queries = queries.float().to(gallery.device)
    gallery_labels = gallery_labels.long().to(gallery.device)
    query_labels = query_labels.long().to(gallery.device)
    num_classes = int(max(gallery_labels.max(), query_labels.max())) + 1
    chunk = max(1, block_elements // gallery.shape[0])

    correct = torch.zeros(max_k, dtype=torch.long)
    ap_sum, ap_count = 0.0, 0
    for start in range(0, queries.shape[0], chunk):
        labels = query_labels[start:start + chunk]
        order = _ranking(torch.cdist(queries[start:start + chunk], gallery))
        ranked = gallery_labels[order]
        del order
        predictions = knn_predictions(ranked[:, :max_k], num_classes)
        correct += (predictions == labels[:, None]).sum(dim=0).cpu()
        ap = average_precision(ranked == labels[:, None])
        valid = ~ap.isnan()
        ap_sum += float(ap[valid].sum())
        ap_count += int(valid.sum())

    n = queries.shape[0]
    return RetrievalResult(
        knn_accuracy=(correct.double() / n).tolist(),
        mean_average_precision=ap_sum / ap_count if ap_count else float("nan"),
        num_queries_without_relevant=n - ap_count)
