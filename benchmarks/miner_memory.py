"""Triplet mining: peak memory and forward+backward time, the dense miner (before issue 13) against
the chunked one, side by side in one run.

    python benchmarks/miner_memory.py [--sizes 512 1024 2048 4096] [--old-max 1024]
                                      [--one-process-max 2048] [--out benchmarks/results/miner.md]

For each global labelled batch N (10 classes drawn uniformly, as CIFAR-10's labelled stream; the
CIFAR-10 tribigan recipe's 100-dim E(x)) and the `all` and `semihard` miners (`hard` was O(N^2)
already) it times, each case in a fresh process with one torch thread (peak = the process's
high-water RSS minus its RSS before mining):
- old:       the dense miner (tests/dense_triplet.py) on all N rows, where it fits (N <= --old-max);
             above that its measured ~3.2 N^3 / ~4 N^3 bytes (issue 13) are shown as an estimate;
- new, 1 process: the chunked miner mining all N anchors, as one process with the whole batch does
             (N <= --one-process-max: its time grows as N^3, ~6 min for N = 4096 on an idle core);
- new, per rank: one rank's share of a DDP run with 32 labelled rows per rank (the recipe's
             data.labelled_batch_size): 32 anchors against the N gathered rows.
Then it puts the per-rank mining beside the CIFAR-10 tribigan step on a GPU, estimated from FLOPs
(no GPU was available): the step's FLOPs are counted (torch.utils.flop_counter) on one rank's batch,
and divided by a third of an H100 SXM's dense bf16 peak (989 TFLOP/s), the utilisation issue 13
assumes; mining is elementwise and memory-bound, so its GPU time is its bytes moved over HBM3
bandwidth (3.35 TB/s) in eager PyTorch, and its arithmetic over the fp32 vector peak (67 TFLOP/s)
once fused (torch.compile).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the dense miner is the tests' reference

from dense_triplet import dense_triplet_loss  # noqa: E402
from tgan.losses.mining import dense_mining_bytes, mining_memory_bytes  # noqa: E402
from tgan.losses.triplet import _Positives, triplet_loss, triplet_sum  # noqa: E402

DIM, CLASSES, PER_RANK = 100, 10, 32
H100_BF16, H100_HBM, H100_FP32 = 989e12, 3.35e12, 67e12
BYTES_MOVED = {"all": 32, "semihard": 42}
"""Bytes read+written per candidate triplet by the eager passes (gap, loss term, sum; backward:
the term's gradient and two reductions; semihard adds two comparisons and a select)."""
FLOPS_FUSED = 25
"""Arithmetic per candidate triplet, forward and backward, in one fused kernel (subtract, softplus =
exp + log1p, its derivative, two accumulations; transcendental ops counted as ~4 FLOPs)."""


def rss(field: str = "VmRSS") -> int:
    """This process's resident set (VmRSS) or its high-water mark (VmHWM), in bytes. (Not
    getrusage's ru_maxrss: Linux carries it over from the parent through fork and exec.)"""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def one_case(impl: str, n: int, miner: str) -> dict:
    """Run one case in this process: {'peak': bytes, 'seconds': s, 'candidates': elements}."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(n)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    emb = torch.randn(n, DIM, generator=gen).requires_grad_()
    anchors = torch.arange(n) if impl != "rank" else torch.arange(PER_RANK)
    candidates = len(anchors) * _Positives(labels, anchors).width * n
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS: the imports' own peak must not hide mining's
    before = rss()
    start = time.perf_counter()
    if impl == "old":
        loss, _ = dense_triplet_loss(emb, labels, form="softmax", miner=miner, margin=1.0)
    elif impl == "new":
        loss, _ = triplet_loss(emb, labels, form="softmax", miner=miner, margin=1.0)
    else:
        total, count = triplet_sum(emb, labels, anchors, form="softmax", miner=miner, margin=1.0)
        loss = total / count
    loss.backward()
    seconds = time.perf_counter() - start
    peak = rss("VmHWM") - before
    return {"peak": max(peak, 0), "seconds": seconds, "candidates": candidates}


def rank_case(n: int, miner: str, reps: int = 10, device: str = "cuda") -> dict:
    """One rank's mining (32 anchors against all N rows) forward+backward on `device`: the median of
    `reps` timed repetitions after two warm-ups, and (on a GPU) the peak memory the caching allocator
    saw (also used by benchmarks/gpu_suite.py, on either device)."""
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gen = torch.Generator().manual_seed(n)
    labels = torch.randint(0, CLASSES, (n,), generator=gen).to(device)
    emb = torch.randn(n, DIM, generator=gen).to(device).requires_grad_()
    anchors = torch.arange(PER_RANK, device=device)
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    for i in range(reps + 2):
        sync()
        start = time.perf_counter()
        total, count = triplet_sum(emb, labels, anchors, form="softmax", miner=miner, margin=1.0)
        (total / count).backward()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - start)
        emb.grad = None
    return {"seconds": sorted(times)[len(times) // 2],
            "peak": torch.cuda.max_memory_allocated() - before if cuda else None}


def gpu_main(sizes: list[int], step_ms: float | None, out: Path) -> None:
    """The per-rank mining of each size measured on this machine's GPU, beside a measured step."""
    rows = ["| N | miner | per rank on the GPU: time | peak GPU memory | of the step |", "|---|---|---|---|---|"]
    for n in sizes:
        for miner in ("all", "semihard"):
            r = rank_case(n, miner)
            share = f"{100 * r['seconds'] * 1e3 / step_ms:.1f}%" if step_ms else "-"
            rows.append(f"| {n} | {miner} | {r['seconds'] * 1e3:.2f} ms | {gib(r['peak'])} | {share} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        "# Triplet miner on a GPU: one rank's mining (32 anchors) against N gathered rows", "",
        f"Machine: {torch.cuda.get_device_name(0)}, torch {torch.__version__}; eager PyTorch, fp32, "
        f"forward + backward, median of 10 after 2 warm-ups.",
        f"Command: `python benchmarks/miner_memory.py --gpu --sizes {' '.join(map(str, sizes))}"
        + (f" --gpu-step-ms {step_ms}`; the step is the CIFAR-10 tribigan recipe's DDP step measured by "
           "benchmarks/ray_throughput.py on the same card in the same session." if step_ms else "`"), "",
        *rows, ""])
    out.write_text(text)
    print(text)


def run_case(impl: str, n: int, miner: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", impl, str(n), miner], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def step_flops() -> float:
    """FLOPs of one CIFAR-10 tribigan step on one rank (64 unlabelled + 32 labelled 32x32 RGB images,
    paper-width nets): the D phase (G, E without gradients, D forward+backward on real and fake) and
    the G/E phase (G, E, D forward+backward, plus E on the labelled batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from tgan.models.dcgan import Generator
    from tgan.models.networks import Encoder, JointDiscriminator

    g, e, d = Generator(100, 3, 32, 1.0), Encoder(3, 32, 1.0, 100), JointDiscriminator(3, 32, 1.0, 100)
    x, z, xl = torch.randn(64, 3, 32, 32), torch.randn(64, 100), torch.randn(32, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            ex, gz = e(x), g(z)
        (d(x, ex).sum() + d(gz, z).sum()).backward()
        (d(x, e(x)).sum() + d(g(z), z).sum() + e(xl).sum()).backward()
    return float(counter.get_total_flops())


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**27 else f"{b / 2**20:.0f} MiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--old-max", type=int, default=1024, help="largest N the dense miner is run at")
    p.add_argument("--one-process-max", type=int, default=2048,
                   help="largest N the chunked miner is run at over all N anchors")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "miner.md"))
    p.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--gpu", action="store_true", help="time one rank's mining on this machine's GPU instead")
    p.add_argument("--gpu-step-ms", type=float, default=None, help="a measured training step to compare with")
    args = p.parse_args()
    if args.gpu:
        gpu_main(args.sizes, args.gpu_step_ms, ROOT / "benchmarks" / "results" / "miner_gpu.md")
        return
    if args.case:
        impl, n, miner = args.case
        print(json.dumps(one_case(impl, int(n), miner)))
        return

    flops = step_flops()
    step_s = flops / (H100_BF16 / 3)
    rows = ["| N | miner | old: peak | old: time | new, 1 process: peak | new, 1 process: time | "
            "new, per rank (32 anchors): peak | per rank: time (CPU) | per rank: bound (--dry-run) | "
            "per rank on H100, eager / fused | of the GPU step, eager / fused |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in args.sizes:
        for miner in ("all", "semihard"):
            if n <= args.old_max:
                old = run_case("old", n, miner)
                old_cells = f"{gib(old['peak'])} | {old['seconds']:.2f} s"
            else:
                old_cells = f"~{gib(dense_mining_bytes(n, miner))} (estimate, not run) | -"
            if n <= args.one_process_max:
                new = run_case("new", n, miner)
                new_cells = f"{gib(new['peak'])} | {new['seconds']:.2f} s"
            else:
                new_cells = "not run (N^3 time) | -"
            rank = run_case("rank", n, miner)
            eager = rank["candidates"] * BYTES_MOVED[miner] / H100_HBM
            fused = rank["candidates"] * FLOPS_FUSED / H100_FP32
            rows.append(f"| {n} | {miner} | {old_cells} | {new_cells} | "
                        f"{gib(rank['peak'])} | {rank['seconds']:.2f} s | "
                        f"{gib(mining_memory_bytes(n, PER_RANK, DIM, miner))} | "
                        f"{eager * 1e6:.0f} / {fused * 1e6:.1f} us | "
                        f"{100 * eager / step_s:.1f}% / {100 * fused / step_s:.2f}% |")
            print(rows[-1], flush=True)
    load = os.getloadavg()
    text = "\n".join([
        "# Triplet miner: dense (before issue 13) vs chunked, peak memory and time",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one torch thread, "
        f"torch {torch.__version__}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "(shared machine: times are noisy, memory is not).",
        f"Command: `python benchmarks/miner_memory.py --sizes {' '.join(map(str, args.sizes))} "
        f"--old-max {args.old_max} --one-process-max {args.one_process_max}`",
        "",
        f"Embeddings {DIM}-dim, {CLASSES} classes drawn uniformly, softmax form, forward + backward. "
        "Peak = high-water RSS (VmHWM, reset just before mining) of a fresh process minus its RSS before mining.",
        "",
        *rows,
        "",
        f"GPU step (estimate, no GPU here): one rank's CIFAR-10 tribigan step (64 + 32 images, paper width) "
        f"is {flops / 1e9:.0f} GFLOP (torch.utils.flop_counter), {flops / 96e9:.1f} GFLOP per image; at a "
        f"third of an H100 SXM's dense bf16 peak that is {step_s * 1e3:.2f} ms per step. Mining per rank on "
        f"the GPU: candidate triplets x {BYTES_MOVED['all']} (all) / {BYTES_MOVED['semihard']} (semihard) "
        f"bytes over {H100_HBM / 1e12:.2f} TB/s eagerly, or x {FLOPS_FUSED} FLOPs over "
        f"{H100_FP32 / 1e12:.0f} TFLOP/s fp32 when fused into one kernel.",
        "",
    ])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
