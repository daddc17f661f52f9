"""benchmarks/collectives.py: its ring model recovers known constants, and it measures the real
miner gather and an all-reduce on 2 spawned gloo ranks. Timings are not checked."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from collectives import DIM, fit, measure, predict  # noqa: E402


def test_fit_recovers_the_ring_model_constants():
    alpha, busbw = 50e-6, 2e9
    points = [{"op": "all_reduce", "world": w, "bytes": s, "t": predict("all_reduce", w, s, alpha, busbw)}
              for w in (2, 4, 8) for s in (4_000, 4_000_000, 90_000_000)]
    got_alpha, got_busbw = fit(points)
    assert got_alpha == pytest.approx(alpha, rel=1e-6) and got_busbw == pytest.approx(busbw, rel=1e-6)
    assert predict("gather", 1, 1000, alpha, busbw) == 0.0  # one rank: nothing moves


def test_two_gloo_ranks_time_the_miner_gather_and_an_all_reduce():
    points = measure(2, {"rows": [4], "sizes": {"1,000 elements": 1000}, "reps": 2})
    gather, reduce = points
    assert gather["op"] == "gather" and gather["bytes"] == 4 * 2 * 4 * DIM and gather["world"] == 2
    assert reduce["op"] == "all_reduce" and reduce["bytes"] == 4000
    assert all(p["t"] > 0 for p in points)
