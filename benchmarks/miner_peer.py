"""Triplet mining, tgan against its peer: tgan's chunked miners and pytorch-metric-learning's
TripletMarginLoss with its miners, on the same rows, side by side in one run.

    pip install -e .[bench]     # pytorch-metric-learning, an optional benchmark dependency
    python benchmarks/miner_peer.py [--sizes 256 512 1024 2048] [--peer-max 1024] [--peer-cap-gb 8]
                                    [--out benchmarks/results/miner_peer.md]

For each global labelled batch N (10 classes drawn uniformly, 100-dim rows: the CIFAR-10 tribigan
recipe's E(x)) and each miner, one fresh process with one torch thread runs the loss forward and
backward over all N anchors twice and keeps the faster; peak = its high-water RSS minus its RSS
before mining (as benchmarks/miner_memory.py). Both sides compute the same loss: hinge form
max(0, m + d+ - d-) with m = 1 on unnormalised Euclidean distances, averaged over the mined
triplets (PML's MeanReducer; its default AvgNonZeroReducer averages the non-zero terms only), so
the table also shows that the two agree:
- all:      tgan `all` / PML TripletMarginLoss without a miner (every valid triplet);
- semihard: tgan `semihard` / PML TripletMarginMiner(type_of_triplets="semihard") (0 < d- - d+ <= m;
            tgan keeps d- - d+ < m, so a triplet exactly at the margin, which adds 0 to the loss,
            may count on one side only);
- hard:     tgan `hard` / PML BatchHardMiner.
PML's LpDistance computes distances by the matrix-product identity, tgan's cdist directly, so their
last bits differ and a semi-hard triplet at the boundary may count on one side only.
PML builds every candidate triplet's index (O(N^3) memory), so its process runs under an address
space limit of --peer-cap-gb above what it has mapped after its imports (RLIMIT_AS): a size that
needs more fails inside that process with an allocation error and is reported as over the cap,
instead of taking a shared machine's memory; above --peer-max it is not started at all.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from miner_memory import CLASSES, DIM, gib, rss  # noqa: E402

from tgan.losses.triplet import triplet_loss  # noqa: E402

MINERS = ("all", "semihard", "hard")
MARGIN = 1.0


def pml_loss(miner: str):
    """PML's loss and miner computing tgan's hinge form (see the module docstring)."""
    from pytorch_metric_learning import losses, miners, reducers
    from pytorch_metric_learning.distances import LpDistance

    distance = LpDistance(normalize_embeddings=False)
    loss = losses.TripletMarginLoss(margin=MARGIN, distance=distance, reducer=reducers.MeanReducer())
    mine = {"all": None, "semihard": miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard",
                                                              distance=distance),
            "hard": miners.BatchHardMiner(distance=distance)}[miner]

    def run(emb, labels):
        triplets = mine(emb, labels) if mine is not None else None
        count = len(triplets[0]) if triplets is not None else None
        return loss(emb, labels, triplets), count

    return run


def one_case(impl: str, n: int, miner: str, cap_gb: float) -> dict:
    """Run one point in this process: {'seconds', 'peak', 'loss', 'count'} or {'error'}."""
    torch.set_num_threads(1)
    run = pml_loss(miner) if impl == "pml" else (
        lambda emb, labels: triplet_loss(emb, labels, form="hinge", miner=miner, margin=MARGIN))
    if impl == "pml":  # the cap counts from what the imports mapped, so it bounds mining alone
        mapped = rss("VmSize")
        limit = mapped + int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    gen = torch.Generator().manual_seed(n)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    rows = torch.randn(n, DIM, generator=gen)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM: the imports' own peak must not hide mining's
    before = rss()
    times = []
    try:
        for _ in range(2):
            emb = rows.clone().requires_grad_()
            start = time.perf_counter()
            loss, count = run(emb, labels)
            loss.backward()
            times.append(time.perf_counter() - start)
    except (RuntimeError, MemoryError) as e:  # the allocator's "can't allocate memory" under the cap
        return {"error": f"over the {cap_gb:g} GiB cap ({type(e).__name__})", "peak": rss("VmHWM") - before}
    return {"seconds": min(times), "peak": max(rss("VmHWM") - before, 0), "loss": loss.item(),
            "count": count}


def run_case(impl: str, n: int, miner: str, cap_gb: float) -> dict:
    done = subprocess.run([sys.executable, __file__, "--case", impl, str(n), miner, str(cap_gb)],
                          capture_output=True, text=True)
    if done.returncode != 0:  # killed (the kernel's OOM killer) or crashed: a row, not a lost run
        return {"error": f"process ended with {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cells(r: dict | None) -> str:
    if r is None:
        return "not run | -"
    if "error" in r:
        return f"{r['error']} | -"
    return f"{r['seconds']:.2f} s | {gib(r['peak'])}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--peer-max", type=int, default=2048, help="largest N PML is started at")
    p.add_argument("--peer-cap-gb", type=float, default=8.0, help="address space PML's process may add, GiB")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "miner_peer.md"))
    p.add_argument("--case", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        impl, n, miner, cap = args.case
        print(json.dumps(one_case(impl, int(n), miner, float(cap))))
        return

    import pytorch_metric_learning

    rows = ["| N | miner | tgan: time | tgan: peak | PML: time | PML: peak | PML / tgan time | "
            "triplets tgan / PML | loss tgan / PML |", "|---|---|---|---|---|---|---|---|---|"]
    for n in args.sizes:
        for miner in MINERS:
            ours = run_case("tgan", n, miner, args.peer_cap_gb)
            peer = run_case("pml", n, miner, args.peer_cap_gb) if n <= args.peer_max else None
            both = peer is not None and "error" not in peer and "error" not in ours
            ratio = f"{peer['seconds'] / ours['seconds']:.1f}x" if both else "-"
            count = f"{ours['count']} / {peer['count'] if peer['count'] is not None else 'all'}" if both else "-"
            loss = f"{ours['loss']:.5f} / {peer['loss']:.5f}" if both else "-"
            rows.append(f"| {n} | {miner} | {cells(ours)} | {cells(peer)} | {ratio} | {count} | {loss} |")
            print(rows[-1], flush=True)
    load = os.getloadavg()
    text = "\n".join([
        "# Triplet mining: tgan's chunked miners vs pytorch-metric-learning, time and peak memory", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one torch thread per "
        f"process, torch {torch.__version__}, pytorch-metric-learning {pytorch_metric_learning.__version__}; "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} when done (shared machine: times are "
        f"noisy, memory is not); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Command: `python benchmarks/miner_peer.py --sizes {' '.join(map(str, args.sizes))} "
        f"--peer-max {args.peer_max} --peer-cap-gb {args.peer_cap_gb:g}`", "",
        f"Every (anchor, positive, negative) over all N anchors, {DIM}-dim rows, {CLASSES} classes drawn uniformly, "
        f"hinge form with margin {MARGIN:g}, mean over the mined triplets, forward + backward; fresh process per "
        "cell, faster of two runs; peak = high-water RSS above the process's RSS before mining. "
        "PML's `all` row mines inside the loss (count shown as 'all').", "",
        *rows, ""])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
