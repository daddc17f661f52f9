"""Architecture of the DCGAN nets: size rule, shapes, widths, DCGAN conventions, conditional inputs."""
import pytest
import torch
from torch import nn

from tgan.models.dcgan import ConvTrunk, Generator, channel_widths, conv_plan
from tgan.models.networks import Encoder, JointDiscriminator, MetricDiscriminator, ProbDiscriminator
from tgan.models.regularisers import Regularisers, WeightNormed

W = 0.125  # 8..64 channels: fast on CPU


@pytest.mark.parametrize("size, strides, sides", [
    (64, [2, 2, 2, 2], [32, 16, 8, 4]),
    (32, [1, 2, 2, 2], [32, 16, 8, 4]),
    (28, [1, 2, 2, 2], [28, 14, 7, 4]),
    (16, [1, 1, 2, 2], [16, 16, 8, 4]),
    (8, [1, 1, 1, 2], [8, 8, 8, 4]),
])
def test_size_rule(size, strides, sides):
    assert conv_plan(size) == list(zip(strides, sides))
    trunk = ConvTrunk(3, size, W)
    acts = trunk.activations(torch.zeros(2, 3, size, size))
    assert [a.shape[-1] for a in acts] == sides
    assert [layer[0].stride[0] for layer in trunk.layers] == strides


def test_unsupported_size_names_the_field():
    with pytest.raises(ValueError, match="data.image_size=48"):
        conv_plan(48)


@pytest.mark.parametrize("size", [8, 16, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_mirrors_trunk(size, channels):
    g = Generator(10, channels, size, W)
    x = g(torch.randn(3, 10))
    assert x.shape == (3, channels, size, size)
    assert x.abs().max() <= 1.0  # tanh output
    # G walks D's sizes backwards: each layer's output side is the previous D layer's input side.
    sides, h = [], g.project(torch.randn(2, 10)).view(2, -1, 4, 4)
    for layer in g.layers:
        h = layer(h)
        sides.append(h.shape[-1])
    assert sides == ([size] + [s for _, s in conv_plan(size)[:-1]])[::-1]


def test_width_multiplier_gives_paper_channels_at_one():
    assert channel_widths(1.0) == [64, 128, 256, 512]
    assert channel_widths(0.25) == [16, 32, 64, 128]
    trunk = ConvTrunk(3, 32, 1.0)
    assert [layer[0].out_channels for layer in trunk.layers] == [64, 128, 256, 512]
    g = Generator(100, 3, 32, 1.0)
    assert g.project.out_features == 512 * 16
    assert [layer[0].out_channels for layer in g.layers] == [256, 128, 64, 3]


def test_dcgan_conventions():
    trunk = ConvTrunk(3, 32, 1.0)
    has_bn = [any(isinstance(m, nn.BatchNorm2d) for m in layer) for layer in trunk.layers]
    assert has_bn == [False, True, True, True]  # no BN on D's first layer
    # LeakyReLU(0.2) after every conv (then the regularisers' noise and dropout, off by default)
    activations = [layer[-1 if k == 3 else -3] for k, layer in enumerate(trunk.layers)]
    assert all(isinstance(a, nn.LeakyReLU) and a.negative_slope == 0.2 for a in activations)
    weight_normed = ConvTrunk(3, 32, 1.0, Regularisers(norm="weight"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in weight_normed.modules())
    assert all(isinstance(layer[0], WeightNormed) for layer in weight_normed.layers)
    g = Generator(100, 3, 32, 1.0)
    last = g.layers[-1]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in last) and isinstance(last[-1], nn.Tanh)
    assert all(layer[0].kernel_size == (5, 5) for layer in list(trunk.layers) + list(g.layers))
    # N(0, 0.02) weights, zero biases, BN scale N(1, 0.02)
    big = trunk.layers[3][0].weight
    assert abs(big.std().item() - 0.02) < 0.001 and abs(big.mean().item()) < 0.001
    assert torch.count_nonzero(trunk.layers[0][0].bias) == 0
    bn = trunk.layers[3][1].weight
    assert abs(bn.mean().item() - 1.0) < 0.01 and 0.01 < bn.std().item() < 0.03


def test_head_output_shapes():
    x, z = torch.randn(5, 1, 28, 28), torch.randn(5, 7)
    assert Encoder(1, 28, W, 7)(x).shape == (5, 7)
    assert JointDiscriminator(1, 28, W, 7)(x, z).shape == (5,)
    assert MetricDiscriminator(1, 28, W, 11)(x).shape == (5, 11)
    assert ProbDiscriminator(1, 28, W)(x).shape == (5,)


def test_joint_discriminator_depends_on_z():
    d = JointDiscriminator(1, 8, W, 4).eval()
    x = torch.randn(3, 1, 8, 8)
    assert not torch.allclose(d(x, torch.zeros(3, 4)), d(x, torch.ones(3, 4)))


def test_conditional_generator_uses_class():
    g = Generator(4, 1, 8, W, num_classes=3).eval()
    z = torch.randn(2, 4)
    assert g.project.in_features == 4 + 3
    assert not torch.allclose(g(z, torch.tensor([0, 0])), g(z, torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="conditional"):
        g(z)
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        g(z, torch.tensor([0, 1, 2]))


def test_conditional_discriminator_takes_class_channels():
    d = MetricDiscriminator(3, 8, W, 6, num_classes=4).eval()
    assert d.trunk.layers[0][0].in_channels == 3 + 4
    x = torch.randn(2, 3, 8, 8)
    y = torch.tensor([1, 3])
    # one-hot broadcast as constant channels: equal to feeding those channels by hand
    planes = torch.zeros(2, 4, 8, 8)
    planes[0, 1], planes[1, 3] = 1.0, 1.0
    manual = d.head(d.trunk(torch.cat([x, planes], 1)).flatten(1))
    assert torch.allclose(d(x, y), manual)
    # y=None means "no class": all-zero class channels
    blank = d.head(d.trunk(torch.cat([x, torch.zeros(2, 4, 8, 8)], 1)).flatten(1))
    assert torch.allclose(d(x), blank)
