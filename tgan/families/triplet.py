"""triplet: the triplet-only baseline. The encoder E of tribigan, trained with only the triplet loss
on the labelled stream (mined over every rank's labelled rows, as in tribigan); no G, no D.

It answers "does the unlabelled data help?": tribigan minus its GAN. The unlabelled batch the loop
draws every step is not used. Evaluation features are E(x), as for tribigan; pictures need a G, so
there are none besides the encoder's gradient-norm plot.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tgan.families.base import Family, Group, PictureInputs, Role, need_labels, refuse_conditional
from tgan.families.bigan import encoder_features
from tgan.losses.base import Batch, GANLoss, Nets, detach_scalars
from tgan.losses.mining import global_triplet_loss
from tgan.models.mlp import MLPEmbedder
from tgan.models.networks import Encoder
from tgan.models.regularisers import regularisers


class TripletLoss(GANLoss):
    """triplet(E(xl), yl) with tribigan's form, miner and margin (loss.triplet_*, loss.miner)."""

    prior = None

    def __init__(self, *, form: str = "softmax", miner: str = "all", margin: float = 1.0):
        if miner == "semihard" and margin <= 0:
            raise ValueError(f"loss.triplet_margin={margin} selects no triplet with loss.miner=semihard: use > 0")
        self.form, self.miner, self.margin = form, miner, margin

    def e_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        xl, yl = batch.labelled()
        loss, count = global_triplet_loss(nets["E"](xl), yl, form=self.form, miner=self.miner, margin=self.margin)
        return loss, detach_scalars({"loss/triplet": loss, "triplets": count})


def networks(m, channels: int, image_size: int, num_classes: int) -> dict[str, nn.Module]:
    """tribigan's E, or with model.arch=mlp tripletgan's MLP D (set latent_dim to its embedding_dim): the
    same network and regularisers as the GAN's, with no GAN."""
    if m.arch == "mlp":
        return {"E": MLPEmbedder(channels, image_size, m.latent_dim, regularisers(m))}
    return {"E": Encoder(channels, image_size, m.width, m.latent_dim, regularisers(m))}


def loss(loss_cfg, model_cfg, num_classes: int) -> TripletLoss:
    return TripletLoss(form=loss_cfg.triplet_form, miner=loss_cfg.miner, margin=loss_cfg.triplet_margin)


def pictures(nets: dict[str, nn.Module], inputs: PictureInputs, out: Path) -> dict[str, Path]:
    plot = inputs.draw.grad_norm_plot(inputs.metrics, out / "grad_norm_E.png", key="grad_norm/E")
    return {} if plot is None else {"grad_norm_E": plot}


def check(cfg) -> None:
    refuse_conditional(cfg)
    need_labels(cfg)


FAMILY = Family(
    name="triplet",
    # The generator role: E learns at optim.lr_g, as tribigan's E does.
    groups_in_order=(Group("E", ("E",), TripletLoss.e_loss, Role.GENERATOR),),
    prior=None, generator=None, networks=networks, loss=loss, eval_features=encoder_features, pictures=pictures,
    check=check, mines_triplets=True, archs=("dcgan", "mlp"))
