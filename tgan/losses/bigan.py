"""BiGAN (Donahue et al.) and the semi-supervised triplet-BiGAN (Zamorski & Zieba).

V(D, E, G) = E_x[log D(x, E(x))] + E_z[log(1 - D(G(z), z))]; D maximises V, G and E minimise it.
Everything is written on logits l with log D = -softplus(-l) and log(1 - D) = -softplus(l), which is
BCE-with-logits: stable where sigmoid would round to 0 or 1.

Non-saturating G/E objective (loss.nonsaturating, the default): G and E minimise
softplus(l_real) + softplus(-l_fake), i.e. BCE with the labels swapped, instead of V itself. Early in
training D separates the pairs easily, and log(1 - D(G(z), z)) is flat there (its gradient vanishes
as D(G(z), z) -> 0; likewise log D(x, E(x)) as D(x, E(x)) -> 1); the swapped form has the same fixed
point but strong gradients exactly then (Goodfellow et al. 2014; BiGAN's own code does this).

z ~ N(0, 1): E's linear head is unbounded, so a Gaussian prior is the one its outputs can match.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tgan.losses.base import Batch, GANLoss, Nets, detach_scalars, sample_z
from tgan.losses.mining import global_triplet_loss
from tgan.losses.tripletgan import consistency


class BiGANLoss(GANLoss):
    prior = "normal"

    def __init__(self, *, latent_dim: int, nonsaturating: bool = True):
        self.latent_dim, self.nonsaturating = latent_dim, nonsaturating

    def _logits(self, nets: Nets, x: torch.Tensor, train_ge: bool) -> tuple[torch.Tensor, torch.Tensor]:
        z = sample_z(self.prior, x.shape[0], self.latent_dim, x.device)
        with torch.set_grad_enabled(train_ge and torch.is_grad_enabled()):
            z_enc, x_fake = nets["E"](x), nets["G"](z)
        return nets["D"](x, z_enc), nets["D"](x_fake, z)

    def d_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """D's phase: -V, with G(z) and E(x) drawn without gradient."""
        real, fake = self._logits(nets, batch.x, train_ge=False)
        loss = F.softplus(-real).mean() + F.softplus(fake).mean()  # -V
        return loss, detach_scalars({"loss/d": loss, "d/real": torch.sigmoid(real).mean(),
                                "d/fake": torch.sigmoid(fake).mean()})

    def g_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """G and E's phase (non-saturating or V itself)."""
        loss, scalars = self._g_terms(nets, batch)
        return loss, detach_scalars(scalars)

    def _g_terms(self, nets: Nets, batch: Batch):
        real, fake = self._logits(nets, batch.x, train_ge=True)
        if self.nonsaturating:
            loss = F.softplus(real).mean() + F.softplus(-fake).mean()
        else:
            loss = -(F.softplus(-real).mean() + F.softplus(fake).mean())  # V itself
        return loss, {"loss/g": loss, "d/real": torch.sigmoid(real).mean(), "d/fake": torch.sigmoid(fake).mean()}


class TriBiGANLoss(BiGANLoss):
    """BiGAN plus, in the G/E phase, triplet_weight * triplet(E(xl), yl) mined over all ranks.

    The triplet loss acts on E(x) directly (the latent code is the embedding), on the labelled
    stream only (Batch.labelled); the D phase is BiGAN's. With consistency_weight > 0 the G/E phase
    adds that times tripletgan's consistency term on E of the unlabelled batch (off by default).
    """

    def __init__(self, *, latent_dim: int, nonsaturating: bool = True, weight: float = 1.0,
                 form: str = "softmax", miner: str = "all", margin: float = 1.0, consistency_weight: float = 0.0,
                 consistency_sigma: float = 0.15):
        super().__init__(latent_dim=latent_dim, nonsaturating=nonsaturating)
        if miner == "semihard" and margin <= 0:
            raise ValueError(f"loss.triplet_margin={margin} selects no triplet with loss.miner=semihard: use > 0")
        self.weight, self.form, self.miner, self.margin = weight, form, miner, margin
        self.consistency_weight, self.consistency_sigma = consistency_weight, consistency_sigma

    def _g_terms(self, nets: Nets, batch: Batch):
        loss, scalars = super()._g_terms(nets, batch)
        xl, yl = batch.labelled()
        triplet, count = global_triplet_loss(nets["E"](xl), yl, form=self.form, miner=self.miner,
                                             margin=self.margin)
        scalars.update({"loss/triplet": triplet, "triplets": count})
        loss = loss + self.weight * triplet
        if self.consistency_weight > 0:
            scalars["loss/consistency"] = consistency(nets["E"](batch.x), nets["E"], batch.x, self.consistency_sigma)
            loss = loss + self.consistency_weight * scalars["loss/consistency"]
        return loss, scalars
