"""mbgan: MBGAN (Dai, Xie, Fang 2017): G(z) and a metric D(x) in R^K, optionally class-conditional;
features D(x) and D's pooled conv activations."""
from __future__ import annotations

from torch import nn

from tgan.families.base import Family, Group, Role, pooled_conv
from tgan.families.bigan import generator_pictures
from tgan.losses.mbgan import MBGANLoss
from tgan.models.dcgan import Generator
from tgan.models.networks import MetricDiscriminator
from tgan.models.regularisers import regularisers


def networks(m, channels: int, image_size: int, num_classes: int) -> dict[str, nn.Module]:
    classes = num_classes if m.conditional else 0
    return {"G": Generator(m.latent_dim, channels, image_size, m.width, classes),
            "D": MetricDiscriminator(channels, image_size, m.width, m.embedding_dim, classes, regularisers(m))}


def features(nets, x):
    return {"D": nets["D"](x), "D_conv": pooled_conv(nets["D"].conv_activations(x))}


def loss(loss_cfg, model_cfg, num_classes: int) -> MBGANLoss:
    return MBGANLoss(latent_dim=model_cfg.latent_dim, alpha=loss_cfg.alpha, l1_reduction=loss_cfg.l1_reduction,
                     conditional=model_cfg.conditional)


def check(cfg) -> None:
    """model.conditional is allowed (paper section 3.3); the classes come from the data set."""


FAMILY = Family(
    name="mbgan",
    groups_in_order=(Group("D", ("D",), MBGANLoss.d_loss, Role.DISCRIMINATOR),
                     Group("G", ("G",), MBGANLoss.g_loss, Role.GENERATOR)),
    prior=MBGANLoss.prior, networks=networks, loss=loss, eval_features=features,
    pictures=generator_pictures, check=check)
