"""k-NN accuracy and mAP against hand-computed examples and a brute-force reference."""
import math

import pytest
import torch

from tgan.eval.metrics import average_precision, knn_predictions, retrieval_metrics


def _line(points):
    return torch.tensor(points, dtype=torch.float32)[:, None]


# Gallery: 5 points on a line, classes   0    1    0    0    1
GALLERY = _line([0.0, 1.0, 2.0, 3.0, 4.0])
GALLERY_Y = torch.tensor([0, 1, 0, 0, 1])


def test_average_precision_by_hand():
    # ranking relevance 1 0 1 1 0: precision at the hits 1/1, 2/3, 3/4
    ap = average_precision(torch.tensor([[True, False, True, True, False], [False, True, False, False, True]]))
    assert ap[0].item() == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert ap[1].item() == pytest.approx((1 / 2 + 2 / 5) / 2)
    assert math.isnan(average_precision(torch.tensor([[False, False]]))[0].item())


def test_map_on_a_line_by_hand():
    queries = _line([0.1, 3.9])  # class 0 near the left end, class 1 near the right end
    result = retrieval_metrics(GALLERY, GALLERY_Y, queries, torch.tensor([0, 1]), max_k=5)
    # query 0.1 ranks 0,1,2,3,4 -> relevance 1 0 1 1 0; query 3.9 ranks 4,3,2,1,0 -> 1 0 0 1 0
    ap0 = (1 + 2 / 3 + 3 / 4) / 3
    ap1 = (1 + 2 / 4) / 2
    assert result.mean_average_precision == pytest.approx((ap0 + ap1) / 2)
    assert result.num_queries_without_relevant == 0


def test_knn_votes_by_hand():
    queries = _line([0.9, 3.9])
    result = retrieval_metrics(GALLERY, GALLERY_Y, queries, torch.tensor([0, 1]), max_k=5)
    # 0.9: neighbours 1(c1) 0(c0) 2(c0) 3(c0) 4(c1) -> k=1: 1 wrong; k=2: tie, nearest is c1 -> wrong;
    #      k>=3: c0 wins -> right.
    # 3.9: neighbours 4(c1) 3(c0) 2(c0) 1(c1) 0(c0) -> k=1: right; k=2: tie, nearest c1 -> right;
    #      k=3: c0 2 votes -> wrong; k=4: tie 2-2, nearest c1 -> right; k=5: c0 3 votes -> wrong.
    assert result.knn_accuracy == pytest.approx([0.5, 0.5, 0.5, 1.0, 0.5])


def test_knn_tie_goes_to_the_class_with_the_nearest_member():
    # neighbours (nearest first) 2, 1, 1, 2: at k=4 classes 1 and 2 tie 2-2 and class 2 is nearest.
    predictions = knn_predictions(torch.tensor([[2, 1, 1, 2], [0, 3, 3, 3]]), num_classes=4)
    assert predictions.tolist() == [[2, 2, 1, 2], [0, 0, 3, 3]]


def test_equal_distances_rank_by_gallery_index():
    gallery = _line([1.0, -1.0, 1.0])
    result = retrieval_metrics(gallery, torch.tensor([1, 0, 0]), _line([0.0]), torch.tensor([0]), max_k=1)
    # all at distance 1: the ranking is the gallery order -> the nearest is item 0 (class 1), relevance 0 1 1
    assert result.knn_accuracy == [0.0]
    assert result.mean_average_precision == pytest.approx((1 / 2 + 2 / 3) / 2)


def _brute_force(gallery, gallery_y, queries, query_y, max_k):
    """Per-query python reference: explicit ranking, explicit vote counting, explicit AP sum."""
    accuracies, aps = [0] * max_k, []
    for q, label in zip(queries, query_y.tolist()):
        d = ((gallery - q) ** 2).sum(1).sqrt().tolist()
        ranked = [gallery_y[i].item() for i in sorted(range(len(d)), key=lambda i: (d[i], i))]
        for k in range(1, max_k + 1):
            top = ranked[:k]
            best = max(top.count(c) for c in set(top))
            winner = next(c for c in top if top.count(c) == best)  # first in rank order among the tied
            accuracies[k - 1] += winner == label
        hits, precisions = 0, []
        for i, c in enumerate(ranked, start=1):
            if c == label:
                hits += 1
                precisions.append(hits / i)
        aps.append(sum(precisions) / hits)
    n = len(queries)
    return [a / n for a in accuracies], sum(aps) / n


def test_matches_brute_force_and_does_not_depend_on_the_chunk_size():
    g = torch.Generator().manual_seed(0)
    gallery, queries = torch.randn(60, 3, generator=g), torch.randn(25, 3, generator=g)
    gallery_y, query_y = torch.randint(0, 4, (60,), generator=g), torch.randint(0, 4, (25,), generator=g)
    knn_ref, map_ref = _brute_force(gallery, gallery_y, queries, query_y, max_k=10)
    for block in (60, 7 * 60, 1 << 20):  # 1 query per chunk, uneven chunks, one chunk
        result = retrieval_metrics(gallery, gallery_y, queries, query_y, max_k=10, block_elements=block)
        assert result.knn_accuracy == pytest.approx(knn_ref)
        assert result.mean_average_precision == pytest.approx(map_ref)


def test_queries_of_a_class_missing_from_the_gallery_are_counted_not_averaged():
    result = retrieval_metrics(GALLERY, GALLERY_Y, _line([0.0, 2.0]), torch.tensor([0, 7]), max_k=1)
    assert result.num_queries_without_relevant == 1
    assert result.mean_average_precision == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)  # the class-0 query alone
    assert result.knn_accuracy == [0.5]


def test_bad_shapes_and_k_are_named():
    with pytest.raises(ValueError, match="same D"):
        retrieval_metrics(GALLERY, GALLERY_Y, torch.zeros(1, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="one label per row"):
        retrieval_metrics(GALLERY, GALLERY_Y[:3], GALLERY, GALLERY_Y)
    with pytest.raises(ValueError, match="labels must be >= 0"):
        retrieval_metrics(GALLERY, GALLERY_Y - 1, GALLERY, GALLERY_Y)
    with pytest.raises(ValueError, match="NaN or inf"):
        retrieval_metrics(GALLERY, GALLERY_Y, GALLERY * float("nan"), GALLERY_Y)
    with pytest.raises(ValueError, match="eval.max_k=6"):
        retrieval_metrics(GALLERY, GALLERY_Y, GALLERY, GALLERY_Y, max_k=6)
