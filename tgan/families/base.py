"""What a family declares (`Family`, `Group`) and the one function that builds and seeds networks.

A family is plain data plus functions; nothing outside tgan/families/ names a family or a group.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tgan import dist
from tgan.config import Config, ConfigError, LossConfig, ModelConfig, OptimConfig
from tgan.losses.base import Batch, Nets, sample_z
from tgan.models.dcgan import BASE_SIDE


class Role(enum.Enum):
    """What an optimizer group is to the loop and the optimizers."""

    DISCRIMINATOR = "discriminator"
    """optim.lr_d; one phase per training step."""
    GENERATOR = "generator"
    """optim.lr_g; loss.g_steps_per_d_step phases per training step (N of MBGAN's Algorithm 1)."""


@dataclass(frozen=True)
class Group:
    """One optimizer group: the networks one optimizer trains, and the loss phase that trains them."""

    name: str
    """Key of the group's optimizer state in checkpoints (optim.pt, deepspeed_<name>/)."""
    networks: tuple[str, ...]
    """Networks trained in this phase; every other network is called raw and frozen."""
    phase: Callable[[Any, Nets, Batch], tuple[torch.Tensor, dict[str, float]]]
    """The phase's loss: an unbound method of the family's loss object, called as phase(loss, nets, batch)."""
    role: Role

    def lr(self, cfg: OptimConfig) -> float:
        specific = cfg.lr_d if self.role is Role.DISCRIMINATOR else cfg.lr_g
        return cfg.lr if specific is None else specific

    def steps(self, cfg: LossConfig) -> int:
        """Phases of this group per training step."""
        return 1 if self.role is Role.DISCRIMINATOR else cfg.g_steps_per_d_step


@dataclass
class PictureInputs:
    """What evaluation hands a family's pictures function (z drawn from the family's prior, seeded)."""

    z: torch.Tensor | None
    z_left: torch.Tensor | None
    z_right: torch.Tensor | None
    x: torch.Tensor
    """Test images, on the networks' device."""
    metrics: Path
    """The run's metrics.jsonl (for gradient-norm plots)."""
    draw: ModuleType
    """tgan.eval.pictures (sample_grid, interpolation, reconstructions, grad_norm_plot), handed in by
    the evaluation so that a family imports no plotting code."""


def _no_pictures(nets: dict[str, nn.Module], inputs: PictureInputs, out: Path) -> dict[str, Path]:
    return {}


def refuse_conditional(cfg: Config) -> None:
    """The check of every family without class-conditional networks."""
    if cfg.model.conditional:
        raise ConfigError(f"model.conditional=true is invalid for model.family={cfg.model.family}: "
                               "expected false (only mbgan has a conditional form)")


def need_labels(cfg: Config) -> None:
    """Families with a triplet loss: a labelled subset and labelled pairs in every batch."""
    if not cfg.data.has_labels:
        raise ConfigError(f"data.labelled_fraction=None is invalid: expected a labelled_fraction or "
                               f"labels_per_class for model.family={cfg.model.family}")
    if cfg.data.labelled_batch_size < 2:
        raise ConfigError(f"data.labelled_batch_size={cfg.data.labelled_batch_size!r} is invalid: expected "
                               f">= 2 for model.family={cfg.model.family} (triplets need labelled pairs)")


def pooled_conv(activations: list[torch.Tensor]) -> torch.Tensor:
    """DCGAN protocol: every conv layer's activations max-pooled to a 4x4 grid, concatenated."""
    return torch.cat([F.adaptive_max_pool2d(a, BASE_SIDE).flatten(1) for a in activations], dim=1)


@dataclass(frozen=True)
class Family:
    name: str
    groups_in_order: tuple[Group, ...]
    """Optimizer groups in phase order (a training step runs them in this order)."""
    prior: str | None
    """Distribution of z: "normal" N(0, 1) or "uniform" U(-1, 1) (the loss class states why); None
    for a family without a generator."""
    networks: Callable[[ModelConfig, int, int, int], dict[str, nn.Module]]
    """(model config, channels, image_size, num_classes) -> the networks, DCGAN-initialised, on the CPU."""
    loss: Callable[[LossConfig, ModelConfig, int], Any]
    """(loss config, model config, num_classes) -> the object whose methods are the groups' phases."""
    eval_features: Callable[[dict[str, nn.Module], torch.Tensor], dict[str, torch.Tensor]]
    """(networks in eval mode, images) -> named feature sets; evaluation scores each one."""
    pictures: Callable[[dict[str, nn.Module], PictureInputs, Path], dict[str, Path]] = _no_pictures
    """(networks, inputs, output directory) -> picture name -> file written."""
    check: Callable[[Config], None] = refuse_conditional
    """Called when a config of this family is resolved; raises ConfigError naming the field."""
    mines_triplets: bool = False
    """A phase mines triplets over every rank's labelled embeddings: --dry-run bounds the memory that
    takes per rank (tgan.losses.mining.mining_summary)."""
    embedding_size: str = "latent_dim"
    """The model config field that is the mined embeddings' width (E(x): latent_dim; tripletgan's D(x): embedding_dim)."""
    archs: tuple[str, ...] = ("dcgan",)
    """The model.arch values the family builds networks for."""
    generator: str | None = "G"
    """The network that maps z (drawn from `prior`) to images, scored by the generation metric; None
    for a family without one."""

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """Group name -> the networks it trains, in phase order."""
        return {g.name: g.networks for g in self.groups_in_order}

    def build_networks(self, model_cfg: ModelConfig, *, channels: int, image_size: int,
                       num_classes: int) -> dict[str, nn.Module]:
        """The family's networks, DCGAN-initialised from the global torch RNG, on the CPU."""
        if model_cfg.conditional and num_classes < 1:
            raise ValueError(f"model.conditional=true needs a labelled dataset, but num_classes={num_classes}")
        return self.networks(model_cfg, channels, image_size, num_classes)

    def make_loss(self, loss_cfg: LossConfig, model_cfg: ModelConfig, num_classes: int):
        return self.loss(loss_cfg, model_cfg, num_classes)

    def sample_z(self, n: int, latent_dim: int, *, device: torch.device | str | None = None) -> torch.Tensor:
        """n latent codes from this family's prior (for sample grids and interpolations)."""
        return sample_z(self.prior, n, latent_dim, device)

    @torch.no_grad()
    def features(self, nets: dict[str, nn.Module], x: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Evaluation features of images x, computed in eval mode (BN running stats), in batches.

        A conditional D gets no class (all-zero class channels). Results are on x's device; the
        networks' train/eval modes are restored afterwards.
        """
        modes = {name: net.training for name, net in nets.items()}
        device = next(next(iter(nets.values())).parameters()).device
        try:
            for net in nets.values():
                net.eval()
            parts = [self.eval_features(nets, x[i:i + batch_size].to(device)) for i in range(0, x.shape[0], batch_size)]
        finally:
            for name, net in nets.items():
                net.train(modes[name])
        return {key: torch.cat([p[key] for p in parts]).to(x.device) for key in parts[0]} if parts else {}


def build_networks(cfg: Config, *, channels: int, image_size: int, num_classes: int) -> dict[str, nn.Module]:
    """The run's initial networks: cfg.model.family's, seeded with rank_seed(train.seed, 0, "init") so
    every rank, the random-init evaluation baseline and a resumed run start from the same weights.
    The caller's RNG state is left as it was."""
    from tgan.families import get_family

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(dist.rank_seed(cfg.train.seed, 0, "init"))
        return get_family(cfg.model.family).build_networks(cfg.model, channels=channels, image_size=image_size,
                                                           num_classes=num_classes)
