"""tripletgan: tripletGAN (Zieba & Wang 2017): G(z) and a D(x) in R^K whose outputs are at once the
triplet embedding of the labelled stream, the real/fake logit of every image (their log-sum-exp) and
the features G matches (tgan/losses/tripletgan.py). Features D(x), and D's pooled conv activations
(model.arch=dcgan) or its last hidden layer (model.arch=mlp, the reference's networks)."""
from __future__ import annotations

from torch import nn

from tgan.families.base import Family, Group, Role, need_labels, pooled_conv, refuse_conditional
from tgan.families.bigan import generator_pictures
from tgan.losses.tripletgan import TripletGANLoss
from tgan.models.dcgan import Generator
from tgan.models.mlp import MLPEmbedder, MLPGenerator
from tgan.models.networks import MetricDiscriminator
from tgan.models.regularisers import regularisers


def networks(m, channels: int, image_size: int, num_classes: int) -> dict[str, nn.Module]:
    """D first: under one seed it starts from the weights of the triplet family's E of the same
    architecture and size (the fair baseline: the same network, no GAN)."""
    if m.arch == "mlp":
        d = MLPEmbedder(channels, image_size, m.embedding_dim, regularisers(m))
        return {"D": d, "G": MLPGenerator(m.latent_dim, channels, image_size)}
    d = MetricDiscriminator(channels, image_size, m.width, m.embedding_dim, reg=regularisers(m))
    return {"D": d, "G": Generator(m.latent_dim, channels, image_size, m.width)}


def features(nets, x):
    d = nets["D"]
    if isinstance(d, MLPEmbedder):
        hidden, out = d(x, with_hidden=True)
        return {"D": out, "D_hidden": hidden}
    return {"D": d(x), "D_conv": pooled_conv(d.conv_activations(x))}


def loss(loss_cfg, model_cfg, num_classes: int) -> TripletGANLoss:
    return TripletGANLoss(latent_dim=model_cfg.latent_dim, weight=loss_cfg.triplet_weight, form=loss_cfg.triplet_form,
                          miner=loss_cfg.miner, margin=loss_cfg.triplet_margin,
                          feature_matching=loss_cfg.feature_matching,
                          consistency_weight=loss_cfg.consistency_weight, consistency_sigma=loss_cfg.consistency_sigma)


def check(cfg) -> None:
    refuse_conditional(cfg)
    need_labels(cfg)


FAMILY = Family(
    name="tripletgan",
    groups_in_order=(Group("D", ("D",), TripletGANLoss.d_loss, Role.DISCRIMINATOR),
                     Group("G", ("G",), TripletGANLoss.g_loss, Role.GENERATOR)),
    prior=TripletGANLoss.prior, networks=networks, loss=loss, eval_features=features,
    pictures=generator_pictures, check=check, mines_triplets=True, embedding_size="embedding_dim",
    archs=("dcgan", "mlp"))
