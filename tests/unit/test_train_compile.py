"""train.compile=true: the debug recipe trains with torch.compile'd networks on the CPU (inductor), and
a compiled tribigan step waits on the device as often as the eager one (3 times, see test_host_syncs).
Slow: the first steps compile (about a minute on the 2-core VM)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from host_syncs import HostSyncs

from tgan.config import load_config
from tgan.families import get_family
from tgan.losses.base import Batch
from tgan.train.backend import TorchBackend
from tgan.train.loop import PhaseRunner, train

pytestmark = pytest.mark.slow
DEBUG = Path(__file__).resolve().parents[2] / "launch" / "recipes" / "debug.yaml"


def _inductor_problem() -> str | None:
    """Why inductor cannot compile on this machine (no C++ compiler, ...), or None when it can."""
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(3))
    except Exception as e:  # noqa: BLE001 (any failure of the toolchain means: cannot test here)
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def test_a_compiled_debug_run_trains_and_syncs_as_often_as_eager(debug_shards, tmp_path):
    problem = _inductor_problem()
    if problem is not None:
        pytest.skip(f"torch.compile (inductor) cannot compile on this machine: {problem}")
    cfg = load_config(DEBUG, [f"data.shards={debug_shards}", f"train.out_dir={tmp_path / 'run'}", "train.compile=true",
                              "train.steps=2", "train.checkpoint_every=0"])
    backend = TorchBackend.for_config(cfg)
    result = train(cfg, backend=backend)
    assert result.step == 2 and all(math.isfinite(v) for k, v in result.scalars.items() if k.startswith("loss/"))
    assert all(isinstance(backend.module(n), torch._dynamo.eval_frame.OptimizedModule) for n in result.nets)

    family = get_family(cfg.model.family)
    run = PhaseRunner(backend, family.make_loss(cfg.loss, cfg.model, 10), list(result.nets))
    gen = torch.Generator().manual_seed(0)
    batch = Batch(torch.rand(16, 1, 16, 16, generator=gen) * 2 - 1, torch.zeros(16, dtype=torch.long),
                  torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1, torch.arange(8) % 3)
    with HostSyncs() as syncs:  # the shapes of the training batches: no recompilation here
        for group in family.groups_in_order:
            assert run(group, batch)[1].finite
    assert syncs.where == {"Tensor.tolist": 2, "aten._local_scalar_dense": 1}
