"""Mixed precision of the DDP / one-process step (train.precision).

bf16 and fp16 run the networks' forward under torch.autocast: matmuls and convolutions in the low
precision, reductions and losses where autocast keeps them in fp32 (binary_cross_entropy_with_logits,
softplus, norms), and the triplet loss explicitly in fp32 (tgan.losses.triplet.triplet_sum). Weights,
gradients and Adam's state stay fp32. fp16's 5-bit exponent underflows small gradients, so its loss
is multiplied by a GradScaler's scale before backward and the gradients divided by it before they are
measured and clipped; a step whose scaled gradients overflowed is skipped like any non-finite step,
and the scaler halves its scale (the first steps of a run may be skipped that way).
"""
from __future__ import annotations

import contextlib

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a phase's forward runs in."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16, else None."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
