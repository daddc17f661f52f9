"""The chunked miners (tgan/losses/triplet.py) against the dense O(N^3) miner they replaced
(tests/dense_triplet.py): same triplet count, loss to 1e-6 and embedding gradients, for every miner
and form, whatever the chunk size; and the mining memory estimate behind --dry-run."""
import pytest
import torch

from dense_triplet import dense_triplet_loss
from tgan.config import ConfigError, load_config
from tgan.losses import triplet
from tgan.losses.mining import check_mining_memory, mining_memory_bytes
from tgan.losses.triplet import anchor_chunk, triplet_loss

DEFAULT_CHUNK = triplet.CHUNK_BYTES
COMBOS = [(form, miner) for form in ("softmax", "hinge") for miner in ("all", "semihard", "hard")]


def batch(n=70, classes=6, seed=0):
    """Unequal classes, a singleton class, unlabelled rows and two duplicated rows (zero distance)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    emb = torch.randn(n, 5, generator=gen)
    if n >= 12:
        labels[:3] = -1
        labels[3] = classes  # only example of its class: a negative, never anchor or positive
        emb[10] = emb[11]
    return emb, labels


def compare(emb, labels, form, miner):
    new, old = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    loss, count = triplet_loss(new, labels, form=form, miner=miner, margin=0.7)
    want, want_count = dense_triplet_loss(old, labels, form=form, miner=miner, margin=0.7)
    (loss * 3.0).backward()
    (want * 3.0).backward()
    assert count == want_count > 0, (form, miner)
    assert abs(loss.item() - want.item()) <= 1e-6, (form, miner, loss.item(), want.item())
    torch.testing.assert_close(new.grad, old.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk_bytes,anchors", [(1, "one"), (200_000, "some"), (DEFAULT_CHUNK, "all")])
def test_chunked_equals_dense(monkeypatch, chunk_bytes, anchors):
    monkeypatch.setattr(triplet, "CHUNK_BYTES", chunk_bytes)
    emb, labels = batch()
    for miner in ("all", "hard"):  # anchors per chunk: 1, a few (an uneven last chunk), every one
        step = anchor_chunk(len(labels), int(torch.bincount(labels[labels >= 0]).max()), emb.shape[1], miner)
        assert {"one": step == 1, "some": 1 < step < len(labels), "all": step >= len(labels)}[anchors]
    for form, miner in COMBOS:
        compare(emb, labels, form, miner)


def test_chunked_equals_dense_on_other_batches():
    for seed, (n, classes) in enumerate([(2, 1), (9, 2), (40, 2), (120, 10)]):
        emb, labels = batch(n, classes, seed)
        for form, miner in COMBOS:
            if n == 2:  # one class, no negative: no triplet, a zero loss still on the graph
                loss, count = triplet_loss(emb.clone().requires_grad_(), labels, form=form, miner=miner, margin=0.7)
                assert count == 0 and loss.item() == 0.0 and loss.requires_grad
                continue
            compare(emb, labels, form, miner)


def test_memory_estimate_grows_as_n_squared_and_bounds_the_old_cube():
    small, big = (mining_memory_bytes(n, n // 128, 128, "all") for n in (2048, 4096))
    assert 2 < big / small <= 4.5  # O(N^2): doubling N at most ~quadruples it (not x8)
    assert big < 2 * 2**30  # the target: N = 4096 on 128 ranks under 2 GB
    assert mining_memory_bytes(4096, 32, 128, "hard") < big


def test_dry_run_check_names_the_knobs():
    cfg = load_config("launch/recipes/cifar10_tribigan.yaml", ["cluster.num_workers=128"])
    check_mining_memory(cfg, cfg.model.latent_dim)  # tribigan mines E(x); 4096 labelled rows fit
    huge = load_config("launch/recipes/cifar10_tribigan.yaml", ["cluster.num_workers=4096",
                                                                 "data.labelled_batch_size=64"])
    with pytest.raises(ConfigError, match="data.labelled_batch_size.*cluster.num_workers.*loss.miner=hard"):
        check_mining_memory(huge, huge.model.latent_dim)


def test_mining_stays_float32_under_bf16_autocast():
    emb, labels = batch(40, 4)
    low = emb.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, count = triplet_loss(low * 1.0, labels, form="softmax", miner="semihard", margin=0.7)
    want, want_count = triplet_loss(low.detach().float(), labels, form="softmax", miner="semihard", margin=0.7)
    assert loss.dtype == torch.float32 and count == want_count > 0
    assert abs(loss.item() - want.item()) <= 1e-6
    loss.backward()
    assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad.float()).all()
