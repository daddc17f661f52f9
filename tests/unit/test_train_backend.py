"""TorchBackend without a process group: optimizer groups, gradient norms, clipping, the non-finite
guard and saving/loading the optimizer state."""
import copy

import pytest
import torch
from torch import nn

from tgan.config import OptimConfig
from tgan.families.base import Group, Role
from tgan.train.backend import TorchBackend

GROUPS = (Group("D", ("D",), None, Role.DISCRIMINATOR), Group("G", ("G", "E"), None, Role.GENERATOR))


def make_nets(seed=0):
    torch.manual_seed(seed)
    return {"G": nn.Linear(3, 4), "E": nn.Linear(4, 3), "D": nn.Linear(4, 1)}


def setup(cfg=None, seed=0):
    backend = TorchBackend()
    backend.setup(make_nets(seed), GROUPS, cfg or OptimConfig(), torch.device("cpu"))
    return backend


def g_loss(backend, scale=1.0):
    x = torch.ones(2, 3)
    return (backend.module("E")(backend.module("G")(x)).sum() + backend.raw("D")(torch.ones(1, 4)).sum()) * scale


def test_group_learning_rates_default_to_lr_and_can_be_overridden():
    assert GROUPS[0].lr(OptimConfig(lr=1e-3)) == 1e-3
    assert GROUPS[1].lr(OptimConfig(lr=1e-3, lr_d=5e-4)) == 1e-3
    cfg = OptimConfig(lr_d=1e-4, lr_g=3e-4, beta1=0.5)
    backend = setup(cfg)
    assert backend._optimizers["D"].param_groups[0]["lr"] == 1e-4
    assert backend._optimizers["G"].param_groups[0]["lr"] == 3e-4
    assert backend._optimizers["G"].param_groups[0]["betas"] == (0.5, 0.999)
    g_params = {id(p) for p in backend._optimizers["G"].param_groups[0]["params"]}
    assert g_params == {id(p) for n in ("G", "E") for p in backend.raw(n).parameters()}


def test_step_reports_each_networks_grad_norm_and_updates_only_its_group():
    backend = setup()
    before = {n: copy.deepcopy(backend.raw(n).state_dict()) for n in ("G", "E", "D")}
    loss = g_loss(backend)
    loss.backward(retain_graph=True)
    expected = {n: torch.cat([p.grad.flatten() for p in backend.raw(n).parameters()]).norm().item() for n in ("G", "E")}
    for n in ("G", "E", "D"):
        backend.raw(n).zero_grad(set_to_none=True)
    result = backend.step("G", loss)
    assert result.finite
    assert result.grad_norms == pytest.approx(expected, rel=1e-6)
    assert not torch.equal(backend.raw("G").weight, before["G"]["weight"])
    assert not torch.equal(backend.raw("E").weight, before["E"]["weight"])
    # D was used in the loss but is not in the group: the G step leaves it alone.
    assert torch.equal(backend.raw("D").weight, before["D"]["weight"])
    assert all(p.grad is None for n in ("G", "E") for p in backend.raw(n).parameters())


def test_clipping_scales_the_group_gradient_but_the_reported_norm_is_before_clipping():
    backend = setup(OptimConfig(grad_clip=0.1))
    result = backend.step("G", g_loss(backend, scale=100.0))
    total = sum(v**2 for v in result.grad_norms.values()) ** 0.5
    assert total > 10
    # Adam's first moment after one step is (1 - beta1) * the gradient it was given.
    state = backend._optimizers["G"].state
    m = torch.cat([state[p]["exp_avg"].flatten() for n in ("G", "E") for p in backend.raw(n).parameters()])
    assert m.norm().item() == pytest.approx(0.5 * 0.1, rel=1e-4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_skips_the_optimizer_step_and_clears_gradients(bad):
    backend = setup()
    before = copy.deepcopy(backend.raw("G").state_dict())
    result = backend.step("G", g_loss(backend) * bad)
    assert not result.finite
    assert torch.equal(backend.raw("G").weight, before["weight"])
    assert backend._optimizers["G"].state == {}
    assert all(p.grad is None for p in backend.raw("G").parameters())
    assert backend.step("G", g_loss(backend)).finite  # the next good step goes through


def test_save_load_restores_optimizer_state_so_training_continues_identically(tmp_path):
    a = setup()
    for _ in range(3):
        a.step("G", g_loss(a))
    a.save(tmp_path)
    b = setup(seed=1)
    for n in ("G", "E", "D"):
        b.raw(n).load_state_dict(a.raw(n).state_dict())
    b.load(tmp_path)
    for _ in range(2):
        a.step("G", g_loss(a))
        b.step("G", g_loss(b))
    for n in ("G", "E"):
        assert torch.equal(a.raw(n).weight, b.raw(n).weight)


def test_load_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="optim.pt"):
        setup().load(tmp_path)
