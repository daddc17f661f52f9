"""bigan: BiGAN (Donahue et al.): G(z), E(x) and a joint D(x, z); features E(x)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from tgan.families.base import Family, Group, PictureInputs, Role
from tgan.losses.bigan import BiGANLoss
from tgan.models.dcgan import Generator
from tgan.models.networks import Encoder, JointDiscriminator
from tgan.models.regularisers import regularisers


def networks(m, channels: int, image_size: int, num_classes: int) -> dict[str, nn.Module]:
    return {"G": Generator(m.latent_dim, channels, image_size, m.width),
            "E": Encoder(channels, image_size, m.width, m.latent_dim, regularisers(m)),
            "D": JointDiscriminator(channels, image_size, m.width, m.latent_dim, regularisers(m))}


def encoder_features(nets, x):
    return {"E": nets["E"](x)}


def generator_pictures(nets: dict[str, nn.Module], inputs: PictureInputs, out: Path) -> dict[str, Path]:
    """Sample grid and interpolation of G, reconstructions G(E(x)) when there is an E, G's grad-norm plot."""
    draw = inputs.draw
    written = {"samples": draw.sample_grid(nets["G"], inputs.z, out / "samples.png"),
               "interpolation": draw.interpolation(nets["G"], inputs.z_left, inputs.z_right, out / "interpolation.png")}
    if "E" in nets:
        written["reconstructions"] = draw.reconstructions(nets["G"], nets["E"], inputs.x, out / "reconstructions.png")
    plot = draw.grad_norm_plot(inputs.metrics, out / "grad_norm_G.png", key="grad_norm/G")
    if plot is not None:
        written["grad_norm_G"] = plot
    return written


def loss(loss_cfg, model_cfg, num_classes: int) -> BiGANLoss:
    return BiGANLoss(latent_dim=model_cfg.latent_dim, nonsaturating=loss_cfg.nonsaturating)


FAMILY = Family(
    name="bigan",
    groups_in_order=(Group("D", ("D",), BiGANLoss.d_loss, Role.DISCRIMINATOR),
                     Group("G", ("G", "E"), BiGANLoss.g_loss, Role.GENERATOR)),
    prior=BiGANLoss.prior, networks=networks, loss=loss, eval_features=encoder_features,
    pictures=generator_pictures)
