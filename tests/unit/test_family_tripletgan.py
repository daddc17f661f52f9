"""The tripletgan family (tgan/families/tripletgan.py, tgan/losses/tripletgan.py) and the reference's
regularisers (tgan/models/regularisers.py, tgan/models/mlp.py): losses equal the reference's formulas
written by hand, gradients reach the networks they should, noise and dropout act in training only,
weight norm's data-dependent init is kept across checkpoints, and the family trains, resumes to the
same losses and evaluates in one process (2 Ray workers: tests/integration/test_ray_train.py)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dense_triplet import dense_triplet_loss
from run_metrics import per_step
from torch import nn

from tgan.config import ConfigError, LossConfig, ModelConfig, apply_overrides
from tgan.resolve import load_config, mining_dim
from tgan.evaluate import evaluate
from tgan.families import get_family
from tgan.losses.base import Batch
from tgan.losses.mining import _mining_need, mining_memory_bytes
from tgan.losses.tripletgan import TripletGANLoss
from tgan.models.mlp import MLPEmbedder
from tgan.models.regularisers import Regularisers, WeightNormed
from tgan.train import checkpoint as ckpt
from tgan.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"
MLP = ["model.arch=mlp", "model.norm=weight", "model.input_noise=0.3", "model.hidden_noise=0.5",
       "model.dropout=0.1", "model.embedding_dim=8"]


class LinearD(nn.Module):
    """A D whose outputs and hidden layer are easy to write by hand: h = x W1, f = h W2."""

    def __init__(self, n_in, k):
        super().__init__()
        self.w1, self.w2 = nn.Linear(n_in, 6), nn.Linear(6, k)

    def forward(self, x, *, with_hidden=False):
        h = self.w1(x.flatten(1))
        return (h, self.w2(h)) if with_hidden else self.w2(h)


class FixedG(nn.Module):
    """G(z) = z A: its images are known from z."""

    def __init__(self, latent, n_out):
        super().__init__()
        self.a = nn.Linear(latent, n_out, bias=False)

    def forward(self, z, y=None):
        return self.a(z).view(-1, 1, 2, 2)


def setup(**loss_kwargs):
    torch.manual_seed(0)
    nets = {"D": LinearD(4, 5), "G": FixedG(3, 4)}
    batch = Batch(torch.randn(6, 1, 2, 2), torch.zeros(6, dtype=torch.long), torch.randn(6, 1, 2, 2),
                  torch.tensor([0, 0, 1, 1, 2, 2]))
    return nets, batch, TripletGANLoss(latent_dim=3, **loss_kwargs)


def grads(loss, params):
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True), params)]


def reference_lse(f):
    return f.max(1).values + torch.log(torch.exp(f - f.max(1, keepdim=True).values).sum(1))


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_d_loss_and_its_gradient_are_the_references_triplet_plus_unlabelled_loss(weight):
    """Value and D's gradient equal tgan_mnist.py's loss_lab + loss_unl written out by hand (each term
    moving D); G gets no gradient in the D phase."""
    nets, batch, loss = setup(weight=weight)
    d_params, g_params = list(nets["D"].parameters()), list(nets["G"].parameters())
    torch.manual_seed(5)
    value, scalars = loss.d_loss(nets, batch)
    torch.manual_seed(5)
    z = torch.rand(6, 3) * 2 - 1  # the prior: U(-1, 1)
    d = nets["D"]
    l_real, l_fake = reference_lse(d(batch.x)), reference_lse(d(nets["G"](z).detach()))
    unl = -0.5 * l_real.mean() + 0.5 * F.softplus(l_real).mean() + 0.5 * F.softplus(l_fake).mean()
    triplet, count = dense_triplet_loss(d(batch.xl), batch.yl, form="softmax", miner="all", margin=1.0)
    assert scalars["loss/unlabelled"] == pytest.approx(unl.item(), rel=1e-6)
    assert scalars["loss/triplet"] == pytest.approx(triplet.item(), rel=1e-6) and scalars["triplets"] == count == 24
    assert value.item() == pytest.approx(weight * triplet.item() + unl.item(), rel=1e-6)
    assert scalars["d/real"] == pytest.approx(torch.sigmoid(l_real).mean().item(), rel=1e-6)
    for got, want in zip(grads(value, d_params), grads(weight * triplet + unl, d_params)):
        assert torch.allclose(got, want, atol=1e-6)
    for term in (triplet, unl):
        assert any(g.abs().sum() > 0 for g in grads(term, d_params))
    assert all(g.abs().sum() == 0 for g in grads(value, g_params))


def test_unlabelled_loss_is_finite_where_exp_overflows():
    nets, batch, loss = setup()
    with torch.no_grad():
        nets["D"].w2.bias.fill_(200.0)  # e^200 overflows float32; the softplus form does not
    value, scalars = loss.d_loss(nets, batch)
    assert torch.isfinite(value) and scalars["loss/unlabelled"] == pytest.approx(0.5 * 200, rel=0.1)


@pytest.mark.parametrize("matched", ["output", "hidden"])
def test_g_loss_is_feature_matching_on_d_output_or_hidden_layer(matched):
    nets, batch, loss = setup(feature_matching=matched)
    torch.manual_seed(5)
    value, _ = loss.g_loss(nets, batch)
    torch.manual_seed(5)
    fake = nets["G"](torch.rand(6, 3) * 2 - 1)
    pick = (lambda x: nets["D"](x, with_hidden=True)[0]) if matched == "hidden" else nets["D"]
    expected = torch.mean(torch.square(pick(fake).mean(0) - pick(batch.x).mean(0)))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_g_gets_its_gradient_from_feature_matching_and_consistency_moves_d():
    nets, batch, loss = setup(consistency_weight=0.5)
    g_value, _ = loss.g_loss(nets, batch)
    assert all(g.abs().sum() > 0 for g in grads(g_value, list(nets["G"].parameters())))
    torch.manual_seed(5)
    value, scalars = loss.d_loss(nets, batch)
    torch.manual_seed(5)
    plain, _ = TripletGANLoss(latent_dim=3).d_loss(nets, batch)
    assert value.item() == pytest.approx(plain.item() + 0.5 * scalars["loss/consistency"].item(), rel=1e-6)
    assert any(g.abs().sum() > 0 for g in grads(value - plain, list(nets["D"].parameters())))


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_noise_and_dropout_act_in_training_mode_only(arch):
    m = ModelConfig(family="tripletgan", arch=arch, norm="weight", input_noise=0.3, hidden_noise=0.5, dropout=0.2,
                    width=0.125, embedding_dim=4, latent_dim=3)
    torch.manual_seed(0)
    d = get_family("tripletgan").build_networks(m, channels=1, image_size=8, num_classes=3)["D"]
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    d.train()
    assert not torch.equal(d(x), d(x))
    d.eval()
    plain = ModelConfig(family="tripletgan", arch=arch, norm="weight", width=0.125, embedding_dim=4, latent_dim=3)
    torch.manual_seed(0)
    same_weights = get_family("tripletgan").build_networks(plain, channels=1, image_size=8, num_classes=3)["D"]
    same_weights.load_state_dict(d.state_dict())
    assert torch.equal(d(x), d(x)) and torch.equal(d(x), same_weights.eval()(x))


def test_weight_norm_data_dependent_init_and_fixed_hidden_scale():
    """The first training forward standardises each layer's pre-activations on its batch (the
    reference's init); hidden scales are buffers (not trained), the output layer's scale is trained."""
    torch.manual_seed(0)
    d = MLPEmbedder(1, 8, 4, Regularisers(norm="weight"))
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    first = d.hidden[1]  # after the input noise
    assert not first.initialized and first.scale is None and d.head.scale is not None
    d.eval()
    d(x)
    assert not first.initialized  # evaluation never initialises (the random-init baseline stays random)
    d.train()
    out = d(x)
    assert first.initialized and d.head.initialized
    pre = first(x.flatten(1))  # its pre-activations on the init batch: mean 0, std 1 per unit
    assert torch.allclose(pre.mean(0), torch.zeros(1000), atol=1e-4)
    assert torch.allclose(pre.pow(2).mean(0), torch.ones(1000), atol=1e-3)
    assert torch.allclose(out.mean(0), torch.zeros(4), atol=1e-4)
    trained = {n for n, _ in d.named_parameters()}
    assert "hidden.1.scale" not in trained and "head.scale" in trained
    assert {"hidden.1.init_scale", "hidden.1.initialized"} <= set(d.state_dict())
    # a copy loaded from its state dict does not initialise again
    again = MLPEmbedder(1, 8, 4, Regularisers(norm="weight"))
    again.load_state_dict(d.state_dict())
    assert torch.equal(again(x * 3), d(x * 3))


def cfg_for(shards, out, *overrides):
    return load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", "model.family=tripletgan",
                               "train.log_every=1", "train.checkpoint_every=0", "eval.max_train=200",
                               "eval.max_test=60", *overrides])


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_tripletgan_trains_resumes_to_the_same_losses_and_weights_and_evaluates(debug_shards, tmp_path, arch):
    extra = MLP if arch == "mlp" else ["model.embedding_dim=8"]
    full = train(cfg_for(debug_shards, tmp_path / "full", "train.steps=4", *extra))
    half = tmp_path / "half"
    train(cfg_for(debug_shards, half, "train.steps=2", *extra))
    torch.manual_seed(987)  # a resumed process starts from other RNG state
    resumed = train(cfg_for(debug_shards, half, "train.steps=4", *extra))
    a, b = per_step(tmp_path / "full"), per_step(half)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert set(a[0]) >= {"loss/d", "loss/g", "loss/triplet", "loss/unlabelled", "triplets", "grad_norm/D",
                         "grad_norm/G"} and all(r["triplets"] > 0 for r in a)
    for ra, rb in zip(a, b):
        assert rb == pytest.approx(ra, rel=1e-6, abs=1e-6)
    for name in ("D", "G"):  # weight norm's data-dependent buffers included
        for key, value in full.nets[name].state_dict().items():
            assert torch.allclose(value.float(), resumed.nets[name].state_dict()[key].float(), atol=1e-6), key
    if arch == "mlp":
        assert bool(resumed.nets["D"].state_dict()["hidden.1.initialized"])
    loaded_cfg, nets = ckpt.load_networks(resumed.checkpoint)
    result = evaluate(apply_overrides(loaded_cfg, {"eval.fid_samples": 0}), nets, tmp_path / "eval")
    hidden = "D_hidden" if arch == "mlp" else "D_conv"
    assert list(result["rows"]) == ["model D", f"model {hidden}", "random-init D", f"random-init {hidden}",
                                    "raw pixels"]


def test_triplet_trains_the_same_mlp_and_regularisers():
    """The fair baseline: triplet's E with model.arch=mlp is tripletgan's D network (same weights
    under the same seed and sizes)."""
    m = dict(arch="mlp", norm="weight", input_noise=0.3, hidden_noise=0.5)
    torch.manual_seed(1)
    e = get_family("triplet").build_networks(ModelConfig(family="triplet", latent_dim=8, **m), channels=1,
                                             image_size=8, num_classes=3)["E"]
    torch.manual_seed(1)
    d = get_family("tripletgan").build_networks(ModelConfig(family="tripletgan", embedding_dim=8, **m), channels=1,
                                                image_size=8, num_classes=3)["D"]
    assert type(e) is type(d) is MLPEmbedder
    assert all(torch.equal(p, q) for p, q in zip(e.state_dict().values(), d.state_dict().values()))


def test_config_checks_name_the_field():
    with pytest.raises(ConfigError, match="model.family=tripletgan"):
        load_config(None, ["model.family=tripletgan"])  # no labels
    base = ["model.family=tripletgan", "data.labels_per_class=5"]
    for bad, field in (("model.arch=vit", "model.arch='vit'"), ("model.norm=layer", "model.norm='layer'"),
                       ("model.dropout=1", "model.dropout=1"), ("model.hidden_noise=-1", "model.hidden_noise=-1"),
                       ("loss.feature_matching=all", "loss.feature_matching='all'"),
                       ("loss.consistency_weight=-1", "loss.consistency_weight=-1"),
                       ("model.conditional=true", "model.conditional=true")):
        with pytest.raises(ConfigError, match=field):
            load_config(None, [*base, bad])
    with pytest.raises(ConfigError, match="model.arch='mlp' is invalid: expected one of dcgan for model.family=bigan"):
        load_config(None, ["model.family=bigan", "model.arch=mlp"])


def test_mining_memory_is_bounded_for_d_outputs_of_embedding_dim():
    cfg = load_config(None, ["model.family=tripletgan", "data.labels_per_class=5", "model.embedding_dim=4096",
                             "model.latent_dim=8"])
    rows, per_rank, need = _mining_need(cfg, mining_dim(cfg))
    assert need == mining_memory_bytes(rows, per_rank, 4096, "all")
