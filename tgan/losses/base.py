"""What every family's loss shares: the batch, the phase interface, the z prior."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

Nets = Mapping[str, Callable[..., torch.Tensor]]
PRIORS = ("normal", "uniform")


@dataclass
class Batch:
    """One step's data on this rank.

    x [B, C, H, W] float in [-1, 1] and y [B] int64: the unlabelled stream (y holds the true classes;
    only the conditional MBGAN uses them). xl, yl: the labelled stream, None when there is none.
    """

    x: torch.Tensor
    y: torch.Tensor
    xl: torch.Tensor | None = None
    yl: torch.Tensor | None = None


def sample_z(prior: str, n: int, latent_dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[n, latent_dim] from the global torch RNG: "normal" N(0, 1) or "uniform" U(-1, 1)."""
    if prior == "normal":
        return torch.randn(n, latent_dim, device=device)
    if prior == "uniform":
        return torch.rand(n, latent_dim, device=device) * 2 - 1
    raise ValueError(f"unknown z prior {prior!r}: expected one of {PRIORS}")


class GANLoss:
    """One family's objective, split into phases (the optimizer groups, e.g. "D" then "G").

    The training loop calls `phase_loss(phase, nets, batch)` for each phase and backpropagates the
    returned scalar; it never needs to know which family it trains.
    """

    phases: tuple[str, ...] = ("D", "G")

    def phase_loss(self, phase: str, nets: Nets, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if phase not in self.phases:
            raise ValueError(f"phase {phase!r} is not one of this loss's phases {self.phases}")
        loss, scalars = getattr(self, f"_{phase.lower()}_loss")(nets, batch)
        return loss, to_floats(scalars)


def to_floats(scalars: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Detached python floats, read back from the device in one transfer (one sync, not one per value)."""
    names = list(scalars)
    device = next((v.device for v in scalars.values() if isinstance(v, torch.Tensor)), None)
    values = [torch.as_tensor(scalars[k], dtype=torch.float64, device=device).detach() for k in names]
    return dict(zip(names, torch.stack(values).tolist())) if names else {}
