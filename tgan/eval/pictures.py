"""Pictures of a trained model: samples, latent interpolations (MBGAN Fig. 9), BiGAN reconstructions,
and the generator's gradient norm over training (MBGAN Fig. 6).

Images are written with torchvision's save_image (a grid with 2-pixel padding), so a grid of `ncols`
columns of s x s images is 2 + ncols * (s + 2) pixels wide. The networks run in eval mode (BatchNorm
running statistics), as for the features, and their train/eval modes are restored afterwards.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torchvision.utils import save_image


@contextmanager
def eval_mode(*nets: nn.Module) -> Iterator[None]:
    modes = [net.training for net in nets]
    try:
        for net in nets:
            net.eval()
        with torch.no_grad():
            yield
    finally:
        for net, mode in zip(nets, modes):
            net.train(mode)


def _save(images: torch.Tensor, path: Path, ncols: int) -> Path:
    # Images are in [-1, 1] (tanh / the data's scaling); map that range, not each grid's min..max.
    save_image(images.float().cpu(), path, nrow=ncols, normalize=True, value_range=(-1, 1))
    return path


def _classes(n: int, num_classes: int, device: torch.device) -> torch.Tensor | None:
    """Labels for a conditional G (cycling over the classes), None for an unconditional one."""
    return torch.arange(n, device=device) % num_classes if num_classes else None


def sample_grid(G: nn.Module, z: torch.Tensor, path: Path, *, ncols: int = 8) -> Path:
    """G(z) as a grid; a conditional G gets class i % num_classes for sample i (a column per class)."""
    with eval_mode(G):
        return _save(G(z, _classes(z.shape[0], G.num_classes, z.device)), path, ncols)


def interpolation(G: nn.Module, z_left: torch.Tensor, z_right: torch.Tensor, path: Path, *,
                  steps: int = 10) -> Path:
    """One row per pair: G(lambda z_l + (1 - lambda) z_r) for lambda from 1 (left) to 0 (right)."""
    lam = torch.linspace(1, 0, steps, device=z_left.device)[None, :, None]
    z = (lam * z_left[:, None] + (1 - lam) * z_right[:, None]).flatten(0, 1)  # row-major: pair, step
    y = _classes(z_left.shape[0], G.num_classes, z.device)
    with eval_mode(G):
        # A conditional row keeps one class, so the row shows the latent path only.
        images = G(z, None if y is None else y.repeat_interleave(steps))
    return _save(images, path, steps)


def reconstructions(G: nn.Module, E: nn.Module, x: torch.Tensor, path: Path, *, pairs_per_row: int = 8) -> Path:
    """Each image x next to G(E(x)): columns alternate x, reconstruction."""
    with eval_mode(G, E):
        rec = G(E(x))
    return _save(torch.stack([x, rec], dim=1).flatten(0, 1), path, 2 * pairs_per_row)


def grad_norm_plot(metrics_path: Path, path: Path, key: str) -> Path | None:
    """Plot `key` over steps from a run's metrics.jsonl; None when the file or the key is absent."""
    if not metrics_path.is_file():
        return None
    points = []
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a run killed mid-line leaves a partial last line
            continue
        if record.get(key) is not None and "step" in record:  # null: a non-finite value (see train.loop)
            points.append((record["step"], record[key]))
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    steps, values = zip(*sorted(points))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, values, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{key} (L2, before clipping)")
    ax.set_title(f"{key} over training")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
