"""DCGAN (Radford et al.), the baseline both papers compare against.

L_D = -E_x[log D(x)] - E_z[log(1 - D(G(z)))], written on logits as BCE-with-logits (softplus).
G minimises -log D(G(z)) (non-saturating, loss.nonsaturating=True, default: see bigan.py for why)
or log(1 - D(G(z))) (the minimax form). z ~ U(-1, 1) as in DCGAN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tgan.losses.base import Batch, GANLoss, Nets, detach_scalars, sample_z


class DCGANLoss(GANLoss):
    prior = "uniform"

    def __init__(self, *, latent_dim: int, nonsaturating: bool = True):
        self.latent_dim, self.nonsaturating = latent_dim, nonsaturating

    def _fake(self, nets: Nets, x: torch.Tensor) -> torch.Tensor:
        return nets["G"](sample_z(self.prior, x.shape[0], self.latent_dim, x.device))

    def d_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        real = nets["D"](batch.x)
        with torch.no_grad():
            fake_x = self._fake(nets, batch.x)
        fake = nets["D"](fake_x)
        loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        return loss, detach_scalars({"loss/d": loss, "d/real": torch.sigmoid(real).mean(),
                                "d/fake": torch.sigmoid(fake).mean()})

    def g_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        fake = nets["D"](self._fake(nets, batch.x))
        loss = F.softplus(-fake).mean() if self.nonsaturating else -F.softplus(fake).mean()
        return loss, detach_scalars({"loss/g": loss, "d/fake": torch.sigmoid(fake).mean()})
