"""The tripletGAN reference's regularisers for D and E (Zieba & Wang 2017, after Improved-GAN), as
options of every network that has them (model.norm, model.input_noise, model.hidden_noise,
model.dropout), and the weight-normalised layers they need.

- Gaussian noise on the input and after every hidden layer, in training mode only. Sigmas are in
  the reference's pixel units (images in [0, 1]); tgan's images are in [-1, 1], so the input noise
  added is 2 * sigma and means the same thing as the reference's 0.3.
- Dropout after every hidden layer, in training mode only.
- Weight normalisation instead of batch norm (Salimans & Kingma 2016, the reference's nn.py):
  w = s * v / ||v|| per output unit, with the reference's data-dependent initialisation (the first
  training forward sets s and the bias so that the layer's pre-activations have zero mean and unit
  variance on that batch) and a FIXED scale s in the hidden layers. torch's weight_norm makes s
  trainable, which lets D scale its activations up until the fixed noise no longer matters.

The data-dependent values are buffers (saved and restored with the weights), and the trainable
bias (and the output layer's trainable scale) are offsets added to them, starting at 0. Adam moves
an offset exactly as it would move the reference's parameter, and no optimizer ever holds a stale
copy of a value the first forward rewrote (DeepSpeed ZeRO keeps fp32 master copies of parameters,
so rewriting a parameter in forward would be undone by its first step). Under torch.distributed the
initialisation statistics are summed over every rank, so every rank sets the same values, the ones
one process would set on the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Regularisers:
    """How a D or E is regularised (see the module docstring); the defaults are DCGAN's (batch norm, nothing else)."""

    norm: str = "batch"
    """batch or weight."""
    input_noise: float = 0.0
    hidden_noise: float = 0.0
    dropout: float = 0.0


def regularisers(m) -> Regularisers:
    """The Regularisers a ModelConfig asks for."""
    return Regularisers(norm=m.norm, input_noise=m.input_noise, hidden_noise=m.hidden_noise, dropout=m.dropout)


class GaussianNoise(nn.Module):
    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sigma * torch.randn_like(x) if self.training and self.sigma > 0 else x


def input_noise(reg: Regularisers) -> nn.Module:
    """Noise on [-1, 1] images at the reference's [0, 1] sigma."""
    return GaussianNoise(2 * reg.input_noise)


def after_hidden(reg: Regularisers) -> list[nn.Module]:
    """What follows every hidden layer's activation: present when off too (sigma 0, p 0 draw no random
    number), so the weights' names do not depend on the regularisers and any checkpoint loads into
    the same architecture with them changed."""
    return [GaussianNoise(reg.hidden_noise), nn.Dropout(reg.dropout)]


class WeightNormed(nn.Module):
    """A linear (v: [out, in]) or 2-d conv (v: [out, in, k, k]) layer with w = s * v / ||v||.

    data_init: the first forward in training mode sets s and the bias from its batch (the reference's D);
    otherwise s starts at 1 (the reference's l2normalize, G's output layer). train_scale: s is trained
    (the reference trains it in D's output layer only).
    """

    def __init__(self, v: torch.Tensor, *, stride: int = 1, padding: int = 0, train_scale: bool = False,
                 data_init: bool = True):
        super().__init__()
        out = v.shape[0]
        self.v = nn.Parameter(v)
        self.bias = nn.Parameter(torch.zeros(out))
        self.scale = nn.Parameter(torch.zeros(out)) if train_scale else None
        self.register_buffer("init_scale", torch.ones(out))
        self.register_buffer("init_bias", torch.zeros(out))
        self.register_buffer("initialized", torch.tensor(not data_init))
        self.stride, self.padding = stride, padding
        self._ready = not data_init  # the buffer's value on the host: no device read per forward

    @classmethod
    def linear(cls, n_in: int, n_out: int, **kwargs) -> WeightNormed:
        return cls(torch.randn(n_out, n_in) * 0.05, **kwargs)

    @classmethod
    def conv(cls, c_in: int, c_out: int, kernel: int, stride: int, padding: int, **kwargs) -> WeightNormed:
        return cls(torch.randn(c_out, c_in, kernel, kernel) * 0.05, stride=stride, padding=padding, **kwargs)

    def _apply_weight(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        norm = self.v.flatten(1).norm(dim=1).clamp_min(1e-12)
        w = self.v * (scale / norm).view(-1, *([1] * (self.v.dim() - 1)))
        return F.linear(x, w) if self.v.dim() == 2 else F.conv2d(x, w, None, self.stride, self.padding)

    @torch.no_grad()
    def _data_init(self, x: torch.Tensor) -> None:
        a = self._apply_weight(x, self.init_scale).transpose(0, 1).flatten(1).double()  # [out, rows]
        stats = torch.cat([a.new_tensor([a.shape[1]]), a.sum(1), a.square().sum(1)])
        if torch_dist.is_available() and torch_dist.is_initialized():  # (tgan.dist imports the config)
            torch_dist.all_reduce(stats)
        n, out = stats[0], a.shape[0]
        mean = stats[1:1 + out] / n
        std = (stats[1 + out:] / n - mean.square()).clamp_min(1e-12).sqrt()
        self.init_scale.copy_(self.init_scale / std)
        self.init_bias.copy_(-mean / std)
        self.initialized.fill_(True)
        self._ready = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.initialized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self._ready:
            self._data_init(x)
        scale = self.init_scale if self.scale is None else self.init_scale + self.scale
        out = self._apply_weight(x, scale)
        return out + (self.init_bias + self.bias).view(-1, *([1] * (out.dim() - 2)))
