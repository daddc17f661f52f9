"""The tribigan G/E phase under real DDP on 2 gloo ranks, one of them without a labelled batch.

Pins what the training loop relies on: the phase runs through DDP-wrapped G and E (each called more
than once per phase) without hanging, the triplet term is mined over the global labelled batch (the
same loss and count on every rank, equal to one process mining rank 0's rows alone), and a rank
with no labelled rows still joins the gather's backward.
"""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from tgan.config import LossConfig, ModelConfig
from tgan.losses.base import Batch, to_floats
from tgan.losses.triplet import triplet_loss
from tgan.families import get_family
from spawned import leave


def _worker(rank, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)  # same initial weights on both ranks
        fam = get_family("tribigan")
        model = ModelConfig(family="tribigan", latent_dim=4, width=0.0625)
        nets = fam.build_networks(model, channels=1, image_size=8, num_classes=3)
        loss = fam.make_loss(LossConfig(triplet_form="hinge", miner="all"), model, 3)
        gen = torch.Generator().manual_seed(1)
        x, xl = torch.randn(4, 1, 8, 8, generator=gen), torch.randn(5, 1, 8, 8, generator=gen)
        yl = torch.tensor([0, 1, 0, 1, 2])
        batch = Batch(x, torch.zeros(4, dtype=torch.long), *((xl, yl) if rank == 0 else (None, None)))

        nets["D"].requires_grad_(False)
        wrapped = {"G": DDP(nets["G"]), "E": DDP(nets["E"]), "D": nets["D"]}
        torch.manual_seed(10 + rank)
        value, scalars = loss.g_loss(wrapped, batch)
        value.backward()
        scalars = to_floats(scalars)  # detached 0-d tensors, read back as the loop logs them

        with torch.no_grad():  # rank 0 holds every labelled row: mining them alone is the global answer
            nets["E"].train()
            want, want_count = triplet_loss(nets["E"](xl), yl, form="hinge", miner="all", margin=1.0)
        seen = [None, None]
        dist.all_gather_object(seen, (scalars["loss/triplet"], scalars["triplets"]))
        assert seen[0] == seen[1], seen
        assert scalars["triplets"] == want_count == 12  # 2 classes x 2 anchors x 1 positive x 3 negatives
        assert scalars["loss/triplet"] == pytest.approx(want.item(), abs=1e-6)
        grads = torch.cat([p.grad.flatten() for p in nets["E"].parameters()])
        assert torch.isfinite(grads).all() and grads.abs().sum() > 0
        leave()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_tribigan_phase_under_ddp_with_a_rank_without_labels(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "pg"),), nprocs=2, join=True)
