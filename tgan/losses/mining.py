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

Work split: every rank needs the loss and gradient of the whole global batch, but a triplet's terms
depend only on its anchor's distance row, so rank r sums the terms of the triplets anchored at ITS
OWN rows only (1/W of the work and memory of mining the global batch, chunked: see triplet.py), and
one all_reduce of (sum, count) gives every rank the global mean. That all_reduce is differentiable
(`_AllReduceSum`: its backward all_reduces the incoming gradients, the adjoint of a sum that lands on
every rank): each rank's partial sum receives W / count, W times the single-process weight, and the
gather's backward then adds up the partial sums' gradients over the ranks, so rank r again receives
W * dL/de_r, the factor above: the split changes no gradient.

Consequence for callers: every rank must backpropagate through the loss in the same step (the
gather's backward is a collective), and every rank must call this in the same order as the others.
With no process group (world size 1) nothing is gathered.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from tgan.dist import is_dist, rank, world_size
from tgan.losses import triplet
from tgan.losses.triplet import triplet_sum

if TYPE_CHECKING:  # the config (and the families it imports) only for the dry run's functions below
    from tgan.config import Config


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


class _AllReduceSum(torch.autograd.Function):
    """The sum over ranks, on every rank; backward: the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """x summed over every rank (x itself with no process group). Its backward sums every rank's
    gradient, so a loss computed identically on every rank from it gives rank r W times its rows'
    single-process gradient, which DDP's average turns back into the exact one (the factor above)."""
    return _AllReduceSum.apply(x) if is_dist() else x


def gather_rows(emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(global embeddings, global labels): every rank's rows, in rank order.

    The global embeddings carry gradients back to `emb` on this rank (see the module docstring).
    """
    return _gather(emb, labels)[:2]


def _gather(emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """gather_rows, plus the index of this rank's first row in the global rows."""
    if emb.shape[0] != labels.shape[0]:
        raise ValueError(f"{emb.shape[0]} embeddings but {labels.shape[0]} labels")
    if not is_dist():
        return emb, labels, 0
    w = world_size()
    n = torch.tensor([emb.shape[0]], device=emb.device)
    counts = [torch.zeros_like(n) for _ in range(w)]
    dist.all_gather(counts, n)
    sizes = torch.cat(counts).tolist()  # one read-back, not one per rank
    longest = max(sizes)
    if longest == 0:  # every rank sees the same sizes, so all of them return here together
        return emb, labels, 0
    pad = longest - emb.shape[0]
    padded = torch.cat([emb, emb.new_zeros(pad, *emb.shape[1:])])
    padded_labels = torch.cat([labels.long(), labels.new_full((pad,), -1, dtype=torch.long)])
    label_parts = [torch.empty_like(padded_labels) for _ in range(w)]
    dist.all_gather(label_parts, padded_labels)
    emb_parts = _AllGather.apply(padded)
    global_emb = torch.cat([part[:size] for part, size in zip(emb_parts, sizes)])
    global_labels = torch.cat([part[:size] for part, size in zip(label_parts, sizes)])
    return global_emb, global_labels, sum(sizes[: rank()])


def global_triplet_loss(emb: torch.Tensor, labels: torch.Tensor, *, form: str, miner: str,
                        margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Triplet loss mined over the labelled rows of every rank, and the number of mined triplets (a
    0-d tensor).

    Identical on every rank; equal to single-process `triplet_loss` on the concatenated batch, and
    used unscaled (the factor is 1 under DDP's gradient average: see the module docstring).
    """
    global_emb, global_labels, first = _gather(emb, labels)
    own = torch.arange(first, first + emb.shape[0], device=emb.device)  # this rank's anchors
    total, count = triplet_sum(global_emb, global_labels, own, form=form, miner=miner, margin=margin)
    both = torch.stack([total, count.double()])
    if is_dist():
        both = _AllReduceSum.apply(both)
    loss = (both[0] / both[1].clamp(min=1)).to(torch.promote_types(emb.dtype, torch.float32))
    return loss, both[1].detach()  # the count stays on the device: no host sync for a logged scalar


def mining_memory_bytes(rows: int, rows_per_rank: int, dim: int, miner: str, on_gpu: bool = False) -> int:
    """Peak bytes that mining adds on one rank for `rows` global labelled rows, `rows_per_rank` of them
    this rank's anchors, `dim`-dimensional embeddings: an upper bound over every label layout.

    A chunk takes as many anchors as fit in triplet.chunk_bytes(on_gpu), or one anchor when one alone
    needs more; one anchor needs the most when every row is of its class (see triplet.anchor_bytes)."""
    widest = triplet.anchor_bytes(rows, 0 if miner == "hard" else rows, dim, miner)
    chunk = min(rows_per_rank * widest, max(triplet.chunk_bytes(on_gpu), widest))
    gathered = 4 * rows * dim * 4  # gathered rows, their gradient, a chunk's gradient, gather buffers
    table = rows_per_rank * rows * 9  # the positives' int64 index and bool mask, at their widest
    return gathered + table + chunk


def dense_mining_bytes(rows: int, miner: str) -> int:
    """What the dense O(N^3) `all` / `semihard` miner that chunking replaced needed for the same rows
    (measured ~3.2 N^3 and ~4 N^3 bytes: issue 13), for the dry run's comparison."""
    return 32 * rows**3 // 10 if miner == "all" else 4 * rows**3


def _mining_need(cfg: Config, dim: int) -> tuple[int, int, int]:
    """(global labelled rows, rows per rank, bytes per rank) of a config's triplet mining over `dim`-wide
    embeddings (the family's embedding size: tgan.resolve.mining_dim)."""
    per_rank = cfg.data.labelled_batch_size
    rows = cfg.cluster.num_workers * per_rank
    on_gpu = cfg.cluster.use_gpu or cfg.train.device.startswith("cuda") or (
        cfg.train.device == "auto" and torch.cuda.is_available())
    return rows, per_rank, mining_memory_bytes(rows, per_rank, dim, cfg.loss.miner, on_gpu)


def mining_summary(cfg: Config, dim: int) -> str:
    """The dry run's line about triplet mining (for a family that mines triplets)."""
    rows, per_rank, need = _mining_need(cfg, dim)
    was = "" if cfg.loss.miner == "hard" else \
        f"; the dense miner needed {dense_mining_bytes(rows, cfg.loss.miner) / 2**30:.1f} GiB"
    return (f"triplet mining (loss.miner={cfg.loss.miner}): {rows} global labelled rows, at most "
            f"{need / 2**20:.1f} MiB per rank (limit loss.mining_memory_gb={cfg.loss.mining_memory_gb:g}{was})")


def check_mining_memory(cfg: Config, dim: int) -> None:
    """Refuse (ConfigError) a config whose triplet mining needs more than loss.mining_memory_gb per rank
    (for a family that mines triplets: tgan.resolve asks)."""
    from tgan.config import ConfigError

    rows, per_rank, need = _mining_need(cfg, dim)
    if need > cfg.loss.mining_memory_gb * 2**30:
        raise ConfigError(
            f"triplet mining over {rows} labelled rows needs about {need / 2**30:.1f} GiB per rank, more than "
            f"loss.mining_memory_gb={cfg.loss.mining_memory_gb:g}: lower data.labelled_batch_size "
            f"({per_rank}) or cluster.num_workers ({cfg.cluster.num_workers}), use loss.miner=hard, "
            f"or raise loss.mining_memory_gb")
