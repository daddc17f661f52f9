"""The pictures explain themselves: each figure has its title and row/column labels (inspected on
the matplotlib figure before it is saved), and the loss curves plot every loss, gradient norm and
validation series of metrics.jsonl against step."""
import json

import matplotlib.pyplot as plt
import pytest
import torch

from tgan.eval.pictures import (interpolation_figure, loss_curves, loss_curves_figure, read_metrics,
                                reconstructions_figure, samples_figure)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def images(n, side=8):
    return torch.rand(n, 1, side, side) * 2 - 1


def ticks(labels):
    return [t.get_text() for t in labels]


def test_reconstructions_label_every_column_input_or_reconstruction():
    fig = reconstructions_figure(images(8), images(8), pairs_per_row=4)
    ax = fig.axes[0]
    assert "input" in ax.get_title() and "reconstructions G(E(x))" in ax.get_title()
    assert ticks(ax.get_xticklabels()) == ["x", "G(E(x))"] * 4
    # The tick sits on each image's centre: 8 columns of 8 pixels with 2-pixel padding.
    assert list(ax.get_xticks()) == [2 + i * 10 + 3.5 for i in range(8)]


def test_interpolation_names_its_endpoints_lambda_and_the_pairs():
    fig = interpolation_figure(images(3 * 5), steps=5)
    ax = fig.axes[0]
    assert ticks(ax.get_xticklabels()) == ["z_left", "0.75", "0.50", "0.25", "z_right"]
    assert ticks(ax.get_yticklabels()) == ["1", "2", "3"] and ax.get_ylabel() == "pair"
    assert ax.get_xlabel().startswith("lambda") and "z_left" in ax.get_title()


def test_samples_say_what_they_are_and_a_conditional_grid_names_its_classes():
    assert samples_figure(images(16), ncols=8).axes[0].get_title().startswith("16 samples G(z)")
    ax = samples_figure(images(16), ncols=8, num_classes=3).axes[0]
    assert ticks(ax.get_xticklabels()) == [f"y={i % 3}" for i in range(8)] and "conditional" in ax.get_title()


def test_loss_curves_plot_losses_grad_norms_and_validation_against_step(tmp_path):
    rows = [{"step": s, "time": 1e9 + s, "loss/d": 1.0 / s, "loss/g": 2.0, "loss/triplet": 0.5, "grad_norm/G": 3.0,
             "grad_norm/D": 1.0, "perf/step_time_s": 0.2} for s in (3, 1, 2)]
    rows.append({"step": 2, "val/map": 0.4})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 2, 3]

    fig = loss_curves_figure(read_metrics(metrics))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["losses", "gradient norms (before clipping)", "validation: retrieval and probe (higher is better)"]
    plotted = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for ax in fig.axes
               for line in ax.get_lines()}
    assert set(plotted) == {"loss/d", "loss/g", "loss/triplet", "grad_norm/G", "grad_norm/D", "val/map"}
    assert plotted["loss/d"] == ([1, 2, 3], [1.0, 0.5, 1.0 / 3])
    assert plotted["val/map"] == ([2], [0.4])
    assert fig.axes[-1].get_xlabel() == "step"

    assert loss_curves(metrics, tmp_path / "curves.png") == tmp_path / "curves.png"
    assert loss_curves(tmp_path / "absent.jsonl", tmp_path / "none.png") is None


def test_each_validation_metric_family_has_its_own_axis():
    """KID (thousands on the offline classifier) and FID must not flatten the 0-1 ranking metrics."""
    rows = [{"step": s, "loss/d": 1.0, "val/map": 0.3 + 0.1 * s, "val/knn1": 0.5, "val/probe": 0.6,
             "val/fid": 80.0 / s, "val/kid": 5000.0 / s} for s in (1, 2, 3)]
    fig = loss_curves_figure(rows)
    lines = {ax.get_title(): sorted(line.get_label() for line in ax.get_lines()) for ax in fig.axes}
    assert lines == {"losses": ["loss/d"], "gradient norms (before clipping)": [],
                     "validation: retrieval and probe (higher is better)": ["val/knn1", "val/map", "val/probe"],
                     "validation: FID (lower is better)": ["val/fid"],
                     "validation: KID (lower is better)": ["val/kid"]}
    ranking = next(ax for ax in fig.axes if ax.get_title().startswith("validation: retrieval"))
    assert ranking.get_ylim() == (0.0, 1.0)
