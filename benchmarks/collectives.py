"""A step's collectives on real process groups: the global miner's all-gather and DDP's gradient
all-reduce, as functions of the world size W, the labelled rows per rank and the model size, and
the alpha-beta (latency-bandwidth) ring model fitted to them (docs/SCALING.md uses the fit).

    python benchmarks/collectives.py [--worlds 1 2 4] [--rows 32 256 2048] [--reps 10]
                                     [--out benchmarks/results/collectives_cpu.md]

W gloo ranks on this machine's CPUs (torch.multiprocessing spawn, one torch thread each). Per point,
every rank runs the collective --reps times after one warm-up, each time after a barrier; the
point's time is the slowest rank's fastest run (a step waits for the slowest rank; other processes
on a shared machine only add time):
- gather: tgan.losses.mining.gather_rows itself, forward and backward, on `rows` rows per rank of
  the CIFAR-10 tribigan recipe's 100-dim E(x): the size exchange, the labels' and the embeddings'
  all_gather, and in backward the all_reduce of the [W, rows, 100] gradient;
- all-reduce: torch.distributed.all_reduce of one fp32 tensor of the gradients DDP reduces in one
  step (all the trained parameters: G, E and D of cifar10_tribigan, G and D of celeba_mbgan), and of
  1 M and 1 K elements, which pin the model's bandwidth and latency terms.

Model (ring algorithms, as NCCL's and gloo's): all_reduce of S bytes over W ranks moves
2(W-1)/W * S per rank in 2(W-1) hops: t = 2(W-1) * alpha + 2(W-1)/W * S / busbw; all_gather of a
[W, S/W] result: (W-1) * alpha + (W-1)/W * S / busbw. alpha (per hop) and busbw are fitted to the
W >= 2 all-reduce points by least squares on relative errors (so that the 1 K points weigh as much
as the 94 MB ones) and the fit is printed beside every measured point.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DIM = 100
RECIPES = {"cifar10_tribigan": ROOT / "launch" / "recipes" / "cifar10_tribigan.yaml",
           "celeba_mbgan": ROOT / "launch" / "recipes" / "celeba_mbgan.yaml"}


def recipe_params() -> dict[str, int]:
    """Trained parameters of each recipe's networks (3-channel images, 10 classes)."""
    from tgan.config import load_config
    from tgan.families.base import build_networks

    out = {}
    for name, path in RECIPES.items():
        cfg = load_config(path)
        nets = build_networks(cfg, channels=3, image_size=cfg.data.image_size, num_classes=10)
        out[name] = sum(p.numel() for net in nets.values() for p in net.parameters())
    return out


def _timed(fn, reps: int) -> float:
    """This rank's fastest time of fn() over `reps` runs after one warm-up, each started together.
    The fastest, not the median: on a shared machine other processes only ever add time, and a
    collective's cost is what it takes when its ranks are not preempted."""
    fn()
    times = []
    for _ in range(reps):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _rank(rank: int, world: int, init: str, plan: dict, result: str) -> None:
    from tgan.losses.mining import gather_rows

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    points = []
    for rows in plan["rows"]:
        emb = torch.randn(rows, DIM, requires_grad=True)
        labels = torch.randint(0, 10, (rows,))
        t = _timed(lambda: gather_rows(emb, labels)[0].sum().backward(), plan["reps"])
        points.append({"op": "gather", "rows": rows, "bytes": 4 * world * rows * DIM, "t": t})
    for name, numel in plan["sizes"].items():
        grads = torch.zeros(numel)
        t = _timed(lambda: dist.all_reduce(grads), plan["reps"])
        points.append({"op": "all_reduce", "what": name, "bytes": 4 * numel, "t": t})
    slowest = torch.tensor([p["t"] for p in points], dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    if rank == 0:
        for p, t in zip(points, slowest.tolist()):
            p["t"] = t
        Path(result).write_text(json.dumps(points))
    dist.destroy_process_group()


def measure(world: int, plan: dict) -> list[dict]:
    """Spawn `world` gloo ranks and return the points (the slowest rank's fastest runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "points.json")
        mp.spawn(_rank, args=(world, f"file://{tmp}/init", plan, result), nprocs=world, join=True)
        return [{"world": world, **p} for p in json.loads(Path(result).read_text())]


def hops(op: str, world: int) -> tuple[float, float]:
    """(latency hops, bytes factor) of the ring model for one collective of S bytes."""
    if op == "all_reduce":
        return 2 * (world - 1), 2 * (world - 1) / world
    return world - 1, (world - 1) / world  # all_gather


def fit(points: list[dict]) -> tuple[float, float]:
    """(alpha seconds per hop, busbw bytes/s) fitted to the W >= 2 all-reduce points, minimising
    the relative error of the model."""
    rows = [(*hops("all_reduce", p["world"]), p) for p in points if p["op"] == "all_reduce" and p["world"] > 1]
    a = torch.tensor([[h / p["t"], f * p["bytes"] / p["t"]] for h, f, p in rows], dtype=torch.float64)
    b = torch.ones(len(rows), 1, dtype=torch.float64)
    alpha, inv_bw = torch.linalg.lstsq(a, b).solution.flatten().tolist()
    return alpha, 1.0 / inv_bw


def predict(op: str, world: int, size: int, alpha: float, busbw: float) -> float:
    """Model time of the measured operation: an all-reduce of `size` bytes, or the miner's gather
    (three all_gathers: sizes, labels, rows of `size` bytes in all; backward: one all_reduce of them)."""
    if world == 1:
        return 0.0
    if op == "all_reduce":
        h, f = hops("all_reduce", world)
        return h * alpha + f * size / busbw
    gh, gf = hops("all_gather", world)
    rh, rf = hops("all_reduce", world)
    return 3 * gh * alpha + gf * size / busbw + rh * alpha + rf * size / busbw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rows", type=int, nargs="+", default=[32, 256, 2048], help="labelled rows per rank")
    p.add_argument("--params", type=int, nargs="*", default=[1000, 10**6],
                   help="extra all-reduce sizes in fp32 elements, besides the recipes' parameter counts")
    p.add_argument("--no-recipes", action="store_true", help="skip the recipes' parameter counts (tests)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "collectives_cpu.md"))
    args = p.parse_args()

    sizes = {f"{n:,} elements": n for n in args.params}
    if not args.no_recipes:
        sizes.update({f"{name} gradients ({n / 1e6:.1f} M)": n for name, n in recipe_params().items()})
    plan = {"rows": args.rows, "sizes": sizes, "reps": args.reps}
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    points = []
    for world in args.worlds:
        points += measure(world, plan)
        print(f"W={world}: done", flush=True)
    alpha, busbw = fit(points) if any(p["world"] > 1 and p["op"] == "all_reduce" for p in points) else (0.0, float("inf"))
    lines = ["| W | collective | size | bytes | measured (ms) | model (ms) |", "|---:|---|---|---:|---:|---:|"]
    for pt in points:
        what = f"{pt['rows']} rows/rank x {DIM}" if pt["op"] == "gather" else pt["what"]
        op = "miner gather_rows, fwd + bwd" if pt["op"] == "gather" else "all_reduce"
        model = predict(pt["op"], pt["world"], pt["bytes"], alpha, busbw)
        lines.append(f"| {pt['world']} | {op} | {what} | {pt['bytes']:,} | {1e3 * pt['t']:.3f} | {1e3 * model:.3f} |")
    command = " ".join(["python benchmarks/collectives.py", *sys.argv[1:]])
    text = "\n".join([
        "# Collectives on gloo CPU ranks: the miner's all-gather and the gradient all-reduce", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {platform.node()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, gloo",
        f"- load when started (`uptime`): {uptime}",
        f"- command: `{command}`",
        f"- every point: slowest rank's fastest of {args.reps} after a warm-up; one torch thread per rank. "
        f"W ranks share {os.cpu_count()} cores (and the machine), so W > cores measures oversubscription too.", "",
        f"Fitted ring model (least squares on relative errors over the W >= 2 all-reduce points): alpha = {1e6 * alpha:.1f} us "
        f"per hop, busbw = {busbw / 1e9:.3f} GB/s. Model column: that fit, with the gather as three "
        "all_gathers (sizes, labels, rows) plus its backward's all_reduce of the gathered gradient.", "",
        *lines, ""])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
