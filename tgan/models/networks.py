"""The heads on the shared DCGAN trunk: encoder, BiGAN joint D, MBGAN metric D, DCGAN probability D.

Every network is architecture only: no loss, no optimizer, no device logic.
"""
from __future__ import annotations

import torch
from torch import nn

from tgan.models.dcgan import ConvTrunk, init_dcgan, one_hot
from tgan.models.regularisers import Regularisers


class Encoder(nn.Module):
    """BiGAN's E(x) -> z [B, latent_dim]: D's conv trunk, then a linear head (unbounded, matching N(0, 1) z)."""

    def __init__(self, channels: int, image_size: int, width: float, latent_dim: int,
                 reg: Regularisers = Regularisers()):
        super().__init__()
        self.trunk = ConvTrunk(channels, image_size, width, reg)
        self.head = nn.Linear(self.trunk.out_features, latent_dim)
        init_dcgan(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).flatten(1))


class JointDiscriminator(nn.Module):
    """BiGAN/ALI D(x, z) -> logit [B]: conv trunk on x, MLP on z, joint MLP on the concatenation.

    No dropout (ALI used 0.2): dropout draws per-rank random masks, so W ranks of batch B would no
    longer compute the same function as one process with batch W*B, which the 1-worker exactness test
    (tests/integration/test_ray_train.py) pins; BatchNorm in the trunk and LeakyReLU already regularise D as in DCGAN.
    """

    def __init__(self, channels: int, image_size: int, width: float, latent_dim: int,
                 reg: Regularisers = Regularisers()):
        super().__init__()
        hidden = max(1, round(512 * width))
        self.trunk = ConvTrunk(channels, image_size, width, reg)
        self.z_mlp = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2))
        self.joint = nn.Sequential(
            nn.Linear(self.trunk.out_features + hidden, 2 * hidden), nn.LeakyReLU(0.2), nn.Linear(2 * hidden, 1))
        init_dcgan(self)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.trunk(x).flatten(1), self.z_mlp(z)], dim=1)
        return self.joint(h).squeeze(1)


class MetricDiscriminator(nn.Module):
    """MBGAN's D(x, y=None) -> [B, K]: conv trunk, then one linear layer to R^K (no nonlinearity).

    Conditional (num_classes > 0, paper section 3.3): the one-hot class is broadcast over the image as
    extra input channels (the cGAN input-concatenation form; a projection would change the paper's
    D into a different model). y=None gives all-zero class channels, i.e. no class information: the
    evaluation features use that so a k-NN probe never sees the label it is asked to predict.
    """

    def __init__(self, channels: int, image_size: int, width: float, embedding_dim: int, num_classes: int = 0,
                 reg: Regularisers = Regularisers()):
        super().__init__()
        self.num_classes = num_classes
        self.trunk = ConvTrunk(channels + num_classes, image_size, width, reg)
        self.head = nn.Linear(self.trunk.out_features, embedding_dim)
        init_dcgan(self)

    def _input(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if not self.num_classes:
            return x
        c = one_hot(y, self.num_classes, x.shape[0], x)[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return torch.cat([x, c], dim=1)

    def conv_activations(self, x: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.trunk.activations(self._input(x, y))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *, with_hidden: bool = False):
        """D(x) [B, K]; with_hidden: (the flat trunk output D(x) is computed from, D(x))."""
        h = self.trunk(self._input(x, y)).flatten(1)
        return (h, self.head(h)) if with_hidden else self.head(h)


class ProbDiscriminator(nn.Module):
    """DCGAN's D(x) -> logit [B] (the probability of "real" is its sigmoid)."""

    def __init__(self, channels: int, image_size: int, width: float, reg: Regularisers = Regularisers()):
        super().__init__()
        self.trunk = ConvTrunk(channels, image_size, width, reg)
        self.head = nn.Linear(self.trunk.out_features, 1)
        init_dcgan(self)

    def conv_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.trunk.activations(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).flatten(1)).squeeze(1)
