"""The training loop on 2 spawned gloo ranks with DDP: both ranks end with identical weights, every
rank writes its own part of the checkpoint, a resumed run repeats every rank's losses and weights
(the weights' moving average too, equal on both ranks), and a diverging run, or one out of
train.time_limit_s, stops on both ranks at the same step (the decision is agreed, so no rank waits
in a collective for the other)."""
import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tgan.config import load_config
from tgan.train.checkpoint import load_checkpoint
from tgan.train.loop import NonFiniteError, train
from spawned import leave

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"
WORLD = 2


def _worker(rank, init_file, shards, tmp):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        common = [f"data.shards={shards}", "train.steps=3", "train.checkpoint_every=2"]
        result = train(load_config(DEBUG, [*common, f"train.out_dir={tmp}/run"]))
        torch.save({"params": {n: dict(net.named_parameters()) for n, net in result.nets.items()},
                    "scalars": result.scalars}, f"{tmp}/rank{rank}.pt")

        # Resume on 2 ranks: every rank restores its own RNG and data position, and the weights' moving
        # average (train.ema_decay; what full.nets and half.nets are) continues exactly.
        seen = {"full": [], "half": []}
        record = (lambda key: lambda step, scalars, path: seen[key].append((step, scalars["loss/d"], scalars["loss/g"])))
        resume_common = [f"data.shards={shards}", "train.checkpoint_every=0", "train.log_every=1", "train.ema_decay=0.9"]
        full = train(load_config(DEBUG, [*resume_common, "train.steps=4", f"train.out_dir={tmp}/full"]),
                     reporter=record("full"))
        train(load_config(DEBUG, [*resume_common, "train.steps=2", f"train.out_dir={tmp}/half"]), reporter=record("half"))
        torch.manual_seed(99)
        half = train(load_config(DEBUG, [*resume_common, "train.steps=4", f"train.out_dir={tmp}/half"]),
                     reporter=record("half"))
        same_weights = all(torch.equal(a, b) for n in full.nets
                           for a, b in zip(full.nets[n].parameters(), half.nets[n].parameters()))
        torch.save({"seen": seen, "same_weights": same_weights, "ema": dict(full.nets["E"].named_parameters())},
                   f"{tmp}/resume{rank}.pt")

        diverging = [*common, f"train.out_dir={tmp}/nan", "optim.lr=1e38", "train.max_nonfinite_in_row=2",
                     "train.steps=20"]
        try:
            train(load_config(DEBUG, diverging))
            stopped = None
        except NonFiniteError as e:
            stopped = str(e).split("(up to step ")[1].split(")")[0]
        torch.save(stopped, f"{tmp}/stopped{rank}.pt")

        # Rank 0's clock decides train.time_limit_s for all: here only its own limit has run out.
        limit = 1e-6 if rank == 0 else 3600
        timed = train(load_config(DEBUG, [*common, "train.steps=50", f"train.time_limit_s={limit}",
                                          f"train.out_dir={tmp}/timed"]))
        torch.save(timed.step, f"{tmp}/timed{rank}.pt")
        leave()
    finally:
        dist.destroy_process_group()


def test_two_rank_ddp_run_keeps_ranks_identical_and_checkpoints_every_rank(debug_shards, tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(debug_shards), str(tmp_path)), nprocs=WORLD, join=True)

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert set(r0["params"]) == {"G", "E", "D"}
    for name in r0["params"]:
        for key, value in r0["params"][name].items():
            assert torch.equal(value, r1["params"][name][key]), f"{name}.{key}"
    # The ranks saw different data: their local losses differ while their weights agree.
    assert r0["scalars"]["loss/d"] != r1["scalars"]["loss/d"]
    assert r0["scalars"]["grad_norm/D"] == r1["scalars"]["grad_norm/D"]  # all-reduced gradients

    final = tmp_path / "run" / "checkpoints" / "step_00000003"
    # Each rank wrote and listed its own files; rank 0 merged them when both were done.
    assert {p.name for p in final.iterdir()} == {"state.pt", "optim.pt", "rank_0.pt", "rank_1.pt",
                                                 "manifest_rank_0.json", "manifest_rank_1.json"}
    assert set(json.loads((final / "manifest_rank_1.json").read_text())["files"]) == {"rank_1.pt"}
    assert load_checkpoint(final)["world_size"] == WORLD
    saved = load_checkpoint(final)["nets"]["G"]
    assert all(torch.equal(saved[key], value) for key, value in r0["params"]["G"].items())
    steps = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 3  # rank 0 writes the metrics, once per step

    resumes = [torch.load(tmp_path / f"resume{r}.pt", weights_only=False) for r in range(WORLD)]
    for resume in resumes:
        assert resume["seen"]["full"] == resume["seen"]["half"] and len(resume["seen"]["full"]) == 4
        assert resume["same_weights"]
    # (parameters: BatchNorm's running statistics are per rank, in the trained networks as in their average)
    assert all(torch.equal(value, resumes[1]["ema"][key]) for key, value in resumes[0]["ema"].items())
    assert not torch.equal(resumes[0]["ema"]["head.weight"],
                           load_checkpoint(tmp_path / "full" / "checkpoints" / "step_00000004")["nets"]["E"]["head.weight"])

    stopped = [torch.load(tmp_path / f"stopped{r}.pt") for r in range(WORLD)]
    assert stopped[0] is not None and stopped[0] == stopped[1]

    assert [torch.load(tmp_path / f"timed{r}.pt") for r in range(WORLD)] == [1, 1]
    assert (tmp_path / "timed" / "checkpoints" / "step_00000001" / "rank_1.pt").is_file()


def _backend_worker(rank, init_file, tmp):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from tgan.config import OptimConfig
        from tgan.families.base import Group, Role
        from tgan.train.backend import TorchBackend

        torch.manual_seed(0)
        backend = TorchBackend()
        backend.setup({"D": torch.nn.Linear(3, 1)}, (Group("D", ("D",), None, Role.DISCRIMINATOR),), OptimConfig(),
                      torch.device("cpu"))
        before = backend.raw("D").weight.detach().clone()
        x = torch.full((2, 3), float(rank + 1))
        # An infinite constant on rank 0 only: its gradients stay finite, so DDP alone would let
        # rank 1 step while rank 0 skips.
        offset = float("inf") if rank == 0 else 0.0
        result = backend.step("D", backend.module("D")(x).sum() + offset)
        unchanged = torch.equal(backend.raw("D").weight, before)
        good = backend.step("D", backend.module("D")(x).sum())
        torch.save({"finite": (result.finite, good.finite), "unchanged": unchanged,
                    "weight": backend.raw("D").weight.detach()}, f"{tmp}/backend{rank}.pt")
        leave()
    finally:
        dist.destroy_process_group()


def test_ranks_agree_to_skip_when_only_one_rank_has_a_non_finite_loss(tmp_path):
    mp.spawn(_backend_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"backend{r}.pt", weights_only=False) for r in range(WORLD))
    assert r0["finite"] == r1["finite"] == (False, True)
    assert r0["unchanged"] and r1["unchanged"]
    assert torch.equal(r0["weight"], r1["weight"])
