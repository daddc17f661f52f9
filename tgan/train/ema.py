"""train.ema_decay: an exponential moving average (EMA) of every network's weights, the weights that
live validation, the best checkpoint and the evaluation score while the trained weights go on training.

After the t-th training step (t = 1, 2, ...) every floating-point parameter and buffer (BatchNorm's
running statistics too) of the average moves towards the trained one,

    w_ema <- d_t * w_ema + (1 - d_t) * w,   d_t = min(train.ema_decay, (1 + t) / (10 + t)),

with TensorFlow's ExponentialMovingAverage(num_updates=t) warm-up: without it a run of a few hundred
steps at decay 0.999 would evaluate mostly its first step's weights. The first update copies the
weights (the average starts there); integer buffers are always copied.
The average is kept in fp32 beside the trained networks (on their device) and is checkpointed with
them. torch.optim.swa_utils.AveragedModel computes the same average, but has no warm-up and lerps only
between tensors of one dtype (DeepSpeed's bf16/fp16 modules); hence this class.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

WARMUP = 10
"""d_t = min(decay, (1 + t) / (WARMUP + t))."""


class WeightAverage:
    def __init__(self, nets: dict[str, nn.Module], decay: float):
        """`nets`: networks of the trained ones' architectures (their copies), on the training device;
        they hold the average from the first update on."""
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay={decay!r}: expected a number in (0, 1)")
        self.nets, self.decay, self.updates = nets, decay, 0
        for net in nets.values():
            net.requires_grad_(False).eval()

    def decay_at(self, t: int) -> float:
        return min(self.decay, (1 + t) / (WARMUP + t))

    @torch.no_grad()
    def update(self, trained: dict[str, nn.Module]) -> None:
        """Average in the trained networks' current weights (after a training step)."""
        self.updates += 1
        averaged, targets = [], []
        for name, avg in self.nets.items():
            current = trained[name].state_dict()
            for key, t in avg.state_dict().items():
                new = current[key].detach().to(t.dtype)  # fp32 from DeepSpeed's bf16/fp16 modules
                if self.updates == 1 or not t.is_floating_point():
                    t.copy_(new)
                else:
                    averaged.append(t)
                    targets.append(new)
        if averaged:
            torch._foreach_lerp_(averaged, targets, 1.0 - self.decay_at(self.updates))

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "nets": {n: net.state_dict() for n, net in self.nets.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = state["updates"]
        for name, net in self.nets.items():
            net.load_state_dict(state["nets"][name])
