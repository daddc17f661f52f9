"""Pictures of a trained model that explain themselves: samples, latent interpolations (MBGAN
Fig. 9), BiGAN reconstructions (input next to reconstruction), the generator's gradient norm over
training (MBGAN Fig. 6) and the loss curves of the run.

Every picture is a matplotlib figure with a title and labelled rows/columns, built by a
`*_figure` function from tensors (what the tests inspect) and written by `save_figure`. Image
grids are torchvision's make_grid (2-pixel padding) shown pixel for pixel, enlarged to at least
~400 pixels wide. The networks run in eval mode (BatchNorm running statistics), as for the
features, and their train/eval modes are restored afterwards.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

PAD = 2
"""make_grid's padding: a grid of n columns of s-pixel images is PAD + n * (s + PAD) pixels wide."""
DPI = 100


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


def _classes(n: int, num_classes: int, device: torch.device) -> torch.Tensor | None:
    """Labels for a conditional G (cycling over the classes), None for an unconditional one."""
    return torch.arange(n, device=device) % num_classes if num_classes else None


def _centres(count: int, side: int) -> list[float]:
    """Pixel centres of the `count` grid cells along one axis (for tick labels)."""
    return [PAD + i * (side + PAD) + side / 2 - 0.5 for i in range(count)]


def grid_figure(images: torch.Tensor, ncols: int, *, title: str, col_labels: list[str] | None = None,
                row_labels: list[str] | None = None, xlabel: str = "", ylabel: str = "") -> Figure:
    """Images in [-1, 1] (tanh / the data's scaling; that range, not each grid's min..max, is
    mapped to black..white) as a grid of `ncols` columns, with a title and axis labels."""
    grid = make_grid(images.float().cpu(), nrow=ncols, padding=PAD, normalize=True, value_range=(-1, 1))
    pixels = grid.permute(1, 2, 0).numpy()
    height, width = pixels.shape[:2]
    scale = max(1.0, 400 / width)
    fig = plt.figure(figsize=(width * scale / DPI + 1.2, height * scale / DPI + 1.0), dpi=DPI)
    ax = fig.add_subplot()
    ax.imshow(pixels, interpolation="nearest")
    side = images.shape[-1]
    ax.set_title(title, fontsize=9)
    ax.set_xticks(_centres(len(col_labels), side) if col_labels else [], col_labels or [], fontsize=7,
                  rotation=90 if col_labels and max(map(len, col_labels)) > 4 else 0)
    ax.set_yticks(_centres(len(row_labels), side) if row_labels else [], row_labels or [], fontsize=7)
    ax.xaxis.set_ticks_position("top")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def samples_figure(images: torch.Tensor, *, ncols: int = 8, num_classes: int = 0) -> Figure:
    title = f"{len(images)} samples G(z), z drawn from the prior (fixed z per seed)"
    if num_classes:
        return grid_figure(images, ncols, title=title + ": conditional G, class = column index mod classes",
                           col_labels=[f"y={i % num_classes}" for i in range(ncols)])
    return grid_figure(images, ncols, title=title)


def sample_grid(G: nn.Module, z: torch.Tensor, path: Path, *, ncols: int = 8) -> Path:
    """G(z) as a grid; a conditional G gets class i % num_classes for sample i (a column per class)."""
    with eval_mode(G):
        images = G(z, _classes(z.shape[0], G.num_classes, z.device))
    return save_figure(samples_figure(images, ncols=ncols, num_classes=G.num_classes), path)


def interpolation_figure(images: torch.Tensor, steps: int) -> Figure:
    """One row per pair: column j shows G(lambda z_left + (1 - lambda) z_right), lambda from 1 to 0."""
    lams = torch.linspace(1, 0, steps).tolist()
    labels = [f"{lam:.2f}" for lam in lams]
    labels[0], labels[-1] = "z_left", "z_right"
    return grid_figure(images, steps, title="latent interpolation G(lambda z_left + (1 - lambda) z_right), "
                                            "one random pair (z_left, z_right) per row",
                       col_labels=labels, xlabel="lambda (1 = z_left ... 0 = z_right)",
                       ylabel="pair", row_labels=[str(i + 1) for i in range(len(images) // steps)])


def interpolation(G: nn.Module, z_left: torch.Tensor, z_right: torch.Tensor, path: Path, *,
                  steps: int = 10) -> Path:
    lam = torch.linspace(1, 0, steps, device=z_left.device)[None, :, None]
    z = (lam * z_left[:, None] + (1 - lam) * z_right[:, None]).flatten(0, 1)  # row-major: pair, step
    y = _classes(z_left.shape[0], G.num_classes, z.device)
    with eval_mode(G):
        # A conditional row keeps one class, so the row shows the latent path only.
        images = G(z, None if y is None else y.repeat_interleave(steps))
    return save_figure(interpolation_figure(images, steps), path)


def reconstructions_figure(x: torch.Tensor, rec: torch.Tensor, *, pairs_per_row: int = 8) -> Figure:
    """Columns alternate: a test image x, then its reconstruction G(E(x))."""
    return grid_figure(torch.stack([x, rec], dim=1).flatten(0, 1), 2 * pairs_per_row,
                       title="test images x (input) next to their reconstructions G(E(x))",
                       col_labels=["x", "G(E(x))"] * pairs_per_row)


def reconstructions(G: nn.Module, E: nn.Module, x: torch.Tensor, path: Path, *, pairs_per_row: int = 8) -> Path:
    with eval_mode(G, E):
        rec = G(E(x))
    return save_figure(reconstructions_figure(x, rec, pairs_per_row=pairs_per_row), path)


def read_metrics(metrics_path: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl in step order; [] when there is no file."""
    if not metrics_path.is_file():
        return []
    rows = []
    for line in metrics_path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a run killed mid-line leaves a partial last line
            continue
    return sorted((r for r in rows if "step" in r), key=lambda r: r["step"])


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]  # null: non-finite (see train.loop)
    return [s for s, _ in points], [v for _, v in points]


def grad_norm_figure(rows: list[dict], key: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=DPI)
    ax.plot(*_series(rows, key), linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{key} (L2, before clipping)")
    ax.set_title(f"{key} over training")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    return fig


def grad_norm_plot(metrics_path: Path, path: Path, key: str) -> Path | None:
    """Plot `key` over steps from a run's metrics.jsonl; None when the file or the key is absent."""
    rows = read_metrics(metrics_path)
    if not any(r.get(key) is not None for r in rows):
        return None
    return save_figure(grad_norm_figure(rows, key), path)


VALIDATION_PANELS = (("validation: retrieval and probe (higher is better)", "fraction", ()),
                     ("validation: FID (lower is better)", "FID", ("val/fid",)),
                     ("validation: KID (lower is better)", "KID", ("val/kid",)))
"""One axis per family of validation metrics: the ranking metrics (mAP, k-NN, probe) share 0-1,
while FID (tens to hundreds) and KID (up to thousands on the offline classifier) would flatten them."""


def loss_curves_figure(rows: list[dict]) -> Figure:
    """Against step: the loss terms (D, G, triplet, ...), the gradient norms per network, and the
    validation metrics (val/*) when the run has any, each family on its own axis (VALIDATION_PANELS)."""
    keys = sorted({k for r in rows for k in r})
    panels = [("losses", [k for k in keys if k.startswith("loss/")], "loss"),
              ("gradient norms (before clipping)", [k for k in keys if k.startswith("grad_norm/")], "L2 norm")]
    val = [k for k in keys if k.startswith("val/")]
    generation = tuple(p for _, _, prefixes in VALIDATION_PANELS for p in prefixes)
    for title, ylabel, prefixes in VALIDATION_PANELS:
        series = [k for k in val if k.startswith(prefixes)] if prefixes else \
            [k for k in val if not k.startswith(generation)]
        if series:
            panels.append((title, series, ylabel))
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), dpi=DPI, sharex=True, squeeze=False)
    for ax, (title, series, ylabel) in zip(axes[:, 0], panels):
        for key in series:
            ax.plot(*_series(rows, key), linewidth=1, marker="o" if key.startswith("val/") else None,
                    markersize=3, label=key)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if ylabel == "fraction":
            ax.set_ylim(0, 1)
        if series:
            ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle("training curves (rank 0, every train.log_every steps)", fontsize=10)
    fig.tight_layout()
    return fig


def loss_curves(metrics_path: Path, path: Path) -> Path | None:
    """The loss-curves PNG of a run's metrics.jsonl; None when the file has no loss rows."""
    rows = read_metrics(metrics_path)
    if not any(k.startswith("loss/") for r in rows for k in r):
        return None
    return save_figure(loss_curves_figure(rows), path)
