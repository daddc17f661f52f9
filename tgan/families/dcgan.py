"""dcgan: DCGAN (Radford et al.), the baseline; features D's pooled conv activations."""
from __future__ import annotations

from torch import nn

from tgan.families.base import Family, Group, Role, pooled_conv
from tgan.families.bigan import generator_pictures
from tgan.losses.dcgan import DCGANLoss
from tgan.models.dcgan import Generator
from tgan.models.networks import ProbDiscriminator
from tgan.models.regularisers import regularisers


def networks(m, channels: int, image_size: int, num_classes: int) -> dict[str, nn.Module]:
    return {"G": Generator(m.latent_dim, channels, image_size, m.width),
            "D": ProbDiscriminator(channels, image_size, m.width, regularisers(m))}


def features(nets, x):
    return {"D_conv": pooled_conv(nets["D"].conv_activations(x))}


def loss(loss_cfg, model_cfg, num_classes: int) -> DCGANLoss:
    return DCGANLoss(latent_dim=model_cfg.latent_dim, nonsaturating=loss_cfg.nonsaturating)


FAMILY = Family(
    name="dcgan",
    groups_in_order=(Group("D", ("D",), DCGANLoss.d_loss, Role.DISCRIMINATOR),
                     Group("G", ("G",), DCGANLoss.g_loss, Role.GENERATOR)),
    prior=DCGANLoss.prior, networks=networks, loss=loss, eval_features=features, pictures=generator_pictures)
