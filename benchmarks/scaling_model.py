"""The scaling model of docs/SCALING.md, evaluated: one CIFAR-10 tribigan step per rank on W H100s,
as compute + mining + the miner's gather + the gradient all-reduce, for several networks.

    python benchmarks/scaling_model.py [--worlds 8 64 512] [--utilisation 0.3] [--cap 4096]

Every figure it prints is PREDICTED. Its inputs, and which of them are measured:
- compute: the step's FLOPs per rank, counted (torch.utils.flop_counter, miner_memory.step_flops),
  at --utilisation of the H100 SXM's dense bf16 peak (989 TFLOP/s): an assumption (the issue's goal
  is 30%); no GPU step has been measured yet (benchmarks/gpu_suite.py will);
- mining: t0 + c * N^2, fitted through the two MEASURED H100 points of one rank's `all` mining
  (32 anchors; N = 1024: 2.90 ms, N = 4096: 3.73 ms; benchmarks/results/miner_gpu.md);
- collectives: the ring model of benchmarks/collectives.py (whose shape is fitted to MEASURED gloo
  points in benchmarks/results/collectives_cpu.md) with PUBLISHED NCCL figures: NVLink4 busbw
  ~450 GB/s in a node of 8 (nccl-tests all_reduce 360-480), a NIC of 400 Gb/s = 50 GB/s or
  100 Gb/s = 12.5 GB/s; per-hop latency ~1 us over NVLink and ~5 us across nodes (assumed).
  Across nodes the busbw is the node's NIC bandwidth (8 NICs x 400 Gb/s: NCCL runs one ring per
  rail). The gradient all-reduce is shown with NCCL's tree latency (2 log2 W hops) for large W, the
  gathers with the ring's (all_gather has no tree), which is what makes them grow with W.
With --cap N, a W whose global labelled batch exceeds N also gets a row with hierarchical mining:
the ranks mine in groups of N / 32 (each group gathers and mines its own N rows), so the mining
and its gather stop growing with W.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from collectives import DIM, hops, recipe_params  # noqa: E402
from miner_memory import H100_BF16, PER_RANK, step_flops  # noqa: E402

MINED = ((1024, 2.90e-3), (4096, 3.73e-3))
"""One rank's `all` mining on an H100, forward + backward, 1 GiB chunks (benchmarks/results/miner_gpu.md)."""
NVLINK = (450e9, 1e-6)
NETWORKS = {"8 x 400 Gb/s per node": (400e9, 5e-6), "1 x 400 Gb/s per node": (50e9, 5e-6),
            "1 x 100 Gb/s per node": (12.5e9, 5e-6)}
"""(busbw bytes/s, latency per hop) across nodes."""
GPUS_PER_NODE = 8


def mining_s(rows: int) -> float:
    (n1, t1), (n2, t2) = MINED
    c = (t2 - t1) / (n2**2 - n1**2)
    return t1 - c * n1**2 + c * rows**2


def all_reduce_s(world: int, size: float, busbw: float, alpha: float) -> float:
    """Ring bandwidth term, latency of the ring or NCCL's tree, whichever is less."""
    _, f = hops("all_reduce", world)
    return min(2 * (world - 1), 2 * math.log2(world)) * alpha + f * size / busbw


def gather_s(world: int, size: float, busbw: float, alpha: float) -> float:
    """The miner's gather_rows: three ring all_gathers (sizes, labels, rows of `size` bytes in all)
    forward; one all_reduce of the [W, n, D] gradient backward."""
    h, f = hops("all_gather", world)
    return 3 * h * alpha + f * size / busbw + all_reduce_s(world, size, busbw, alpha)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[8, 64, 512])
    p.add_argument("--utilisation", type=float, default=0.3)
    p.add_argument("--cap", type=int, default=4096, help="global labelled rows of one mining group")
    args = p.parse_args()
    params = recipe_params()["cifar10_tribigan"]
    compute = step_flops() / (args.utilisation * H100_BF16)
    grads = 4 * params  # DDP reduces fp32 gradients, bf16 autocast or not
    print(f"CIFAR-10 tribigan, per rank: {params / 1e6:.1f} M parameters ({grads / 1e6:.0f} MB of fp32 gradients), "
          f"compute {1e3 * compute:.2f} ms at {100 * args.utilisation:.0f}% of {H100_BF16 / 1e12:.0f} TFLOP/s")
    print("\n| W | network | N mined | compute | mining | miner gather | gradient all-reduce | largest |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for world in args.worlds:
        rows = PER_RANK * world
        nets = {"NVLink4, one node": NVLINK} if world <= GPUS_PER_NODE else NETWORKS
        group = min(rows, args.cap)
        for name, (busbw, alpha) in nets.items():
            for mined in sorted({rows, group}, reverse=True):
                ranks = mined // PER_RANK
                parts = {"compute": compute, "mining": mining_s(mined),
                         "miner gather": gather_s(ranks, 4 * mined * DIM, busbw, alpha),
                         "gradient all-reduce": all_reduce_s(world, grads, busbw, alpha)}
                largest = max(parts, key=parts.get)
                how = name if mined == rows else f"{name}, mining in groups of {ranks} ranks"
                print(f"| {world} | {how} | {mined} | " + " | ".join(f"{1e3 * v:.2f}" for v in parts.values())
                      + f" | {largest} |")


if __name__ == "__main__":
    main()
