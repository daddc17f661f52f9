"""DCGAN building blocks shared by every family: the conv trunk (D and E) and the generator.

Architecture of MBGAN's Tables 1 and 2 (Dai et al. 2017, after Radford et al. 2015): 5x5 kernels,
BatchNorm, LeakyReLU(0.2), tanh output, channels 64, 128, 256, 512 times `width`.

Size rule (one rule for 8, 16, 28, 32 and 64 pixels). The trunk always has four conv layers (the
tables' 64..512 channels) and always ends on a 4x4 map (the DCGAN "project and reshape" base). A
stride-2 layer maps a side s to ceil(s / 2) (padding 2), so a size needs n = the number of
ceil-halvings from it down to 4 stride-2 layers:

    64 -> 32 -> 16 -> 8 -> 4   n = 4   strides 2 2 2 2   (Tables 1-2 as printed)
    32 -> 16 -> 8 -> 4         n = 3   strides 1 2 2 2   (the paper's 32x32 change)
    28 -> 14 -> 7 -> 4         n = 3   strides 1 2 2 2   (28 = 7*4; 7 -> 4 is a ceil-halving)
    16 -> 8 -> 4               n = 2   strides 1 1 2 2
     8 -> 4                    n = 1   strides 1 1 1 2

The remaining 4 - n layers have stride 1 and sit at full resolution: the first D layers and the last
G layers, which is exactly the paper's rule for 32x32 ("the stride was changed from 2 to 1 for the
last G layer and first D layer"), generalised. G mirrors D's sizes exactly: a transposed 5x5
stride-2 conv maps s to 2s - 1 + output_padding, and output_padding (0 or 1) is chosen per layer to
hit D's size (4 -> 7 for 28 uses 0, everything else 1). So 28 and 32 cost the same and every network
has the same depth, which keeps the families comparable across datasets.

DCGAN conventions: no BN on D's first layer nor on G's output layer; weights N(0, 0.02), BN scale
N(1, 0.02), biases 0. G projects z with a linear layer to a 4x4x(512*width) map (DCGAN's "project
and reshape"), then four transposed convs. LeakyReLU in G too, as in MBGAN's Table 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tgan.config import IMAGE_SIZES
from tgan.models.regularisers import Regularisers, WeightNormed, after_hidden, input_noise

NUM_LAYERS = 4
BASE_SIDE = 4


def conv_plan(image_size: int) -> list[tuple[int, int]]:
    """(stride, output side) of each of D's four conv layers for `image_size` (see module docstring)."""
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"data.image_size={image_size} is not supported by the DCGAN nets: use one of {IMAGE_SIZES}")
    n = math.ceil(math.log2(image_size / BASE_SIDE))
    plan, side = [], image_size
    for stride in [1] * (NUM_LAYERS - n) + [2] * n:
        side = side if stride == 1 else math.ceil(side / 2)
        plan.append((stride, side))
    assert side == BASE_SIDE, (image_size, plan)
    return plan


def channel_widths(width: float) -> list[int]:
    """Output channels of D's four layers: 64, 128, 256, 512 times `width` (at least 1)."""
    return [max(1, round(64 * 2**k * width)) for k in range(NUM_LAYERS)]


def init_dcgan(module: nn.Module) -> None:
    """DCGAN init: conv/linear weights N(0, 0.02), BN scale N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def one_hot(y: torch.Tensor | None, num_classes: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """[n, num_classes] one-hot of y; all zeros when y is None (no class information)."""
    if y is None:
        return like.new_zeros(n, num_classes)
    if y.shape != (n,):
        raise ValueError(f"class labels y must have shape [{n}], got {list(y.shape)}")
    return F.one_hot(y.long(), num_classes).to(like.dtype)


class ConvTrunk(nn.Module):
    """D's four conv layers: x [B, C, S, S] -> [B, 512*width, 4, 4]. Shared by D and E.

    `reg` (tgan/models/regularisers.py): with norm=weight every layer is weight-normalised (fixed
    scale, data-dependent init) and none has batch norm; noise goes on the input and, with dropout,
    after every layer but the last, whose output the heads read."""

    def __init__(self, in_channels: int, image_size: int, width: float, reg: Regularisers = Regularisers()):
        super().__init__()
        layers, c_in = [], in_channels
        plan = list(zip(conv_plan(image_size), channel_widths(width)))
        for k, ((stride, _), c_out) in enumerate(plan):
            if reg.norm == "weight":
                block = [WeightNormed.conv(c_in, c_out, 5, stride, 2)]
            else:
                block = [nn.Conv2d(c_in, c_out, 5, stride, 2, bias=k == 0)]
                if k > 0:  # DCGAN: no BN on the discriminator's first layer
                    block.append(nn.BatchNorm2d(c_out))
            block.append(nn.LeakyReLU(0.2))
            if k < len(plan) - 1:
                block += after_hidden(reg)
            layers.append(nn.Sequential(*block))
            c_in = c_out
        self.noise = input_noise(reg)
        self.layers = nn.ModuleList(layers)
        self.out_features = c_in * BASE_SIDE * BASE_SIDE
        init_dcgan(self)

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every conv layer's output (after its activation), for the DCGAN feature protocol."""
        x = self.noise(x)
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activations(x)[-1]


class Generator(nn.Module):
    """G(z, y=None) -> image in [-1, 1]. With num_classes > 0, a one-hot y is concatenated to z.

    An unconditional G ignores y, so callers can pass the batch's labels uniformly.
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: float, num_classes: int = 0):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        plan, widths = conv_plan(image_size), channel_widths(width)
        self.base_channels = widths[-1]
        self.project = nn.Linear(latent_dim + num_classes, widths[-1] * BASE_SIDE**2, bias=False)
        self.project_bn = nn.BatchNorm1d(widths[-1] * BASE_SIDE**2)
        # Walk D's plan backwards: G layer k undoes D layer 3 - k, from its output side to its input side.
        strides = [stride for stride, _ in plan]
        d_in = [image_size] + [side for _, side in plan[:-1]]
        d_out = [side for _, side in plan]
        layers, c_in = [], widths[-1]
        for j in reversed(range(NUM_LAYERS)):
            last = j == 0
            # a 5x5 transposed conv with padding 2 maps s to stride * (s - 1) + 1 + output_padding
            pad_out = d_in[j] - (strides[j] * (d_out[j] - 1) + 1)
            c_out = channels if last else widths[j - 1]
            conv = nn.ConvTranspose2d(c_in, c_out, 5, strides[j], 2, output_padding=pad_out, bias=last)
            # DCGAN: no BN on the generator's output layer; tanh keeps images in [-1, 1].
            layers.append(nn.Sequential(conv, nn.Tanh()) if last else
                          nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)))
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        init_dcgan(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if y is None:
                raise ValueError("this generator is conditional (model.conditional=true): pass class labels y")
            z = torch.cat([z, one_hot(y, self.num_classes, z.shape[0], z)], dim=1)
        h = F.leaky_relu(self.project_bn(self.project(z)), 0.2)
        return self.layers(h.view(z.shape[0], self.base_channels, BASE_SIDE, BASE_SIDE))
