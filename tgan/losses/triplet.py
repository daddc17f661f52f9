"""Triplet loss and miners over one set of embeddings (the global labelled batch; see mining.py).

Forms (loss.triplet_form), on non-squared Euclidean distances d+ = d(a, p), d- = d(a, n):
- softmax: softplus(d+ - d-) = -log(e^-d+ / (e^-d+ + e^-d-)), the Hoffer & Ailon softmax-ratio form
  as the triplet-BiGAN authors' code writes it (log of the softmax over the two distances).
- hinge:   max(0, m + d+ - d-).
Both are averaged over the mined triplets.

Miners (loss.miner); rows with label -1 (unlabelled) are never anchor, positive or negative:
- all:      every (a, p, n) with a != p, y_a = y_p, y_n != y_a. O(N^3) memory in the number of
            labelled rows N of the global batch, fine for the few hundred rows that semi-supervised
            runs gather.
- semihard: the triplets of `all` with d+ < d- < d+ + m (FaceNet), every one of them.
- hard:     batch-hard (Hermans et al.): per anchor with a positive and a negative, its farthest
            positive and nearest negative; ties go to the lowest row, so the choice is deterministic.
Selection looks at distances only (boolean masks), so gradients flow through the chosen distances.

Distances come from torch.cdist in its direct (not Gram-matrix) mode: exact for near-identical rows,
and its backward defines the gradient at zero distance as 0, so duplicates never give NaN/inf.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FORMS = ("softmax", "hinge")
MINERS = ("all", "semihard", "hard")


def pairwise_distances(emb: torch.Tensor) -> torch.Tensor:
    """[N, N] Euclidean distances, with finite gradients at zero distance."""
    return torch.cdist(emb, emb, p=2, compute_mode="donot_use_mm_for_euclid_dist")


def mine(dist: torch.Tensor, labels: torch.Tensor, miner: str, margin: float) -> tuple[torch.Tensor, ...]:
    """Indices (a, p, n) of the mined triplets, each a 1-D int64 tensor, in a deterministic order."""
    if miner not in MINERS:
        raise ValueError(f"loss.miner={miner!r} is invalid: expected one of {MINERS}")
    n = labels.shape[0]
    valid = labels >= 0
    pair = valid[:, None] & valid[None, :]
    same = pair & (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool, device=labels.device)
    diff = pair & (labels[:, None] != labels[None, :])
    d = dist.detach()
    if miner == "hard":
        if n == 0:  # argmax over an empty row is undefined
            return (labels.new_zeros(0, dtype=torch.long),) * 3
        anchors = torch.nonzero(same.any(1) & diff.any(1)).squeeze(1)
        far_pos = d.masked_fill(~same, -1.0).argmax(1)  # distances are >= 0, so -1 never wins
        near_neg = d.masked_fill(~diff, float("inf")).argmin(1)
        return anchors, far_pos[anchors], near_neg[anchors]
    keep = same[:, :, None] & diff[:, None, :]
    if miner == "semihard":
        d_ap, d_an = d[:, :, None], d[:, None, :]
        keep &= (d_an > d_ap) & (d_an < d_ap + margin)
    a, p, neg = torch.nonzero(keep, as_tuple=True)
    return a, p, neg


def triplet_loss(emb: torch.Tensor, labels: torch.Tensor, *, form: str, miner: str,
                 margin: float) -> tuple[torch.Tensor, int]:
    """Mean triplet loss over the triplets mined in (emb [N, D], labels [N]) and their count.

    With no triplet (too few labelled rows or classes) the loss is 0 but still attached to `emb`, so
    a backward pass runs the same autograd graph, and hence the same collectives, on every rank.
    """
    if form not in FORMS:
        raise ValueError(f"loss.triplet_form={form!r} is invalid: expected one of {FORMS}")
    dist = pairwise_distances(emb)
    a, p, n = mine(dist, labels, miner, margin)
    if a.numel() == 0:
        return emb.sum() * 0.0, 0
    gap = dist[a, p] - dist[a, n]
    per_triplet = F.softplus(gap) if form == "softmax" else F.relu(margin + gap)
    return per_triplet.mean(), int(a.numel())
