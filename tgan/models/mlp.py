"""The tripletGAN reference's MLP networks (maciejzieba/tripletGAN, tgan_mnist.py), model.arch=mlp:
small enough that the reference protocol runs on a CPU in minutes.

- MLPEmbedder, the reference's D: flattened image -> 1000 -> 500 -> 250 -> 250 -> 250 -> K, ReLU, with
  the regularisers of tgan/models/regularisers.py (the reference: weight norm with a fixed hidden
  scale and a trained output scale, noise 0.3 on the input and 0.5 after every hidden layer). With
  norm=batch the hidden layers are Linear + BatchNorm instead. It is tripletgan's D (K =
  embedding_dim) and, for the fair baseline, the triplet family's E (K = latent_dim).
- MLPGenerator, the reference's G: z -> 500 -> 500 (batch norm without a scale, then softplus) ->
  pixels, a weight-normalised output layer with a trained scale (no data-dependent init), sigmoid;
  mapped to [-1, 1] (tgan's image range) as 2 * sigmoid - 1.
"""
from __future__ import annotations

import torch
from torch import nn

from tgan.models.regularisers import Regularisers, WeightNormed, after_hidden, input_noise

HIDDEN_D = (1000, 500, 250, 250, 250)
HIDDEN_G = (500, 500)


class MLPEmbedder(nn.Module):
    """x [B, C, S, S] -> [B, out_dim]; with_hidden: (the last hidden layer's activations, the output)."""

    def __init__(self, channels: int, image_size: int, out_dim: int, reg: Regularisers = Regularisers(norm="weight")):
        super().__init__()
        layers, n_in = [input_noise(reg)], channels * image_size**2
        for n in HIDDEN_D:
            if reg.norm == "weight":
                layers.append(WeightNormed.linear(n_in, n))
            else:
                layers += [nn.Linear(n_in, n, bias=False), nn.BatchNorm1d(n)]
            layers += [nn.ReLU(), *after_hidden(reg)]
            n_in = n
        self.hidden = nn.Sequential(*layers)
        self.head = (WeightNormed.linear(n_in, out_dim, train_scale=True) if reg.norm == "weight"
                     else nn.Linear(n_in, out_dim))
        self.hidden_features = n_in

    def forward(self, x: torch.Tensor, *, with_hidden: bool = False):
        h = self.hidden(x.flatten(1))
        return (h, self.head(h)) if with_hidden else self.head(h)


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, channels: int, image_size: int):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        layers, n_in = [], latent_dim
        for n in HIDDEN_G:
            linear = nn.Linear(n_in, n, bias=False)
            nn.init.xavier_uniform_(linear.weight)  # Lasagne's default
            layers += [linear, nn.BatchNorm1d(n, affine=False), _Bias(n), nn.Softplus()]
            n_in = n
        self.hidden = nn.Sequential(*layers)
        self.out = WeightNormed(nn.init.xavier_uniform_(torch.empty(channels * image_size**2, n_in)),
                                train_scale=True, data_init=False)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return (2 * torch.sigmoid(self.out(self.hidden(z))) - 1).view(-1, *self.shape)


class _Bias(nn.Module):
    """The reference's batch norm: a trained shift, no trained scale."""

    def __init__(self, n: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias

