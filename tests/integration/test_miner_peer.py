"""benchmarks/miner_peer.py: tgan's miner and pytorch-metric-learning's compute the same loss on the
same rows, each in a fresh process, and a PML run that needs more than its address-space cap comes
back as an 'over the cap' result instead of taking the machine's memory. Timings are not checked."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytorch_metric_learning")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from miner_peer import run_case  # noqa: E402


def test_same_loss_as_the_peer_and_the_peer_capped():
    ours, peer = run_case("tgan", 48, "semihard", 8.0), run_case("pml", 48, "semihard", 8.0)
    assert ours["count"] > 0 and ours["loss"] == pytest.approx(peer["loss"], rel=1e-5)
    capped = run_case("pml", 512, "all", 0.02)  # ~12 M triplet indices: far more than 20 MiB
    assert "over the 0.02 GiB cap" in capped["error"]
