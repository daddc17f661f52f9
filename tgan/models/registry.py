"""Family name -> its networks, optimizer groups, loss and evaluation features.

The training loop and evaluation only talk to a `Family`; nothing outside this file branches on the
family name. Adding a family = one `Family(...)` entry here (see docs/CONTRACTS.md).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tgan.config import LossConfig, ModelConfig
from tgan.losses.base import GANLoss, sample_z
from tgan.losses.bigan import BiGANLoss, TriBiGANLoss
from tgan.losses.dcgan import DCGANLoss
from tgan.losses.mbgan import MBGANLoss
from tgan.models.dcgan import BASE_SIDE, Generator
from tgan.models.networks import Encoder, JointDiscriminator, MetricDiscriminator, ProbDiscriminator


def _bigan_nets(m: ModelConfig, c: int, s: int, k: int) -> dict[str, nn.Module]:
    return {"G": Generator(m.latent_dim, c, s, m.width), "E": Encoder(c, s, m.width, m.latent_dim),
            "D": JointDiscriminator(c, s, m.width, m.latent_dim)}


def _mbgan_nets(m: ModelConfig, c: int, s: int, k: int) -> dict[str, nn.Module]:
    classes = k if m.conditional else 0
    return {"G": Generator(m.latent_dim, c, s, m.width, classes),
            "D": MetricDiscriminator(c, s, m.width, m.embedding_dim, classes)}


def _dcgan_nets(m: ModelConfig, c: int, s: int, k: int) -> dict[str, nn.Module]:
    return {"G": Generator(m.latent_dim, c, s, m.width), "D": ProbDiscriminator(c, s, m.width)}


def _pooled_conv(activations: list[torch.Tensor]) -> torch.Tensor:
    """DCGAN protocol: every conv layer's activations max-pooled to a 4x4 grid, concatenated."""
    return torch.cat([F.adaptive_max_pool2d(a, BASE_SIDE).flatten(1) for a in activations], dim=1)


def _encoder_features(nets, x):
    return {"E": nets["E"](x)}


def _metric_features(nets, x):
    return {"D": nets["D"](x), "D_conv": _pooled_conv(nets["D"].conv_activations(x))}


def _prob_features(nets, x):
    return {"D_conv": _pooled_conv(nets["D"].conv_activations(x))}


@dataclass(frozen=True)
class Family:
    name: str
    groups: dict[str, tuple[str, ...]]
    """Optimizer groups in phase order; the phase name equals the group name."""
    prior: str
    """Distribution of z: "normal" N(0, 1) or "uniform" U(-1, 1) (the loss class states why)."""
    _nets: Callable[..., dict[str, nn.Module]]
    _loss: Callable[..., GANLoss]
    _features: Callable[..., dict[str, torch.Tensor]]

    def build_networks(self, model_cfg: ModelConfig, *, channels: int, image_size: int, num_classes: int) -> dict[str, nn.Module]:
        """The family's networks ("G", "E", "D"), DCGAN-initialised, on the CPU."""
        if model_cfg.conditional and num_classes < 1:
            raise ValueError(f"model.conditional=true needs a labelled dataset, but num_classes={num_classes}")
        return self._nets(model_cfg, channels, image_size, num_classes)

    def make_loss(self, loss_cfg: LossConfig, model_cfg: ModelConfig, num_classes: int) -> GANLoss:
        return self._loss(loss_cfg, model_cfg, num_classes)

    def sample_z(self, n: int, latent_dim: int, *, device: torch.device | str | None = None) -> torch.Tensor:
        """n latent codes from this family's prior (for sample grids and interpolations)."""
        return sample_z(self.prior, n, latent_dim, device)

    @torch.no_grad()
    def features(self, nets: dict[str, nn.Module], x: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Evaluation features of images x, computed in eval mode (BN running stats), in batches.

        bigan/tribigan {"E": E(x)}; mbgan {"D": D(x), "D_conv": pooled conv activations}; dcgan
        {"D_conv": ...}. A conditional D gets no class (all-zero class channels). Results are on
        x's device; the networks' train/eval modes are restored afterwards.
        """
        modes = {name: net.training for name, net in nets.items()}
        device = next(nets["D"].parameters()).device
        try:
            for net in nets.values():
                net.eval()
            parts = [self._features(nets, x[i:i + batch_size].to(device)) for i in range(0, x.shape[0], batch_size)]
        finally:
            for name, net in nets.items():
                net.train(modes[name])
        return {key: torch.cat([p[key] for p in parts]).to(x.device) for key in parts[0]} if parts else {}


def _bigan_loss(loss_cfg, model_cfg, num_classes):
    return BiGANLoss(latent_dim=model_cfg.latent_dim, nonsaturating=loss_cfg.nonsaturating)


def _tribigan_loss(loss_cfg, model_cfg, num_classes):
    return TriBiGANLoss(latent_dim=model_cfg.latent_dim, nonsaturating=loss_cfg.nonsaturating,
                        weight=loss_cfg.triplet_weight, form=loss_cfg.triplet_form, miner=loss_cfg.miner,
                        margin=loss_cfg.triplet_margin)


def _mbgan_loss(loss_cfg, model_cfg, num_classes):
    return MBGANLoss(latent_dim=model_cfg.latent_dim, alpha=loss_cfg.alpha, l1_reduction=loss_cfg.l1_reduction,
                     conditional=model_cfg.conditional)


def _dcgan_loss(loss_cfg, model_cfg, num_classes):
    return DCGANLoss(latent_dim=model_cfg.latent_dim, nonsaturating=loss_cfg.nonsaturating)


_GE = {"D": ("D",), "G": ("G", "E")}
_G = {"D": ("D",), "G": ("G",)}
FAMILIES: dict[str, Family] = {
    "bigan": Family("bigan", _GE, BiGANLoss.prior, _bigan_nets, _bigan_loss, _encoder_features),
    "tribigan": Family("tribigan", _GE, TriBiGANLoss.prior, _bigan_nets, _tribigan_loss, _encoder_features),
    "mbgan": Family("mbgan", _G, MBGANLoss.prior, _mbgan_nets, _mbgan_loss, _metric_features),
    "dcgan": Family("dcgan", _G, DCGANLoss.prior, _dcgan_nets, _dcgan_loss, _prob_features),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"model.family={name!r} is not registered: expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
