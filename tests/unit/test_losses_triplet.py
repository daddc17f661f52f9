"""Triplet forms and miners against explicit python loops over every (anchor, positive, negative)."""
import math

import pytest
import torch
from dense_triplet import dense_triplet_loss

from tgan.losses.triplet import triplet_loss

LABELS = [0, 0, 0, 1, 1, 2, -1, 3, 1]  # classes 2 and 3 have one example; row 6 is unlabelled
MARGIN = 0.8


def embeddings(seed=0):
    return torch.randn(len(LABELS), 3, generator=torch.Generator().manual_seed(seed))


def hand(emb, labels, form, miner, margin):
    e = emb.tolist()
    n = len(labels)
    d = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(e[i], e[j]))) for j in range(n)] for i in range(n)]
    ok = [y >= 0 for y in labels]
    triplets = []
    if miner == "hard":
        for a in range(n):
            pos = [p for p in range(n) if ok[a] and ok[p] and p != a and labels[p] == labels[a]]
            neg = [q for q in range(n) if ok[a] and ok[q] and labels[q] != labels[a]]
            if pos and neg:
                p = max(pos, key=lambda j: (d[a][j], -j))  # farthest positive, lowest row on ties
                q = min(neg, key=lambda j: (d[a][j], j))  # nearest negative
                triplets.append((a, p, q))
    else:
        for a in range(n):
            for p in range(n):
                for q in range(n):
                    if not (ok[a] and ok[p] and ok[q] and a != p and labels[p] == labels[a] != labels[q]):
                        continue
                    if miner == "semihard" and not (d[a][p] < d[a][q] and d[a][q] - d[a][p] < margin):
                        continue
                    triplets.append((a, p, q))
    if form == "softmax":  # -log(e^-d+ / (e^-d+ + e^-d-)) = softplus(d+ - d-)
        terms = [math.log(1 + math.exp(d[a][p] - d[a][q])) for a, p, q in triplets]
    else:
        terms = [max(0.0, margin + d[a][p] - d[a][q]) for a, p, q in triplets]
    return (sum(terms) / len(terms) if terms else 0.0), len(terms)


@pytest.mark.parametrize("form", ["softmax", "hinge"])
@pytest.mark.parametrize("miner", ["all", "semihard", "hard"])
def test_matches_hand_loops(form, miner):
    for seed in range(3):
        emb = embeddings(seed)
        loss, count = triplet_loss(emb, torch.tensor(LABELS), form=form, miner=miner, margin=MARGIN)
        want, want_count = hand(emb, LABELS, form, miner, MARGIN)
        assert count == want_count
        assert loss.item() == pytest.approx(want, abs=1e-5)
    assert count > 0


def test_counts_for_all_triplets():
    # labelled rows: class 0 x3, class 1 x3, classes 2, 3 x1 -> 8 labelled rows
    # anchors in class 0: 3 * 2 positives * 5 negatives; class 1 the same; singletons: none
    _, count = triplet_loss(embeddings(), torch.tensor(LABELS), form="softmax", miner="all", margin=MARGIN)
    assert count == 2 * (3 * 2 * 5)
    _, hard = triplet_loss(embeddings(), torch.tensor(LABELS), form="softmax", miner="hard", margin=MARGIN)
    assert hard == 6  # one per anchor that has a positive


def test_unlabelled_rows_take_no_part():
    emb = embeddings().requires_grad_()
    loss, _ = triplet_loss(emb, torch.tensor(LABELS), form="hinge", miner="all", margin=MARGIN)
    loss.backward()
    assert emb.grad[6].abs().sum() == 0  # the -1 row
    moved = embeddings().clone()
    moved[6] = 0.0  # move the unlabelled row onto other rows: nothing changes
    again, _ = triplet_loss(moved, torch.tensor(LABELS), form="hinge", miner="all", margin=MARGIN)
    assert again.item() == loss.item()


def test_class_with_one_example_is_only_a_negative():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    loss, count = triplet_loss(emb, torch.tensor([0, 1, 1]), form="hinge", miner="all", margin=1.0)
    # triplets (1, 2, 0) and (2, 1, 0): d(1,2) = sqrt(5), d(1,0) = 1, d(2,0) = 2
    assert count == 2
    assert loss.item() == pytest.approx(((1 + 5**0.5 - 1) + (1 + 5**0.5 - 2)) / 2, abs=1e-6)


@pytest.mark.parametrize("miner", ["all", "semihard", "hard"])
@pytest.mark.parametrize("form", ["softmax", "hinge"])
def test_gradient_finite_at_zero_distance(miner, form):
    emb = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.5, 2.0], [3.0, 0.0]], requires_grad=True)
    loss, count = triplet_loss(emb, torch.tensor([0, 0, 1, 1, 0]), form=form, miner=miner, margin=1.0)
    loss.backward()
    assert count > 0 and torch.isfinite(loss) and torch.isfinite(emb.grad).all()


def test_no_triplet_gives_zero_loss_attached_to_the_graph():
    emb = torch.randn(3, 2, requires_grad=True)
    loss, count = triplet_loss(emb, torch.tensor([0, 1, 2]), form="softmax", miner="all", margin=1.0)
    loss.backward()
    assert count == 0 and loss.item() == 0.0 and torch.equal(emb.grad, torch.zeros(3, 2))
    empty = torch.zeros(0, 2, requires_grad=True)
    loss, count = triplet_loss(empty, torch.zeros(0, dtype=torch.long), form="hinge", miner="hard", margin=1.0)
    loss.backward()
    assert count == 0


def test_invalid_form_and_miner_name_the_field():
    with pytest.raises(ValueError, match="loss.triplet_form='cosine'"):
        triplet_loss(embeddings(), torch.tensor(LABELS), form="cosine", miner="all", margin=1.0)
    with pytest.raises(ValueError, match="loss.miner='easy'"):
        triplet_loss(embeddings(), torch.tensor(LABELS), form="hinge", miner="easy", margin=1.0)


def test_semihard_compares_the_gap_with_the_margin_at_float32_rounding():
    # d+ = 0.3 and d- = fl32(0.3 + 1): d+ + m rounds up to d- exactly, so `d- < d+ + m` is false, but
    # the gap d- - d+ is below the margin (exactly and in float32): the triplet is semi-hard.
    d_ap = torch.tensor(0.3)
    d_an = d_ap + 1.0
    assert not d_an < d_ap + 1.0 and d_an - d_ap < 1.0
    assert d_an.double() - d_ap.double() < 1.0
    # 1-d rows: anchor at 0, positive at d+, negative at -d-; cdist gives these distances bit-exactly.
    emb = torch.stack([torch.tensor(0.0), d_ap, -d_an])[:, None]
    labels = torch.tensor([0, 0, 1])
    loss, count = triplet_loss(emb, labels, form="hinge", miner="semihard", margin=1.0)
    assert count == 1  # (0, 1, 2); from the positive's side the gap is 1.3 > m
    assert loss.item() == pytest.approx(1.0 + 0.3 - 1.3, abs=1e-6)
    # the dense reference miner draws the same boundary
    assert dense_triplet_loss(emb, labels, form="hinge", miner="semihard", margin=1.0)[1] == 1
