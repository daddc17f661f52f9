"""What every family's loss shares: the batch, the phase convention, the z prior."""
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

    def labelled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(xl, yl), empty when this rank has no labelled rows: a rank still joins the cross-rank
        triplet gather with an empty batch, attached to E so its backward joins too."""
        if self.xl is None:
            return self.x[:0], self.y[:0]
        return self.xl, self.yl


def sample_z(prior: str, n: int, latent_dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[n, latent_dim] from the global torch RNG: "normal" N(0, 1) or "uniform" U(-1, 1)."""
    if prior == "normal":
        return torch.randn(n, latent_dim, device=device)
    if prior == "uniform":
        return torch.rand(n, latent_dim, device=device) * 2 - 1
    raise ValueError(f"unknown z prior {prior!r}: expected one of {PRIORS}")


class GANLoss:
    """One family's objective, split into phases: public methods `<phase>_loss(nets, batch)` that
    return the loss to backpropagate and its scalars as detached tensors (`detach_scalars`: read back
    by the loop only at log steps, so a step waits on the device no more than it must). The family
    (tgan/families/) names which method is the phase of which optimizer group; the loop never knows
    which family it trains.
    """

    prior: str
    """Distribution of z (see sample_z)."""


def detach_scalars(scalars: Mapping[str, torch.Tensor | float]) -> dict[str, torch.Tensor | float]:
    """A phase's scalars, detached from the graph and left where they are (no host sync)."""
    return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in scalars.items()}


def to_floats(scalars: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Detached python floats, read back from the device in one transfer (one sync, not one per value)."""
    names = list(scalars)
    device = next((v.device for v in scalars.values() if isinstance(v, torch.Tensor)), None)
    values = [torch.as_tensor(scalars[k], dtype=torch.float64, device=device).detach() for k in names]
    return dict(zip(names, torch.stack(values).tolist())) if names else {}
