"""Each adversarial loss against its paper's equation, computed by hand with python loops.

The networks are tiny linear modules with seeded weights, so every output can be written out
element by element; z is replayed by re-seeding the global RNG the loss draws from.
"""
import math

import pytest
import torch
from torch import nn

from tgan.losses.base import Batch, to_floats
from tgan.losses.bigan import BiGANLoss, TriBiGANLoss
from tgan.losses.dcgan import DCGANLoss
from tgan.losses.mbgan import MBGANLoss

LATENT, PIX, CLASSES = 2, 4, 3  # images are 1x2x2


def read(phase_result):
    """(loss, scalars) with the scalars read back as python floats, as the loop logs them: a phase
    returns them as detached 0-d tensors, which pytest.approx (>= 9.2) refuses as an expected value."""
    loss, scalars = phase_result
    return loss, to_floats(scalars)


class LinG(nn.Module):
    """G(z, y) = tanh(B z + Q onehot(y)) as a 1x2x2 image."""

    def __init__(self, classes=0):
        super().__init__()
        self.b = nn.Parameter(torch.randn(PIX, LATENT))
        self.q = nn.Parameter(torch.randn(PIX, max(classes, 1))) if classes else None

    def forward(self, z, y=None):
        h = z @ self.b.T
        if self.q is not None:
            h = h + self.q.T[y]
        return torch.tanh(h).view(-1, 1, 2, 2)


class LinE(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.randn(LATENT, PIX))

    def forward(self, x):
        return x.flatten(1) @ self.a.T


class LinJointD(nn.Module):
    """D(x, z) = w . x + v . z + c."""

    def __init__(self):
        super().__init__()
        self.w, self.v, self.c = nn.Parameter(torch.randn(PIX)), nn.Parameter(torch.randn(LATENT)), nn.Parameter(torch.randn(()))

    def forward(self, x, z):
        return x.flatten(1) @ self.w + z @ self.v + self.c


class LinD(nn.Module):
    """D(x) = w . x + c (DCGAN logit)."""

    def __init__(self):
        super().__init__()
        self.w, self.c = nn.Parameter(torch.randn(PIX)), nn.Parameter(torch.randn(()))

    def forward(self, x):
        return x.flatten(1) @ self.w + self.c


class LinMetricD(nn.Module):
    """D(x, y) = M x + C onehot(y) in R^K."""

    def __init__(self, k=3, classes=0):
        super().__init__()
        self.m = nn.Parameter(torch.randn(k, PIX))
        self.cls = nn.Parameter(torch.randn(k, classes)) if classes else None

    def forward(self, x, y=None):
        f = x.flatten(1) @ self.m.T
        return f if self.cls is None else f + self.cls.T[y]


# ---- hand arithmetic on python lists ----
def L(t):
    return t.detach().flatten().tolist() if t.dim() <= 1 else [L(r) for r in t.detach()]


def dot(a, b):
    return sum(ai * bi for ai, bi in zip(a, b))


def matvec(m, v):
    return [dot(row, v) for row in m]


def log_sigmoid(t):
    return -math.log1p(math.exp(-t))


def log_one_minus_sigmoid(t):
    return -math.log1p(math.exp(t))


def g_hand(g, z, y=None):
    b = L(g.b)
    out = []
    for n, zn in enumerate(z):
        h = matvec(b, zn)
        if y is not None:
            h = [hi + L(g.q)[i][y[n]] for i, hi in enumerate(h)]
        out.append([math.tanh(hi) for hi in h])
    return out


def euclid(a, b):
    return math.sqrt(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))


def images(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 2, 2, generator=gen) * 2 - 1


def replay(seed, n, kind):
    torch.manual_seed(seed)
    return L(torch.randn(n, LATENT) if kind == "normal" else torch.rand(n, LATENT) * 2 - 1)


# ---------------- BiGAN ----------------
def bigan_hand(nets, x, z):
    e, d, g = nets["E"], nets["D"], nets["G"]
    w, v, c = L(d.w), L(d.v), float(d.c.detach())
    xs = [row for row in L(x.flatten(1))]
    real = [dot(w, xn) + dot(v, matvec(L(e.a), xn)) + c for xn in xs]
    fake = [dot(w, gn) + dot(v, zn) + c for gn, zn in zip(g_hand(g, z), z)]
    return real, fake


def bigan_nets():
    torch.manual_seed(0)
    return {"G": LinG(), "E": LinE(), "D": LinJointD()}


def test_bigan_d_loss_is_minus_v():
    nets, x = bigan_nets(), images(3)
    torch.manual_seed(7)
    loss, s = read(BiGANLoss(latent_dim=LATENT).d_loss(nets, Batch(x, torch.zeros(3, dtype=torch.long))))
    real, fake = bigan_hand(nets, x, replay(7, 3, "normal"))
    v = sum(map(log_sigmoid, real)) / 3 + sum(map(log_one_minus_sigmoid, fake)) / 3
    assert loss.item() == pytest.approx(-v, abs=1e-5)
    assert s["d/real"] == pytest.approx(sum(1 / (1 + math.exp(-r)) for r in real) / 3, abs=1e-6)
    assert s["d/fake"] == pytest.approx(sum(1 / (1 + math.exp(-f)) for f in fake) / 3, abs=1e-6)
    loss.backward()  # only D learns in its phase: G(z) and E(x) carry no gradient
    assert nets["G"].b.grad is None and nets["E"].a.grad is None and nets["D"].w.grad is not None


@pytest.mark.parametrize("nonsaturating", [True, False])
def test_bigan_ge_loss(nonsaturating):
    nets, x = bigan_nets(), images(4)
    torch.manual_seed(3)
    loss, _ = BiGANLoss(latent_dim=LATENT, nonsaturating=nonsaturating).g_loss(
        nets, Batch(x, torch.zeros(4, dtype=torch.long)))
    real, fake = bigan_hand(nets, x, replay(3, 4, "normal"))
    if nonsaturating:  # -log(1 - D(x, E(x))) - log D(G(z), z)
        want = -sum(map(log_one_minus_sigmoid, real)) / 4 - sum(map(log_sigmoid, fake)) / 4
    else:  # V itself
        want = sum(map(log_sigmoid, real)) / 4 + sum(map(log_one_minus_sigmoid, fake)) / 4
    assert loss.item() == pytest.approx(want, abs=1e-5)
    loss.backward()
    assert nets["G"].b.grad is not None and nets["E"].a.grad is not None


def test_nonsaturating_keeps_gradient_where_minimax_saturates():
    """Why non-saturating is the default: when D confidently rejects fakes, log(1 - D) is flat."""
    fake = torch.tensor([-12.0], requires_grad=True)
    (-torch.nn.functional.softplus(fake)).sum().backward()  # minimax G term log(1 - D)
    minimax = fake.grad.abs().item()
    fake.grad = None
    torch.nn.functional.softplus(-fake).sum().backward()  # non-saturating -log D
    assert minimax < 1e-5 and fake.grad.abs().item() > 0.99


def test_tribigan_adds_weighted_triplet_on_e_of_xl():
    nets, x = bigan_nets(), images(4)
    xl, yl = images(5, seed=2), torch.tensor([0, 0, 1, 1, -1])
    batch = Batch(x, torch.zeros(4, dtype=torch.long), xl, yl)
    torch.manual_seed(5)
    base, _ = BiGANLoss(latent_dim=LATENT).g_loss(nets, batch)
    torch.manual_seed(5)
    tri = TriBiGANLoss(latent_dim=LATENT, weight=0.3, form="hinge", miner="all", margin=2.0)
    loss, s = read(tri.g_loss(nets, batch))
    # by hand: hinge over all valid triplets of E(xl), the -1 row left out
    emb = [matvec(L(nets["E"].a), row) for row in L(xl.flatten(1))]
    terms = [max(0.0, 2.0 + euclid(emb[a], emb[p]) - euclid(emb[a], emb[n]))
             for a in range(4) for p in range(4) for n in range(4)
             if a != p and yl[a] == yl[p] and yl[n] != yl[a]]
    assert s["triplets"] == len(terms) == 8
    assert s["loss/triplet"] == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    assert loss.item() == pytest.approx(base.item() + 0.3 * sum(terms) / len(terms), abs=1e-5)
    # the D phase is plain BiGAN
    torch.manual_seed(9)
    d_tri, _ = tri.d_loss(nets, batch)
    torch.manual_seed(9)
    d_base, _ = BiGANLoss(latent_dim=LATENT).d_loss(nets, batch)
    assert d_tri.item() == d_base.item()


def test_tribigan_without_labelled_rows():
    nets, x = bigan_nets(), images(4)
    loss, s = read(TriBiGANLoss(latent_dim=LATENT).g_loss(nets, Batch(x, torch.zeros(4, dtype=torch.long))))
    assert s["triplets"] == 0 and s["loss/triplet"] == 0.0 and torch.isfinite(loss)


def test_semihard_with_zero_margin_is_rejected():
    with pytest.raises(ValueError, match="loss.triplet_margin=0"):
        TriBiGANLoss(latent_dim=LATENT, miner="semihard", margin=0.0)


# ---------------- DCGAN ----------------
def test_dcgan_losses():
    torch.manual_seed(0)
    nets, x = {"G": LinG(), "D": LinD()}, images(3)
    w, c = L(nets["D"].w), float(nets["D"].c.detach())
    logit = lambda v: dot(w, v) + c  # noqa: E731
    y = torch.zeros(3, dtype=torch.long)
    torch.manual_seed(4)
    d_loss, s = read(DCGANLoss(latent_dim=LATENT).d_loss(nets, Batch(x, y)))
    fake = [logit(g) for g in g_hand(nets["G"], replay(4, 3, "uniform"))]
    real = [logit(v) for v in L(x.flatten(1))]
    want = -sum(map(log_sigmoid, real)) / 3 - sum(map(log_one_minus_sigmoid, fake)) / 3
    assert d_loss.item() == pytest.approx(want, abs=1e-5) and s["loss/d"] == pytest.approx(want, abs=1e-5)
    for nonsat in (True, False):
        torch.manual_seed(6)
        g_loss, _ = DCGANLoss(latent_dim=LATENT, nonsaturating=nonsat).g_loss(nets, Batch(x, y))
        fake = [logit(g) for g in g_hand(nets["G"], replay(6, 3, "uniform"))]
        want = -sum(map(log_sigmoid, fake)) / 3 if nonsat else sum(map(log_one_minus_sigmoid, fake)) / 3
        assert g_loss.item() == pytest.approx(want, abs=1e-5)


# ---------------- MBGAN ----------------
def mbgan_hand_d(d, x, g_imgs, alpha, reduction, y=None):
    """Eqs. 1, 3, 4 with x_i = first half, x_j = second half; returns (L_D, mean h)."""
    m = len(g_imgs)
    xs = L(x.flatten(1))
    feat = lambda v, k: [fi + (L(d.cls)[i][k] if k is not None else 0.0)  # noqa: E731
                         for i, fi in enumerate(matvec(L(d.m), v))]
    cls = (lambda r: None) if y is None else (lambda r: int(y[r]))  # noqa: E731
    total, margins = 0.0, []
    for k in range(m):
        f_i, f_j = feat(xs[k], cls(k)), feat(xs[m + k], cls(m + k))
        f_g = feat(g_imgs[k], cls(m + k))
        l1 = sum(abs(a - b) for a, b in zip(xs[m + k], g_imgs[k]))
        h = alpha * (l1 / PIX if reduction == "mean" else l1)
        margins.append(h)
        total += max(0.0, h + euclid(f_i, f_j) - euclid(f_i, f_g))
    return total / m, sum(margins) / m


@pytest.mark.parametrize("alpha, reduction", [(0.05, "mean"), (2.0, "mean"), (0.5, "sum")])
def test_mbgan_d_loss(alpha, reduction):
    torch.manual_seed(0)
    nets, x = {"G": LinG(), "D": LinMetricD()}, images(5)  # odd batch: last row left out
    torch.manual_seed(2)
    loss, s = read(MBGANLoss(latent_dim=LATENT, alpha=alpha, l1_reduction=reduction).d_loss(
        nets, Batch(x, torch.zeros(5, dtype=torch.long))))
    want, margin = mbgan_hand_d(nets["D"], x, g_hand(nets["G"], replay(2, 2, "uniform")), alpha, reduction)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert s["loss/margin"] == pytest.approx(margin, abs=1e-5)
    loss.backward()  # h and G(z) are constants in L_D: G gets no gradient
    assert nets["G"].b.grad is None


def test_mbgan_large_margin_makes_every_hinge_active():
    torch.manual_seed(0)
    nets, x = {"G": LinG(), "D": LinMetricD()}, images(4)
    loss, s = read(MBGANLoss(latent_dim=LATENT, alpha=200.0).d_loss(nets, Batch(x, torch.zeros(4, dtype=torch.long))))
    assert loss.item() == pytest.approx(s["loss/margin"] + s["d/real"] - s["d/fake"], abs=1e-4)


def test_mbgan_g_loss():
    torch.manual_seed(0)
    nets, x = {"G": LinG(), "D": LinMetricD()}, images(4)
    torch.manual_seed(8)
    loss, s = read(MBGANLoss(latent_dim=LATENT, alpha=20.0).g_loss(nets, Batch(x, torch.zeros(4, dtype=torch.long))))
    g_imgs = g_hand(nets["G"], replay(8, 2, "uniform"))
    xs, mm = L(x.flatten(1)), L(nets["D"].m)
    want = sum(euclid(matvec(mm, xs[2 + k]), matvec(mm, g_imgs[k])) for k in range(2)) / 2  # eq. 2
    assert loss.item() == pytest.approx(want, abs=1e-5) and s["loss/g"] == pytest.approx(want, abs=1e-5)
    loss.backward()
    assert nets["G"].b.grad is not None


def test_conditional_mbgan_conditions_on_each_rows_class():
    torch.manual_seed(0)
    nets = {"G": LinG(classes=CLASSES), "D": LinMetricD(classes=CLASSES)}
    x, y = images(4), torch.tensor([2, 0, 1, 2])
    torch.manual_seed(3)
    loss, _ = MBGANLoss(latent_dim=LATENT, alpha=1.0, conditional=True).d_loss(nets, Batch(x, y))
    fakes = g_hand(nets["G"], replay(3, 2, "uniform"), y=[1, 2])  # G(z | y_j)
    want, _ = mbgan_hand_d(nets["D"], x, fakes, 1.0, "mean", y=y)
    assert loss.item() == pytest.approx(want, abs=1e-5)


def test_mbgan_gradient_finite_at_zero_distance():
    torch.manual_seed(0)
    nets, x = {"G": LinG(), "D": LinMetricD()}, images(1).repeat(4, 1, 1, 1)  # x_i == x_j
    loss, s = read(MBGANLoss(latent_dim=LATENT, alpha=1.0).d_loss(nets, Batch(x, torch.zeros(4, dtype=torch.long))))
    loss.backward()
    assert s["d/real"] == 0.0 and torch.isfinite(nets["D"].m.grad).all()


def test_mbgan_needs_two_rows():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="data.batch_size"):
        MBGANLoss(latent_dim=LATENT, alpha=1.0).d_loss(
            {"G": LinG(), "D": LinMetricD()}, Batch(images(1), torch.zeros(1, dtype=torch.long)))


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match="loss.l1_reduction='max'"):
        MBGANLoss(latent_dim=LATENT, alpha=1.0, l1_reduction="max")
