"""Linear probe: perfect on separable data, chance on random labels, C picked on the validation split."""
import pytest
import torch

from tgan.eval.probe import C_GRID, linear_probe


def _blobs(n, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    # Tiny spread around centres that differ in 2 of 4 coordinates, offset and scaled far from unit
    # variance: separable, and only after standardisation well conditioned.
    x = centres[y] * 1000 + 5000 + torch.randn(n, 4, generator=g) * 50 * scale
    return x, y


@pytest.mark.parametrize("kind", ["logreg", "svm"])
def test_linearly_separable_data_is_classified_perfectly(kind):
    (x, y), (xt, yt) = _blobs(150, 0), _blobs(60, 1)
    result = linear_probe(x, y, xt, yt, kind=kind)
    assert result["accuracy"] == 1.0
    assert result["C"] in C_GRID


@pytest.mark.parametrize("kind", ["logreg", "svm"])
def test_random_labels_give_chance_accuracy(kind):
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(600, 20, generator=g), torch.randn(2000, 20, generator=g)
    y, yt = torch.randint(0, 4, (600,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    accuracy = linear_probe(x, y, xt, yt, kind=kind)["accuracy"]
    assert abs(accuracy - 0.25) < 0.05  # 2000 test points: the standard error of chance is ~0.01


def test_noisy_labels_choose_strong_regularisation():
    # One informative coordinate among 50 noise ones and few examples: a large C over-fits the
    # noise, so the validation split must pick one of the small C values.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(80) % 2
    x = torch.randn(80, 51, generator=g)
    x[:, 0] += y * 1.5
    yt = torch.arange(400) % 2
    xt = torch.randn(400, 51, generator=g)
    xt[:, 0] += yt * 1.5
    result = linear_probe(x, y, xt, yt)
    assert result["C"] <= 0.1
    assert result["accuracy"] > 0.6  # Bayes accuracy is Phi(0.75) = 0.77, chance 0.5


def test_one_class_is_an_error():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(x, torch.zeros(10, dtype=torch.long), x, torch.zeros(10, dtype=torch.long))
