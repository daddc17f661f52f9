"""Every family's phases and features on a CUDA device at the paper's width (skipped without CUDA)."""
import pytest
import torch

from tgan.config import LossConfig, ModelConfig
from tgan.losses.base import Batch
from tgan.families import FAMILIES, get_family

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_runs_on_cuda(name):
    torch.manual_seed(0)
    fam = get_family(name)
    model = ModelConfig(family=name, width=1.0, conditional=name == "mbgan")
    nets = {k: v.cuda() for k, v in fam.build_networks(model, channels=3, image_size=32, num_classes=10).items()}
    loss = fam.make_loss(LossConfig(), model, 10)
    x = torch.rand(16, 3, 32, 32, device="cuda") * 2 - 1
    y = torch.randint(0, 10, (16,), device="cuda")
    batch = Batch(x, y, x[:8], y[:8])
    for group in fam.groups_in_order:
        value, scalars = group.phase(loss, nets, batch)
        value.backward()
        assert value.is_cuda and torch.isfinite(value)
        # scalars stay on the device until a log step reads them (tests/unit/test_families.py)
        assert all(torch.is_tensor(v) and v.is_cuda and v.ndim == 0 for v in scalars.values())
    feats = fam.features(nets, x.cpu(), batch_size=5)  # batches move to the nets' device and back
    assert all(f.device.type == "cpu" and f.shape[0] == 16 for f in feats.values())
    if fam.generator is None:  # the triplet family trains E alone
        return
    z = fam.sample_z(4, model.latent_dim, device="cuda")
    g = nets["G"](z, y[:4]) if model.conditional else nets["G"](z)
    assert g.is_cuda and g.shape == (4, 3, 32, 32)
