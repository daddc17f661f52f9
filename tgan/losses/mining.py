"""Triplet mining over the labelled rows of ALL ranks, with gradients back to each rank's own rows.

Every rank gathers the embeddings and labels of every rank's labelled batch (rank 0's rows first,
then rank 1's, ...: the same order on every rank, and the order of one process holding the
concatenated batch), mines triplets over that global batch and computes the same global loss.

Uneven batches: ranks first exchange their row counts, pad to the largest with zero rows (label -1)
so that every all_gather buffer has one shape, and strip the padding after the gather. A rank with
no labelled row still takes part (it sends only padding); a class with one example gives no
positive pair and so no triplet, but its row can still be another anchor's negative.

The cross-rank factor (worked out here, once; tests/distributed/test_mining.py pins it):
    The gather's backward (`_AllGather` below: the semantics of the deprecated
    torch.distributed.nn.functional.all_gather) SUMS the gradients that every rank computes for a
    rank's rows. Every rank computes the same global loss L on the same global batch, so rank r
    receives W identical copies: its embedding gradient is
    W * dL/de_r, W times its slice of the single-process gradient. DDP (and DeepSpeed) then AVERAGE
    parameter gradients over the W ranks: (1/W) * sum_r W * dL/de_r * de_r/dtheta = dL/dtheta,
    exactly the single-process gradient of the global batch. So the loss is used as is (factor 1):
    no rescaling by the world size. (pytorch-metric-learning gathers without gradients instead and
    multiplies the loss by W; that gives the same W * dL/de_r per rank.) The per-rank bigan terms
    are local means, which DDP's average turns into the global mean (equal batches per rank), so
    their sum with the triplet term keeps the single-process gradient.

Consequence for callers: every rank must backpropagate through the loss in the same step (the
gather's backward is a collective), and every rank must call this in the same order as the others.
With no process group (world size 1) nothing is gathered.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from tgan.dist import is_dist, rank, world_size
from tgan.losses.triplet import triplet_loss


class _AllGather(torch.autograd.Function):
    """[n, ...] on each rank -> [W, n, ...] on every rank; backward sums every rank's gradient of chunk r
    and hands it to rank r (an all_reduce, not a reduce_scatter, which gloo lacks; the rows are few)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[rank()]


def gather_rows(emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(global embeddings, global labels): every rank's rows, in rank order.

    The global embeddings carry gradients back to `emb` on this rank (see the module docstring).
    """
    if emb.shape[0] != labels.shape[0]:
        raise ValueError(f"{emb.shape[0]} embeddings but {labels.shape[0]} labels")
    if not is_dist():
        return emb, labels
    w = world_size()
    n = torch.tensor([emb.shape[0]], device=emb.device)
    counts = [torch.zeros_like(n) for _ in range(w)]
    dist.all_gather(counts, n)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    if longest == 0:  # every rank sees the same sizes, so all of them return here together
        return emb, labels
    pad = longest - emb.shape[0]
    padded = torch.cat([emb, emb.new_zeros(pad, *emb.shape[1:])])
    padded_labels = torch.cat([labels.long(), labels.new_full((pad,), -1, dtype=torch.long)])
    label_parts = [torch.empty_like(padded_labels) for _ in range(w)]
    dist.all_gather(label_parts, padded_labels)
    emb_parts = _AllGather.apply(padded)
    global_emb = torch.cat([part[:size] for part, size in zip(emb_parts, sizes)])
    global_labels = torch.cat([part[:size] for part, size in zip(label_parts, sizes)])
    return global_emb, global_labels


def global_triplet_loss(emb: torch.Tensor, labels: torch.Tensor, *, form: str, miner: str,
                        margin: float) -> tuple[torch.Tensor, int]:
    """Triplet loss mined over the labelled rows of every rank, and the number of mined triplets.

    Identical on every rank; equal to single-process `triplet_loss` on the concatenated batch, and
    used unscaled (the factor is 1 under DDP's gradient average: see the module docstring).
    """
    global_emb, global_labels = gather_rows(emb, labels)
    return triplet_loss(global_emb, global_labels, form=form, miner=miner, margin=margin)
