"""tribigan: BiGAN plus a triplet loss on E(x) over the labelled stream (Zamorski & Zieba)."""
from __future__ import annotations

from tgan.families.base import Family, Group, Role, need_labels, refuse_conditional
from tgan.families.bigan import encoder_features, generator_pictures, networks
from tgan.losses.bigan import TriBiGANLoss


def loss(loss_cfg, model_cfg, num_classes: int) -> TriBiGANLoss:
    return TriBiGANLoss(latent_dim=model_cfg.latent_dim, nonsaturating=loss_cfg.nonsaturating,
                        weight=loss_cfg.triplet_weight, form=loss_cfg.triplet_form, miner=loss_cfg.miner,
                        margin=loss_cfg.triplet_margin, consistency_weight=loss_cfg.consistency_weight,
                        consistency_sigma=loss_cfg.consistency_sigma)


def check(cfg) -> None:
    refuse_conditional(cfg)
    need_labels(cfg)


FAMILY = Family(
    name="tribigan",
    groups_in_order=(Group("D", ("D",), TriBiGANLoss.d_loss, Role.DISCRIMINATOR),
                     Group("G", ("G", "E"), TriBiGANLoss.g_loss, Role.GENERATOR)),
    prior=TriBiGANLoss.prior, networks=networks, loss=loss, eval_features=encoder_features,
    pictures=generator_pictures, check=check, mines_triplets=True)
