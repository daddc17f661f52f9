"""Host synchronisations of one tribigan training step (D phase, then G/E phase with mining), counted
on the CPU by tests/host_syncs.py: the step waits on the device only where it must.

Needed, 3 per step in one process: each phase's finite-or-skip decision (with the gradient norms,
one read-back: guarded_step) and the mining's positive-table width (a shape). Gone: each phase's
scalar read-back (the scalars now stay on the device until a log step) and the triplet count.
With W ranks the mining adds one more, the exchanged row counts (one read-back, not W).
"""
import torch

from host_syncs import HostSyncs
from tgan.config import load_config
from tgan.families import get_family
from tgan.families.base import build_networks
from tgan.losses.base import Batch, to_floats
from tgan.train.backend import TorchBackend
from tgan.train.loop import PhaseRunner


def test_a_tribigan_step_syncs_three_times():
    cfg = load_config("launch/recipes/debug.yaml", [])
    family = get_family(cfg.model.family)
    nets = build_networks(cfg, channels=1, image_size=16, num_classes=10)
    backend = TorchBackend()
    backend.setup(nets, family.groups_in_order, cfg.optim, torch.device("cpu"))
    run = PhaseRunner(backend, family.make_loss(cfg.loss, cfg.model, 10), list(nets))
    gen = torch.Generator().manual_seed(0)
    batch = Batch(torch.rand(16, 1, 16, 16, generator=gen) * 2 - 1, torch.zeros(16, dtype=torch.long),
                  torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1, torch.arange(8) % 3)
    scalars = {}
    with HostSyncs() as syncs:
        for group in family.groups_in_order:
            phase_scalars, result = run(group, batch)
            assert result.finite
            scalars.update(phase_scalars)
    assert syncs.count == 3, syncs.where
    assert syncs.where == {"Tensor.tolist": 2, "aten._local_scalar_dense": 1}
    floats = to_floats(scalars)  # what a log step reads back, in one transfer
    assert floats["triplets"] > 0 and all(isinstance(v, float) for v in floats.values())
