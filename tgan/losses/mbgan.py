"""MBGAN (Dai, Xie, Fang 2017): a metric discriminator D(x) in R^K and a data-dependent margin.

    L_D = max(0, h + d(x_i, x_j) - d(x_i, G(z))),   h = alpha * ||x_j - G(z)||_1      (eqs. 1, 4)
    L_G = d(x_j, G(z))                                                              (eq. 2)

d is the Euclidean distance between D's outputs (eq. 3), non-squared; both losses are averaged over
the minibatch. Choices the paper leaves open, made here:
- x_i and x_j: the unlabelled batch split in half (first half x_i, second half x_j; an odd last row
  is left out), so one D forward serves both and no second batch has to be drawn.
- The L1 norm is averaged over pixels (loss.l1_reduction="mean", default) or summed ("sum"). With
  images in [-1, 1] the mean is in [0, 2], on the scale of the feature distances d at DCGAN init, so
  the paper's alpha study (0.2, 2, 20, 200) spans "margin below d" to "margin far above d". Summed
  over 32x32x3 pixels, h would be ~1000 * alpha and every alpha studied would be "far above".
- In L_D only D is trained: G(z) is drawn without gradient, so h is a constant there. In L_G the
  margin does not appear (eq. 2). Algorithm 1's N generator steps per D step are the loop's job:
  each G phase draws a fresh z, as the algorithm samples a new minibatch of noise per step.
- z ~ U(-1, 1) (DCGAN's prior). Algorithm 1 says U(0, 1); that is the affine image (u + 1) / 2, which
  G's first (linear) layer absorbs exactly, so the two priors define the same model family.
- Conditional (section 3.3): D sees each real image with its own class; G(z) is drawn for x_j's
  class and judged by D under that class, so h compares x_j with a fake of the same class.

Scalars: loss/d, loss/margin (mean h), d/real = mean d(x_i, x_j), d/fake = mean d(x_i, G(z)) (D
phase; MBGAN's D outputs features, so distances are its meaningful "outputs"), loss/g (G phase).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tgan.config import L1_REDUCTIONS
from tgan.losses.base import Batch, GANLoss, Nets, detach_scalars, sample_z


def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance; its gradient at a == b is 0 (not NaN)."""
    return torch.linalg.vector_norm(a - b, dim=1)


class MBGANLoss(GANLoss):
    prior = "uniform"

    def __init__(self, *, latent_dim: int, alpha: float, l1_reduction: str = "mean", conditional: bool = False):
        if l1_reduction not in L1_REDUCTIONS:
            raise ValueError(f"loss.l1_reduction={l1_reduction!r} is invalid: expected one of {L1_REDUCTIONS}")
        self.latent_dim, self.alpha, self.l1_reduction, self.conditional = latent_dim, alpha, l1_reduction, conditional

    def _split(self, batch: Batch) -> tuple[int, torch.Tensor | None]:
        m = batch.x.shape[0] // 2
        if m == 0:
            raise ValueError(f"mbgan splits each batch into x_i and x_j: data.batch_size must be >= 2, "
                             f"got a batch of {batch.x.shape[0]}")
        return m, (batch.y if self.conditional else None)

    def _fake(self, nets: Nets, m: int, y_j: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        return nets["G"](sample_z(self.prior, m, self.latent_dim, like.device), y_j)

    def d_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        m, y = self._split(batch)
        y_j = None if y is None else y[m:2 * m]
        f = nets["D"](batch.x[:2 * m], None if y is None else y[:2 * m])
        f_i, f_j = f[:m], f[m:]
        with torch.no_grad():
            fake = self._fake(nets, m, y_j, batch.x)
        f_fake = nets["D"](fake, y_j)
        d_real, d_fake = distance(f_i, f_j), distance(f_i, f_fake)
        h = self.alpha * self.l1(batch.x[m:2 * m] - fake)
        loss = F.relu(h + d_real - d_fake).mean()
        return loss, detach_scalars({"loss/d": loss, "loss/margin": h.mean(), "d/real": d_real.mean(),
                                "d/fake": d_fake.mean()})

    def g_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        m, y = self._split(batch)
        y_j = None if y is None else y[m:2 * m]
        with torch.no_grad():  # D is frozen here; features of x_j computed as in the D phase
            f_j = nets["D"](batch.x[:2 * m], None if y is None else y[:2 * m])[m:]
        f_fake = nets["D"](self._fake(nets, m, y_j, batch.x), y_j)
        loss = distance(f_j, f_fake).mean()
        return loss, detach_scalars({"loss/g": loss})

    def l1(self, diff: torch.Tensor) -> torch.Tensor:
        """Per-sample L1 norm of an image difference, averaged or summed over pixels (loss.l1_reduction)."""
        flat = diff.abs().flatten(1)
        return flat.mean(1) if self.l1_reduction == "mean" else flat.sum(1)
