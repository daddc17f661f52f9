"""Mining with no process group: world size 1, nothing gathered, identical to local mining."""
import pytest
import torch

from tgan.losses.mining import gather_rows, global_triplet_loss
from tgan.losses.triplet import triplet_loss


def test_without_process_group_gather_is_identity():
    emb, labels = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 0, 1])
    rows, row_labels = gather_rows(emb, labels)
    assert rows is emb and row_labels is labels


def test_global_loss_equals_local_loss_and_gradient():
    emb, labels = torch.randn(7, 3), torch.tensor([0, 1, 0, 1, 2, -1, 2])
    a, b = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    loss, count = global_triplet_loss(a, labels, form="softmax", miner="semihard", margin=2.0)
    want, want_count = triplet_loss(b, labels, form="softmax", miner="semihard", margin=2.0)
    loss.backward()
    want.backward()
    assert count == want_count > 0 and loss.item() == want.item() and torch.equal(a.grad, b.grad)


def test_row_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="4 embeddings but 3 labels"):
        gather_rows(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
