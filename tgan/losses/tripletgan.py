"""tripletGAN (Zieba & Wang 2017, "Training Triplet Networks with GAN"; notes in the papers folder,
tripletgan.md): Improved-GAN (Salimans et al. 2016) with its class logits replaced by a K-dim
embedding f = D(x), which three terms shape at once.

D phase (D trained; G(z) drawn without gradient):
    L_D = triplet_weight * triplet(f(xl), yl) + L_unl [+ consistency_weight * L_cons]
  - triplet: on D's outputs for the labelled stream, mined over every rank (loss.triplet_form,
    loss.miner; the reference's is softmax with every triplet of its batch);
  - L_unl: l(x) = logsumexp_k f_k(x) is the real/fake logit (D(x) = Z / (Z + 1), Z = sum_k exp f_k),
        L_unl = -1/2 E_x[l(x)] + 1/2 E_x[softplus(l(x))] + 1/2 E_z[softplus(l(G(z)))]
              =  1/2 E_x[softplus(-l(x))] + 1/2 E_z[softplus(l(G(z)))],
    the second form computed (equal, and stable for large |l|);
  - L_cons (off by default, issue 18): E_x ||f(x) - f(x')||^2, x' = x plus pixel noise of sigma
    loss.consistency_sigma (the network's own noise and dropout differ between the passes too).
G phase (G trained, D frozen): feature matching, the mean over the K (or hidden) dimensions of
    (mean_batch h(G(z)) - mean_batch h(x))^2,  h = D's output f (loss.feature_matching=output,
    the reference's scripts) or D's last hidden layer (hidden, Improved-GAN's);
the reference averages over the dimensions rather than summing them (Adam makes the two the same).

z ~ U(-1, 1): the reference draws U(0, 1), whose affine image G's first linear layer absorbs.
Under torch.distributed the batch means of feature matching are global (tgan.losses.mining.global_sum),
so W ranks of batch B train exactly like one process with batch W*B, as the triplet term does.

Scalars: loss/d, loss/triplet, triplets, loss/unlabelled, d/real and d/fake (mean sigmoid of l on
real and generated images), loss/consistency when on; loss/g in the G phase.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tgan.losses.base import Batch, GANLoss, Nets, detach_scalars, sample_z
from tgan.losses.mining import global_sum, global_triplet_loss


def unlabelled_loss(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_unl, l(real), l(fake)) for D's outputs on real and generated images."""
    l_real, l_fake = torch.logsumexp(real.float(), dim=1), torch.logsumexp(fake.float(), dim=1)
    return 0.5 * (F.softplus(-l_real).mean() + F.softplus(l_fake).mean()), l_real, l_fake


def global_mean(rows: torch.Tensor) -> torch.Tensor:
    """The mean of the rows of every rank (see global_sum for the gradient)."""
    rows = rows.float()
    total = global_sum(torch.cat([rows.sum(0), rows.new_tensor([rows.shape[0]])]))
    return total[:-1] / total[-1]


def feature_matching(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return (global_mean(fake) - global_mean(real)).square().mean()


def consistency(emb: torch.Tensor, net, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean squared distance between emb = net(x) and net(x + noise) (sigma in [0, 1]-pixel units)."""
    return (net(x + 2 * sigma * torch.randn_like(x)).float() - emb.float()).square().sum(1).mean()


class TripletGANLoss(GANLoss):
    prior = "uniform"

    def __init__(self, *, latent_dim: int, weight: float = 1.0, form: str = "softmax", miner: str = "all",
                 margin: float = 1.0, feature_matching: str = "output", consistency_weight: float = 0.0,
                 consistency_sigma: float = 0.15):
        if miner == "semihard" and margin <= 0:
            raise ValueError(f"loss.triplet_margin={margin} selects no triplet with loss.miner=semihard: use > 0")
        self.latent_dim, self.weight, self.form, self.miner, self.margin = latent_dim, weight, form, miner, margin
        self.hidden = feature_matching == "hidden"
        self.consistency_weight, self.consistency_sigma = consistency_weight, consistency_sigma

    def _fake(self, nets: Nets, like: torch.Tensor) -> torch.Tensor:
        return nets["G"](sample_z(self.prior, like.shape[0], self.latent_dim, like.device))

    def d_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        f_real = nets["D"](batch.x)  # first call: a weight-normed D initialises on the unlabelled batch
        xl, yl = batch.labelled()
        triplet, count = global_triplet_loss(nets["D"](xl), yl, form=self.form, miner=self.miner, margin=self.margin)
        with torch.no_grad():
            fake = self._fake(nets, batch.x)
        unl, l_real, l_fake = unlabelled_loss(f_real, nets["D"](fake))
        loss = self.weight * triplet + unl
        scalars = {"loss/triplet": triplet, "triplets": count, "loss/unlabelled": unl,
                   "d/real": torch.sigmoid(l_real).mean(), "d/fake": torch.sigmoid(l_fake).mean()}
        if self.consistency_weight > 0:
            cons = consistency(f_real, nets["D"], batch.x, self.consistency_sigma)
            loss = loss + self.consistency_weight * cons
            scalars["loss/consistency"] = cons
        return loss, detach_scalars({"loss/d": loss, **scalars})

    def g_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():  # D is frozen; the real side needs no graph
            real = self._matched(nets, batch.x)
        loss = feature_matching(self._matched(nets, self._fake(nets, batch.x)), real)
        return loss, detach_scalars({"loss/g": loss})

    def _matched(self, nets: Nets, x: torch.Tensor) -> torch.Tensor:
        return nets["D"](x, with_hidden=True)[0] if self.hidden else nets["D"](x)
