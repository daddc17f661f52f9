"""Training augmentations named by `data.augment` (none by default, as in the papers).

Randomness comes from a generator the caller seeds per batch (a pure function of seed, reader and
batch number), so a resumed run draws the same flips and crops as an uninterrupted one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tgan.config import AUGMENTATIONS


def augment(x: torch.Tensor, name: str, gen: torch.Generator) -> torch.Tensor:
    """x: float [B, C, H, W] on gen's device. `flip`: horizontal flip with p=1/2. `crop_flip`: reflect-pad
    by H/8, crop a random HxW window (the usual CIFAR recipe), then flip. Vectorised, with the random
    draws made on x's device, so that data.mode=memory augments on the GPU without a host round trip."""
    if name == "none":
        return x
    if name not in AUGMENTATIONS:
        raise ValueError(f"data.augment={name!r} is invalid: expected none, flip or crop_flip")
    b, c, h, w = x.shape
    if name == "crop_flip":
        pad = max(1, h // 8)
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen, device=x.device)
        rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(b, device=x.device)[:, None, None, None],
                   torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
