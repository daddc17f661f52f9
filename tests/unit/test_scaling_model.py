"""benchmarks/scaling_model.py (docs/SCALING.md's predictions): the mining term passes through its
measured H100 points, and the collectives follow the ring model's limits."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from scaling_model import MINED, all_reduce_s, gather_s, mining_s  # noqa: E402


def test_mining_term_passes_through_the_measured_points():
    for rows, seconds in MINED:
        assert mining_s(rows) == pytest.approx(seconds)
    assert mining_s(16384) > 4 * mining_s(4096)  # the N^2 term takes over


def test_collectives_follow_the_ring_model():
    # large messages: bandwidth term 2(W-1)/W * S / busbw; latency: the tree's 2 log2 W hops at large W
    assert all_reduce_s(2, 1e9, 1e9, 0.0) == pytest.approx(1.0)
    assert all_reduce_s(512, 0.0, 1e9, 1e-6) == pytest.approx(18e-6)
    assert gather_s(512, 0.0, 1e9, 1e-6) == pytest.approx(3 * 511e-6 + 18e-6)  # all_gather: ring only
