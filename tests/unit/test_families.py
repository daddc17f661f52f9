"""The families (tgan/families/): networks, groups, losses, priors and evaluation features per family."""
import pytest
import torch
import torch.nn.functional as F

from tgan.config import LossConfig, ModelConfig
from tgan.losses.base import Batch
from tgan.losses.bigan import BiGANLoss, TriBiGANLoss
from tgan.losses.dcgan import DCGANLoss
from tgan.losses.mbgan import MBGANLoss
from tgan.losses.tripletgan import TripletGANLoss
from tgan.models.dcgan import channel_widths
from tgan.families import FAMILIES, get_family

EXPECTED = {
    "bigan": ({"D": ("D",), "G": ("G", "E")}, {"G", "E", "D"}, BiGANLoss, "normal", {"E"}),
    "tribigan": ({"D": ("D",), "G": ("G", "E")}, {"G", "E", "D"}, TriBiGANLoss, "normal", {"E"}),
    "mbgan": ({"D": ("D",), "G": ("G",)}, {"G", "D"}, MBGANLoss, "uniform", {"D", "D_conv"}),
    "dcgan": ({"D": ("D",), "G": ("G",)}, {"G", "D"}, DCGANLoss, "uniform", {"D_conv"}),
    "tripletgan": ({"D": ("D",), "G": ("G",)}, {"G", "D"}, TripletGANLoss, "uniform", {"D", "D_conv"}),
}


def build(name, size=8, channels=1, **model):
    fam = get_family(name)
    cfg = ModelConfig(family=name, latent_dim=6, embedding_dim=5, width=0.125, **model)
    return fam, cfg, fam.build_networks(cfg, channels=channels, image_size=size, num_classes=3)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_family_contract(name):
    groups, keys, loss_cls, prior, feature_keys = EXPECTED[name]
    fam, cfg, nets = build(name)
    assert fam.groups == groups and set(nets) == keys
    assert isinstance(fam.make_loss(LossConfig(), cfg, 3), loss_cls)
    assert fam.prior == prior
    z = fam.sample_z(500, 6)
    assert (z.min() >= -1 and z.max() <= 1 and z.min() < -0.9) if prior == "uniform" else z.min() < -1.5
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    assert nets["G"](z[:4]).shape == x.shape
    assert set(fam.features(nets, x)) == feature_keys
    # one full step of each phase runs and produces finite losses and scalars
    loss = fam.make_loss(LossConfig(), cfg, 3)
    batch = Batch(x, torch.tensor([0, 1, 0, 1]), x, torch.tensor([0, 1, 0, 1]))
    for group in fam.groups_in_order:
        value, scalars = group.phase(loss, nets, batch)
        value.backward()
        # scalars stay on the device until a log step reads them (one host sync, not one per value)
        assert torch.isfinite(value) and all(torch.isfinite(torch.as_tensor(v)).all() for v in scalars.values())


def test_unknown_family_names_the_field():
    with pytest.raises(ValueError, match="model.family='gan'"):
        get_family("gan")


def test_conditional_mbgan_needs_classes():
    fam = get_family("mbgan")
    cfg = ModelConfig(family="mbgan", width=0.125, conditional=True)
    with pytest.raises(ValueError, match="num_classes=0"):
        fam.build_networks(cfg, channels=1, image_size=8, num_classes=0)
    nets = fam.build_networks(cfg, channels=1, image_size=8, num_classes=3)
    assert nets["G"].num_classes == 3 and nets["D"].num_classes == 3


def test_features_are_eval_mode_batched_and_restore_modes():
    fam, _, nets = build("mbgan", size=16, channels=3)
    x = torch.randn(10, 3, 16, 16)
    nets["D"].train()
    nets["G"].eval()
    full = fam.features(nets, x, batch_size=256)
    small = fam.features(nets, x, batch_size=3)
    # eval mode: a row's features do not depend on the rest of its batch (BN uses running stats)
    for key in full:
        assert torch.allclose(full[key], small[key], atol=1e-6)
        assert not full[key].requires_grad
    assert nets["D"].training and not nets["G"].training
    # D_conv: every conv layer max-pooled to 4x4 and concatenated (DCGAN protocol)
    assert full["D_conv"].shape == (10, sum(channel_widths(0.125)) * 16)
    nets["D"].eval()
    with torch.no_grad():
        acts = nets["D"].conv_activations(x)
        manual = torch.cat([F.adaptive_max_pool2d(a, 4).flatten(1) for a in acts], 1)
        assert torch.allclose(full["D_conv"], manual)
        assert torch.allclose(full["D"], nets["D"](x))


def test_encoder_features_are_e_of_x():
    fam, _, nets = build("tribigan")
    x = torch.randn(5, 1, 8, 8)
    feats = fam.features(nets, x)
    nets["E"].eval()
    with torch.no_grad():
        assert torch.allclose(feats["E"], nets["E"](x))


def test_registry_covers_config_families():
    from tgan.config import FAMILIES as CONFIG_FAMILIES
    assert set(FAMILIES) == set(CONFIG_FAMILIES)
