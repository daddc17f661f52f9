"""tripletgan's cross-rank pieces over 2 spawned gloo ranks equal one process on the global batch:
weight norm's data-dependent init (statistics summed over the ranks: every rank sets the same scales
and biases, those of one process) and feature matching (global batch means, whose gradient, after
DDP's average, is the one-process gradient; tgan.losses.mining.global_sum)."""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from spawned import leave
from tgan.losses.tripletgan import feature_matching
from tgan.models.mlp import MLPEmbedder
from tgan.models.regularisers import Regularisers

SIZES = (5, 3)  # unequal: the init statistics are counts and sums, not means of means


def _worker(rank, world, init_file):
    torch.set_num_threads(1)
    x = torch.rand(sum(SIZES), 1, 6, 6, generator=torch.Generator().manual_seed(3)) * 2 - 1
    lo, hi = sum(SIZES[:rank]), sum(SIZES[:rank + 1])
    torch.manual_seed(0)
    single = MLPEmbedder(1, 6, 4, Regularisers(norm="weight"))
    reference = copy.deepcopy(single)
    reference(x)  # one process on the global batch, before any process group exists
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ranked = DDP(copy.deepcopy(single))
        ranked(x[lo:hi])  # the first training forward initialises, with the statistics of both ranks
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(ranked.module.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
        assert bool(ranked.module.head.initialized)

        # feature matching: the same loss on every rank; DDP-averaged gradients == one process
        torch.manual_seed(1)
        gen = nn.Linear(3, 4)
        model = DDP(copy.deepcopy(gen))
        z = torch.randn(sum(SIZES), 3, generator=torch.Generator().manual_seed(4))
        real = torch.randn(sum(SIZES), 4, generator=torch.Generator().manual_seed(5))
        loss = feature_matching(model(z[lo:hi]), real[lo:hi])
        loss.backward()
        ref = feature_matching(gen(z), real)
        ref.backward()
        assert abs(loss.item() - ref.item()) <= 1e-6
        for p, q in zip(model.module.parameters(), gen.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
        leave()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)  # 96 s seen at load 26 on 2 cores
def test_weight_norm_init_and_feature_matching_over_two_ranks_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "pg")), nprocs=2, join=True)
