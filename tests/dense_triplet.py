"""The dense miner tgan used before the chunked one (tgan/losses/triplet.py at 0fe7361), kept as the
reference the chunked miner must equal and as the "old" side of benchmarks/miner_memory.py.

It builds [N, N, N] masks and one index per mined triplet: O(N^3) memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dense_mine(dist: torch.Tensor, labels: torch.Tensor, miner: str, margin: float) -> tuple[torch.Tensor, ...]:
    n = labels.shape[0]
    valid = labels >= 0
    pair = valid[:, None] & valid[None, :]
    same = pair & (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool, device=labels.device)
    diff = pair & (labels[:, None] != labels[None, :])
    d = dist.detach()
    if miner == "hard":
        if n == 0:
            return (labels.new_zeros(0, dtype=torch.long),) * 3
        anchors = torch.nonzero(same.any(1) & diff.any(1)).squeeze(1)
        far_pos = d.masked_fill(~same, -1.0).argmax(1)
        near_neg = d.masked_fill(~diff, float("inf")).argmin(1)
        return anchors, far_pos[anchors], near_neg[anchors]
    keep = same[:, :, None] & diff[:, None, :]
    if miner == "semihard":
        d_ap, d_an = d[:, :, None], d[:, None, :]
        keep &= (d_an > d_ap) & (d_an - d_ap < margin)  # the gap against the margin, as triplet.py
    return torch.nonzero(keep, as_tuple=True)


def dense_triplet_loss(emb: torch.Tensor, labels: torch.Tensor, *, form: str, miner: str,
                       margin: float) -> tuple[torch.Tensor, int]:
    dist = torch.cdist(emb, emb, p=2, compute_mode="donot_use_mm_for_euclid_dist")
    a, p, n = dense_mine(dist, labels, miner, margin)
    if a.numel() == 0:
        return emb.sum() * 0.0, 0
    gap = dist[a, p] - dist[a, n]
    per_triplet = F.softplus(gap) if form == "softmax" else F.relu(margin + gap)
    return per_triplet.mean(), int(a.numel())
