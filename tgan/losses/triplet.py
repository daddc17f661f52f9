"""Triplet loss and miners over one set of embeddings (the global labelled batch; see mining.py).

Forms (loss.triplet_form), on non-squared Euclidean distances d+ = d(a, p), d- = d(a, n):
- softmax: softplus(d+ - d-) = -log(e^-d+ / (e^-d+ + e^-d-)), the Hoffer & Ailon softmax-ratio form
  as the triplet-BiGAN authors' code writes it (log of the softmax over the two distances).
- hinge:   max(0, m + d+ - d-).
Both are averaged over the mined triplets.

Miners (loss.miner); rows with label -1 (unlabelled) are never anchor, positive or negative:
- all:      every (a, p, n) with a != p, y_a = y_p, y_n != y_a.
- semihard: the triplets of `all` with d+ < d- and d- - d+ < m (FaceNet's d+ < d- < d+ + m, written
            as the gap against the margin: in float32 d+ + m can round up to d-, which would drop a
            triplet whose gap is below the margin), every one of them.
- hard:     batch-hard (Hermans et al.): per anchor with a positive and a negative, its farthest
            positive and nearest negative; ties go to the lowest row, so the choice is deterministic.
Selection looks at distances only (boolean masks), so gradients flow through the chosen distances.

Memory: `all` and `semihard` have O(N^3) triplets in the N labelled rows, so nothing of that size is
ever held. Anchors are taken in chunks (`anchor_chunk`): a chunk computes its distance rows, a
[chunk, P, N] block of candidate triplets (P = the largest class among the rows: each anchor's
positives are gathered from its own class only, so no block is spent on pairs that are never
positive), sums the loss terms and, at once, their gradient with respect to the embeddings; then
its graph is freed. The whole call therefore holds O(chunk * P * N + N * D) memory, and backward
only scales the stored [N, D] gradient. The sum is accumulated in float64 across chunks.

Distances come from torch.cdist in its direct (not Gram-matrix) mode: exact for near-identical rows,
and its backward defines the gradient at zero distance as 0, so duplicates never give NaN/inf. A
chunk's rows are bit-identical to the same rows of the full [N, N] matrix, so semi-hard selection
does not depend on the chunking.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tgan.config import FORMS, MINERS

CHUNK_BYTES = 64 * 2**20
"""Working memory one chunk of anchors aims at on a CPU: millions of elements per pass, small enough
to stay far below the model's own memory. One anchor may need more."""
GPU_CHUNK_BYTES = 2**30
"""The same on a GPU, where every chunk costs a dozen kernel launches whatever its size: at 64 MiB,
one rank's 32 anchors against 4096 rows (`all`) took 32 one-anchor chunks and 47 ms on an H100; at
1 GiB they take 2 (benchmarks/results/miner_gpu.md), and the rank still stays under 2 GB."""


def chunk_bytes(on_gpu: bool) -> int:
    return GPU_CHUNK_BYTES if on_gpu else CHUNK_BYTES
TRIPLET_BYTES = {"all": 20, "semihard": 40, "hard": 0}
"""Bytes per candidate triplet of a chunk while its loss and gradient are computed (measured with
benchmarks/miner_memory.py: the gap, its loss term and gradient; semihard adds masks and a select)."""
ROW_BYTES_PER_DIM = 8
"""Bytes per (anchor, row, embedding dim) of a chunk: cdist's backward holds a [chunk, N, D] buffer."""


def pairwise_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[len(x), len(y)] Euclidean distances, with finite gradients at zero distance."""
    return torch.cdist(x, y, p=2, compute_mode="donot_use_mm_for_euclid_dist")


def anchor_bytes(rows: int, positives: int, dim: int, miner: str) -> int:
    """Working memory of one anchor in a chunk, among `rows` rows whose largest class has `positives`
    rows, with `dim`-dimensional embeddings."""
    return rows * dim * ROW_BYTES_PER_DIM + rows * 16 + positives * rows * TRIPLET_BYTES[miner]


def anchor_chunk(rows: int, positives: int, dim: int, miner: str, budget: int | None = None) -> int:
    """How many anchors one chunk of `budget` bytes (default CHUNK_BYTES) takes (at least 1)."""
    return max(1, (budget or CHUNK_BYTES) // max(anchor_bytes(rows, positives, dim, miner), 1))


def _terms(gap: torch.Tensor, form: str, margin: float) -> torch.Tensor:
    return F.softplus(gap) if form == "softmax" else F.relu(margin + gap)


class _Positives:
    """Each row's same-class rows as a padded [N, P] index table (P = the largest class), so that a
    chunk of anchors looks at its positives only. Invalid entries (padding, the anchor itself, an
    unlabelled anchor) are masked out by `ok`."""

    def __init__(self, labels: torch.Tensor, anchors: torch.Tensor):
        key = torch.where(labels >= 0, labels, -1)
        order = torch.argsort(key, stable=True)
        sorted_key = key[order]
        start = torch.searchsorted(sorted_key, key[anchors], side="left")
        size = torch.searchsorted(sorted_key, key[anchors], side="right") - start
        self.width = int(size.max()) if anchors.numel() else 0  # the one host sync of mining's setup
        j = torch.arange(self.width, device=labels.device)
        self.index = order[(start[:, None] + j).clamp(max=max(labels.numel() - 1, 0))]  # [anchors, P]
        self.ok = (j < size[:, None]) & (self.index != anchors[:, None]) & (key[anchors] >= 0)[:, None]


def _chunk_sum(emb: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, pos: tuple | None, *,
               form: str, miner: str, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the loss terms, number of triplets) of the triplets anchored at `rows`; `pos` is the
    (index, ok) slice of _Positives for these anchors."""
    d = pairwise_distances(emb[rows], emb)
    y = labels[rows]
    valid = labels >= 0
    neg = valid[None, :] & (labels[None, :] != y[:, None]) & (y >= 0)[:, None]  # [c, N]
    dd = d.detach()
    if miner == "hard":
        same = valid[None, :] & (labels[None, :] == y[:, None]) & (y >= 0)[:, None]
        same[torch.arange(len(rows), device=rows.device), rows] = False
        far_pos = dd.masked_fill(~same, -1.0).argmax(1)  # distances are >= 0, so -1 never wins
        near_neg = dd.masked_fill(~neg, float("inf")).argmin(1)
        keep = same.any(1) & neg.any(1)
        gap = d.gather(1, far_pos[:, None]).squeeze(1) - d.gather(1, near_neg[:, None]).squeeze(1)
        total = torch.where(keep, _terms(gap, form, margin), 0.0).sum()
        return total, keep.sum()
    # Invalid positives at distance -inf and invalid negatives at +inf make their gap -inf, whose loss
    # term (softplus or hinge) and gradient are exactly 0: no [c, P, N] mask for `all`, fewer passes.
    index, ok = pos
    d_ap = d.gather(1, index).masked_fill(~ok, float("-inf"))  # [c, P]
    d_an = d.masked_fill(~neg, float("inf"))  # [c, N]
    gap = d_ap[:, :, None] - d_an[:, None, :]  # [c, P, N]
    terms = _terms(gap, form, margin)
    if miner == "all":
        return terms.sum(), (ok.sum(1) * neg.sum(1)).sum()
    dd_ap, dd_an = d_ap.detach()[:, :, None], d_an.detach()[:, None, :]  # the same comparisons as before
    keep = (dd_an > dd_ap) & (dd_an - dd_ap < margin)  # false wherever a distance is infinite (gap inf or nan)
    return torch.where(keep, terms, 0.0).sum(), keep.sum()


class _ChunkedTripletSum(torch.autograd.Function):
    """emb [N, D] -> (sum of the mined triplets' loss terms (float64), their count (int64)) over the
    anchors in `anchors`; the gradient is computed chunk by chunk during forward (see the module
    docstring) and only scaled in backward."""

    @staticmethod
    def forward(ctx, emb, labels, anchors, form, miner, margin):
        grad_wanted = emb.requires_grad
        x = emb.detach().requires_grad_(grad_wanted)
        pos = None if miner == "hard" else _Positives(labels, anchors)
        step = anchor_chunk(len(labels), pos.width if pos else 0, emb.shape[1], miner,
                            chunk_bytes(emb.device.type == "cuda"))
        total = torch.zeros((), dtype=torch.float64, device=emb.device)
        count = torch.zeros((), dtype=torch.long, device=emb.device)
        grad = torch.zeros_like(emb) if grad_wanted else None
        for lo in range(0, len(anchors), step):
            with torch.enable_grad():
                chunk = slice(lo, lo + step)
                part, n = _chunk_sum(x, labels, anchors[chunk], pos and (pos.index[chunk], pos.ok[chunk]),
                                     form=form, miner=miner, margin=margin)
                if grad_wanted:
                    grad += torch.autograd.grad(part, x)[0]
            total += part.detach().double()
            count += n
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(count)
        return total, count

    @staticmethod
    def backward(ctx, grad_total, grad_count):
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None, None, None


def triplet_sum(emb: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, *, form: str, miner: str,
                margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the loss terms [float64, attached to emb], triplet count [int64 tensor]) of the
    triplets mined in (emb [N, D], labels [N]) whose anchor is one of the row indices `anchors`.

    Summing over disjoint anchor sets and dividing by the summed count gives `triplet_loss`.
    Computed in float32 whatever autocast or the embeddings' dtype say: bf16's 8-bit mantissa would
    turn distances of nearby rows, and the semi-hard comparisons between them, into noise.
    """
    if form not in FORMS:
        raise ValueError(f"loss.triplet_form={form!r} is invalid: expected one of {FORMS}")
    if miner not in MINERS:
        raise ValueError(f"loss.miner={miner!r} is invalid: expected one of {MINERS}")
    with torch.autocast(emb.device.type, enabled=False):
        return _ChunkedTripletSum.apply(emb.float(), labels.long(), anchors, form, miner, margin)


def triplet_loss(emb: torch.Tensor, labels: torch.Tensor, *, form: str, miner: str,
                 margin: float) -> tuple[torch.Tensor, int]:
    """Mean triplet loss over the triplets mined in (emb [N, D], labels [N]) and their count.

    With no triplet (too few labelled rows or classes) the loss is 0 but still attached to `emb`, so
    a backward pass runs the same autograd graph, and hence the same collectives, on every rank.
    """
    anchors = torch.arange(len(labels), device=emb.device)
    total, count = triplet_sum(emb, labels, anchors, form=form, miner=miner, margin=margin)
    return (total / count.clamp(min=1)).to(torch.promote_types(emb.dtype, torch.float32)), int(count)
