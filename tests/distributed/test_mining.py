"""Global triplet mining over 2 and 4 spawned gloo ranks equals one process on the concatenated batch.

The reference is the dense miner tgan had before chunking (tests/dense_triplet.py); each rank mines
only its own anchors, in chunks of one anchor in two of the scenarios.
Each scenario pins, for every miner and form: the loss (1e-6), the triplet count, each rank's
embedding gradient == W * its slice of the single-process gradient (the all_gather backward sums W
identical copies), and, through a real DDP-wrapped Linear embedder, parameter gradients equal to
the single-process ones (DDP's average cancels the W): the cross-rank factor of mining.py is 1.
"""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dense_triplet import dense_triplet_loss as triplet_loss
from tgan.losses import triplet
from tgan.losses.mining import gather_rows, global_triplet_loss
from spawned import leave

COMBOS = [(form, miner) for form in ("softmax", "hinge") for miner in ("all", "semihard", "hard")]
IN_DIM, EMB_DIM, MARGIN = 5, 3, 1.0


def _data(labels):
    gen = torch.Generator().manual_seed(len(labels))
    return torch.randn(len(labels), IN_DIM, generator=gen), torch.tensor(labels)


def _worker(rank, world, init_file, sizes, labels, with_ddp, chunk_bytes):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        triplet.CHUNK_BYTES = chunk_bytes
        x, y = _data(labels)
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        emb_all = torch.nn.functional.linear(x, torch.ones(EMB_DIM, IN_DIM) / IN_DIM) + x[:, :EMB_DIM]

        rows, row_labels = gather_rows(emb_all[lo:hi], y[lo:hi])  # rank-independent order, padding removed
        assert torch.equal(rows, emb_all) and torch.equal(row_labels, y)

        for form, miner in COMBOS:
            ref = emb_all.clone().requires_grad_()
            ref_loss, ref_count = triplet_loss(ref, y, form=form, miner=miner, margin=MARGIN)
            ref_loss.backward()
            mine = emb_all[lo:hi].clone().requires_grad_()
            loss, count = global_triplet_loss(mine, y[lo:hi], form=form, miner=miner, margin=MARGIN)
            loss.backward()
            assert count == ref_count > 0, (form, miner, count, ref_count)
            assert abs(loss.item() - ref_loss.item()) <= 1e-6, (form, miner)
            torch.testing.assert_close(mine.grad, world * ref.grad[lo:hi], rtol=1e-6, atol=1e-7)
            if not with_ddp:  # the first DDP construction costs ~2 s per process: two scenarios suffice
                continue
            torch.manual_seed(0)
            single = nn.Linear(IN_DIM, EMB_DIM)
            model = DDP(copy.deepcopy(single))
            loss, _ = global_triplet_loss(model(x[lo:hi]), y[lo:hi], form=form, miner=miner, margin=MARGIN)
            loss.backward()
            ref_loss, _ = triplet_loss(single(x), y, form=form, miner=miner, margin=MARGIN)
            ref_loss.backward()
            assert abs(loss.item() - ref_loss.item()) <= 1e-6
            for p, q in zip(model.module.parameters(), single.parameters()):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)

        # no labelled row on any rank: no gather, no triplet, a zero loss that still backpropagates
        empty = torch.zeros(0, EMB_DIM, requires_grad=True)
        loss, count = global_triplet_loss(empty, y[:0], form="hinge", miner="all", margin=MARGIN)
        loss.backward()
        assert count == 0 and loss.item() == 0.0
        leave()
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, sizes, labels, with_ddp, chunk_bytes=triplet.CHUNK_BYTES):
    assert sum(sizes) == len(labels)
    mp.spawn(_worker, args=(len(sizes), str(tmp_path / "pg"), sizes, labels, with_ddp, chunk_bytes),
             nprocs=len(sizes), join=True)


@pytest.mark.timeout(120)
def test_two_ranks_unequal_batches(tmp_path):
    labels = [0, 1, 0, 2, 1, -1, 2, 0, 1]  # rank 0: 6 rows, rank 1: 3 rows; one unlabelled row
    _spawn(tmp_path, [6, 3], labels, with_ddp=True, chunk_bytes=1)


@pytest.mark.timeout(120)
def test_four_ranks_one_without_labelled_rows(tmp_path):
    labels = [0, 1, 2, 1, 0, 2, 2, 1, 0, 0]
    _spawn(tmp_path, [3, 0, 5, 2], labels, with_ddp=True)  # rank 1 sends only padding


@pytest.mark.timeout(120)
def test_two_ranks_class_with_one_example(tmp_path):
    # class 3 has a single row, alone on rank 0: never anchor or positive, still a negative
    labels = [3, 0, 1, 0, 1, 1, 0]
    _spawn(tmp_path, [1, 6], labels, with_ddp=False, chunk_bytes=1)
