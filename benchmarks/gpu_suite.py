"""The device benchmark: one command measures the recipes' training step on one GPU, each
configuration in a fresh process, so that one failure is a row of the table and the rest still run.

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu_<card>.md      # ~5 min on one GPU, <= 8
    python benchmarks/gpu_suite.py --device cpu --quick --out /tmp/gpu_suite.md  # the suite's smoke run

Configurations (--configs; the defaults depend on --device):
- `<recipe>/<backend>-<precision>[-memory]`: the CIFAR-10 tribigan and CelebA MBGAN recipes
  (launch/recipes/cifar10_tribigan.yaml, celeba_mbgan.yaml) at their per-rank batch, image size and
  widths, on SYNTHETIC shards of the recipe's shape (random images, 10 random classes; written once
  into --work); backend ddp (tgan's TorchBackend: on one GPU there is no DDP wrapper, it wraps only
  with more than one rank) or deepspeed (cluster/deepspeed_backend.py, ZeRO-1, on a one-rank process
  group: nccl on a GPU, gloo on the CPU); precision fp32 or bf16 (train.precision=bf16 autocast for
  ddp, cluster.deepspeed.bf16 for deepspeed); `-memory` sets data.mode=memory (the data set decoded
  once onto the device) instead of the loader's stream.
- `miner/<all|semihard>`: one rank's mining, 32 anchors against N = 4096 gathered rows (the
  per-rank view of 128 GPUs), benchmarks/miner_memory.py's rank_case.
- `matmul/bf16`: the card's measured bf16 matmul FLOP/s (benchmarks/ray_throughput.py).

A recipe configuration builds the training step from tgan's own parts (build_streams, the family's
networks and loss, the backend, the loop's PhaseRunner and batch fetch), runs --warmup steps, one
step under torch.utils.flop_counter (matmuls and convolutions, forward and backward), then times
--steps steps with the device synchronised around each part:
- data: the next batch from the streams, on the device;
- optimizer: the optimizers' step() (global optimizer hooks; DeepSpeed's own work around it, the
  bf16 master copy and clipping, counts as forward-backward);
- mining: the recipe's global_triplet_loss (gather + mining, forward and backward) on a labelled
  batch of its shape, timed on its own (mining runs inside the phase's forward) x the calls per step;
- forward-backward: the rest (forward, backward, gradient norms, the finite check).
images/s = per-rank batch / median step; TFLOP/s = counted FLOPs / median step, as a share of the
card's published dense bf16 peak (BF16_PEAKS; an unknown card says so). Peak memory: the CUDA caching
allocator's high-water mark of the whole process (CPU: the process's peak RSS).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook  # noqa: E402

RECIPES = {"cifar10_tribigan": ROOT / "launch" / "recipes" / "cifar10_tribigan.yaml",
           "celeba_mbgan": ROOT / "launch" / "recipes" / "celeba_mbgan.yaml"}
CUDA_CONFIGS = [f"{r}/{s}" for r in RECIPES for s in ("ddp-fp32", "ddp-bf16", "deepspeed-bf16", "ddp-bf16-memory")] \
    + ["miner/all", "miner/semihard", "matmul/bf16"]
CPU_CONFIGS = ["cifar10_tribigan/ddp-fp32", "cifar10_tribigan/deepspeed-fp32", "celeba_mbgan/ddp-fp32-memory",
               "miner/all"]
"""--device cpu: every code path of the GPU list once (loader and memory data, both backends, both
families, the miner); bf16 needs the GPU (DeepSpeed refuses it on CPU, autocast would be emulated)."""
BF16_PEAKS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
"""Published dense (no sparsity) bf16 tensor-core peaks, by a part of the device name, first match
wins: H100 SXM and H200 989 TFLOP/s, H100 PCIe 756, H100 NVL 835, A100 312."""
MINER_ROWS = 4096
SYNTHETIC_IMAGES = {"cifar10_tribigan": 8000, "celeba_mbgan": 4096}
"""Synthetic training images per recipe: enough for CIFAR-10's 400 labels per class and for the
timed steps to stay inside one pass of the loader."""


def synthetic_dir(recipe: str, args) -> Path:
    """Where a recipe's synthetic shards live: <--work>/<recipe>-<images> (ray_throughput.synthetic_shards
    writes <that>-synthetic), so a --quick set is never taken for the full one."""
    return Path(args.work) / f"{recipe}-{512 if args.quick else SYNTHETIC_IMAGES[recipe]}"


def bf16_peak(name: str) -> float | None:
    return next((peak for part, peak in BF16_PEAKS if part in name), None)


class OptimizerTimer:
    """Time spent in every optimizer's step() (torch's global optimizer hooks, which also see the
    torch Adam inside DeepSpeed's wrappers), the device synchronised at each boundary."""

    def __init__(self, sync):
        self.sync, self.seconds, self._opened = sync, 0.0, 0.0
        register_optimizer_step_pre_hook(self._open)
        register_optimizer_step_post_hook(self._close)

    def _open(self, *_):
        self.sync()
        self._opened = time.perf_counter()

    def _close(self, *_):
        self.sync()
        self.seconds += time.perf_counter() - self._opened


def overrides(recipe: str, setup: str, device: str, shards: str, out_dir: str, quick: bool) -> list[str]:
    """The recipe's dotted overrides for one configuration, e.g. setup "deepspeed-bf16-memory"."""
    backend, precision, *rest = setup.split("-")
    if backend not in ("ddp", "deepspeed") or precision not in ("fp32", "bf16") or rest not in ([], ["memory"]):
        raise ValueError(f"configuration {recipe}/{setup}: expected <ddp|deepspeed>-<fp32|bf16>[-memory]")
    more = [f"data.shards={shards}", f"train.device={device}", f"train.out_dir={out_dir}", "data.validation_size=0",
            "eval.every=0", "cluster.num_workers=1", f"cluster.use_gpu={str(device == 'cuda').lower()}",
            f"data.mode={'memory' if rest else 'stream'}"]
    if quick:  # the recipe's shapes, narrow nets, no loader workers: seconds on a CPU
        more += ["model.width=0.125", "data.num_workers=0", "data.labels_per_class=20"]
    if backend == "deepspeed":
        more += ["cluster.backend=deepspeed", "cluster.deepspeed.zero_optimization.stage=1",
                 f"cluster.deepspeed.bf16.enabled={str(precision == 'bf16').lower()}"]
    elif precision == "bf16":
        more.append("train.precision=bf16")
    return more


def recipe_case(recipe: str, setup: str, args) -> dict:
    """Build one recipe's training step with tgan's parts and time it (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    from miner_memory import rss
    from tgan.config import load_config
    from tgan.data.streams import build_streams
    from tgan.dist import resolve_device
    from tgan.families import get_family
    from tgan.families.base import build_networks
    from tgan.losses.mining import global_triplet_loss
    from tgan.train.backend import TorchBackend
    from tgan.train.loop import PhaseRunner, _next_batch

    shards = f"{synthetic_dir(recipe, args)}-synthetic"
    cfg = load_config(RECIPES[recipe], overrides(recipe, setup, args.device, shards,
                                                 str(Path(args.work) / "out" / recipe), args.quick))
    device = resolve_device(cfg.train.device)  # cuda:LOCAL_RANK (0 here), as the loop picks it
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    streams = build_streams(cfg.data, rank=0, world_size=1, seed=cfg.train.seed, device=device)
    index = streams.index
    family = get_family(cfg.model.family)
    nets = build_networks(cfg, channels=index.channels, image_size=index.image_size, num_classes=index.num_classes)
    for net in nets.values():
        net.to(device).train()
    if cfg.cluster.backend == "deepspeed":
        from cluster.deepspeed_backend import DeepSpeedBackend

        backend = DeepSpeedBackend(cfg.cluster.deepspeed, batch_size=cfg.data.batch_size)
    else:
        backend = TorchBackend.for_config(cfg)
    timer = OptimizerTimer(sync)
    backend.setup(nets, family.groups_in_order, cfg.optim, device)
    run_phase = PhaseRunner(backend, family.make_loss(cfg.loss, cfg.model, index.num_classes), list(nets))

    def one_step() -> dict:
        sync()
        start = time.perf_counter()
        batch = _next_batch(streams, device)
        sync()
        fetched = time.perf_counter()
        timer.seconds = 0.0
        mined = 0
        for group in family.groups_in_order:
            for _ in range(group.steps(cfg.loss)):
                scalars, _ = run_phase(group, batch)
                mined += "triplets" in scalars  # one global_triplet_loss call in this phase
        sync()
        return {"total": time.perf_counter() - start, "data": fetched - start, "optimizer": timer.seconds,
                "mined": mined}

    for _ in range(args.warmup):
        one_step()
    try:  # FLOPs are the same for every backend and precision: a counter that trips on one is no lost row
        with FlopCounterMode(display=False) as counter:
            mined = one_step()["mined"]
        flops = counter.get_total_flops()
    except Exception as e:  # noqa: BLE001
        print(f"FLOP count failed ({type(e).__name__}: {e}); timing without it", file=sys.stderr, flush=True)
        flops, mined = None, one_step()["mined"]
    steps = [one_step() for _ in range(args.steps)]

    mining = 0.0
    if mined:  # the recipe's mining on its own: a labelled batch of the recipe's shape
        gen = torch.Generator().manual_seed(0)
        emb = torch.randn(cfg.data.labelled_batch_size, cfg.model.latent_dim, generator=gen).to(device)
        labels = torch.randint(0, index.num_classes, (cfg.data.labelled_batch_size,), generator=gen).to(device)
        emb.requires_grad_()
        times = []
        for i in range(args.steps + 2):
            sync()
            start = time.perf_counter()
            loss, _ = global_triplet_loss(emb, labels, form=cfg.loss.triplet_form, miner=cfg.loss.miner,
                                          margin=cfg.loss.triplet_margin)
            loss.backward()
            sync()
            if i >= 2:
                times.append(time.perf_counter() - start)
        mining = median(times) * mined
    streams.close()
    step = median([s["total"] for s in steps])
    return {"images_per_s": cfg.data.batch_size / step, "step_s": step, "data_s": median([s["data"] for s in steps]),
            "optimizer_s": median([s["optimizer"] for s in steps]), "mining_s": mining if mined else None,
            "fwd_bwd_s": median([s["total"] - s["data"] - s["optimizer"] for s in steps]) - mining,
            "flops": flops, "peak_bytes": torch.cuda.max_memory_allocated() if cuda else rss("VmHWM"),
            "batch": cfg.data.batch_size, "labelled": cfg.data.labelled_batch_size}


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def run_case(name: str, args) -> dict:
    """One configuration, in this process (the child)."""
    kind, _, what = name.partition("/")
    if args.device == "cpu":
        torch.set_num_threads(1)
    if kind in RECIPES:
        return recipe_case(kind, what, args)
    if kind == "miner":
        from miner_memory import rank_case

        rows = 512 if args.quick else MINER_ROWS
        return {"rows": rows, **rank_case(rows, what, reps=2 if args.quick else 10, device=args.device)}
    if kind == "matmul":
        from ray_throughput import bf16_matmul_peak

        return {"flops_per_s": bf16_matmul_peak()}
    raise ValueError(f"configuration {name!r} is unknown: expected <recipe>/<setup> with recipe one of "
                     f"{sorted(RECIPES)}, miner/<all|semihard> or matmul/bf16")


def run_child(name: str, args, log_dir: Path, timeout: float) -> dict:
    """Run one configuration in a fresh process (its own session, so a timeout also ends its loader
    workers); its JSON, or {'error': the last line it printed to stderr}."""
    env = dict(os.environ)
    if args.device == "cuda":
        env.pop("DS_ACCELERATOR", None)  # DeepSpeed must detect CUDA itself
    else:
        env["DS_ACCELERATOR"] = "cpu"  # or DeepSpeed probes for CUDA
    stem = log_dir / name.replace("/", "_")
    cmd = [sys.executable, __file__, "--case", name, "--device", args.device, "--work", args.work,
           "--steps", str(args.steps), "--warmup", str(args.warmup), *(["--quick"] if args.quick else [])]
    with open(f"{stem}.out", "w") as out, open(f"{stem}.err", "w") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return {"error": f"still running after {timeout:.0f} s (--case-timeout-s, --budget-s): killed"}
    lines = Path(f"{stem}.out").read_text().strip().splitlines()
    if code == 0 and lines:
        return json.loads(lines[-1])
    errors = [line for line in Path(f"{stem}.err").read_text().strip().splitlines() if line.strip()]
    return {"error": (errors[-1] if errors else f"exit status {code}")[:300]}


def ms(value) -> str:
    return "-" if value is None else f"{1e3 * value:.2f}"


def scaled(value, unit: float, digits: int) -> str:
    return "-" if value is None else f"{value / unit:.{digits}f}"


def size(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB" if b >= 2**28 else f"{b / 2**20:.0f} MiB"


def table(results: dict[str, dict], peak: float | None) -> list[str]:
    lines = ["| configuration | images/s | step (ms) | data (ms) | fwd-bwd (ms) | mining (ms) | optimizer (ms) "
             "| GFLOP/step | TFLOP/s | of bf16 peak | peak memory |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    other = ["", "| configuration | result |", "|---|---|"]
    for name, r in results.items():
        if name.split("/")[0] in RECIPES:
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error'].replace('|', '/')} | | | | | | | | | |")
                continue
            achieved = r["flops"] / r["step_s"] if r["flops"] else None
            share = "-" if achieved is None else f"{100 * achieved / peak:.1f}%" if peak else "unknown peak"
            lines.append(f"| {name} | {r['images_per_s']:.0f} | {ms(r['step_s'])} | {ms(r['data_s'])} | "
                         f"{ms(r['fwd_bwd_s'])} | {ms(r['mining_s'])} | {ms(r['optimizer_s'])} | "
                         f"{scaled(r['flops'], 1e9, 1)} | {scaled(achieved, 1e12, 2)} | {share} | {size(r['peak_bytes'])} |")
        elif "error" in r:
            other.append(f"| {name} | failed: {r['error'].replace('|', '/')} |")
        elif name.startswith("miner/"):
            other.append(f"| {name} | 32 anchors x {r['rows']} rows, forward + backward: {ms(r['seconds'])} ms, "
                         f"peak {size(r['peak'])} |")
        else:
            other.append(f"| {name} | {r['flops_per_s'] / 1e12:.0f} TFLOP/s (8192^3 bf16 products)"
                         + (f", {100 * r['flops_per_s'] / peak:.0f}% of the published peak |" if peak else " |"))
    ratios = []
    for name, r in results.items():
        loader = name.removesuffix("-memory")
        if name.endswith("-memory") and "error" not in r and "error" not in results.get(loader, {"error": 1}):
            ratios.append(f"- data.mode=memory vs the loader, {loader}: {r['images_per_s']:.0f} vs "
                          f"{results[loader]['images_per_s']:.0f} images/s, data {ms(r['data_s'])} vs "
                          f"{ms(results[loader]['data_s'])} ms per step")
        if r.get("mining_s") and "error" not in r:
            ratios.append(f"- mining in {name}: {100 * r['mining_s'] / r['step_s']:.1f}% of the step")
    return lines + (other if len(other) > 3 else []) + ([""] + ratios if ratios else [])


def write(out: Path, args, results: dict, started: float) -> None:
    cuda = args.device == "cuda"
    card = torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine()
    peak = bf16_peak(card) if cuda else None
    try:
        ds = importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        ds = "not installed"
    load = os.getloadavg()
    peak_line = (f"published dense bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else
                 "no published bf16 peak known for this device: shares of peak are not given")
    text = "\n".join([
        f"# Training step on one device: {card}", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.monotonic() - started:.0f} s for the suite",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs, load average {load[0]:.1f}; torch {torch.__version__}, "
        f"deepspeed {ds}; {peak_line}",
        f"- command: `python benchmarks/gpu_suite.py --device {args.device}{' --quick' if args.quick else ''} "
        f"--steps {args.steps} --warmup {args.warmup} --out {args.out}`",
        "- data: SYNTHETIC random images of each recipe's shape (throughput only); per-rank batch and "
        "nets of the recipe" + (" (--quick: width 0.125, no loader workers)" if args.quick else ""),
        "- one rank: `ddp` runs tgan's TorchBackend without a DDP wrapper (it wraps only with more than one "
        "rank; collectives: docs/SCALING.md), `deepspeed` a one-rank ZeRO-1 engine per optimizer group", "",
        *table(results, peak), ""])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="markdown table to write, e.g. benchmarks/results/gpu_h100.md (required)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="narrow nets, few steps: a smoke run (the tests' mode)")
    p.add_argument("--configs", nargs="+", help="configurations to run (default: all for --device)")
    p.add_argument("--steps", type=int, help="timed steps per configuration (default 100; --quick 3)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 20; --quick 1)")
    p.add_argument("--work", default=str(ROOT / "runs" / "gpu_suite"), help="synthetic shards and logs")
    p.add_argument("--budget-s", type=float, default=460,
                   help="the whole suite's time limit: no configuration runs past it (default 7 min 40 s)")
    p.add_argument("--case-timeout-s", type=float, default=150, help="one configuration's time limit")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or (3 if args.quick else 100)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 20)
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return 0
    if not args.out:
        p.error("--out is required: the markdown file to write, e.g. benchmarks/results/gpu_h100.md")

    from ray_throughput import synthetic_shards

    from tgan.config import load_config

    started = time.monotonic()
    configs = args.configs or (CUDA_CONFIGS if args.device == "cuda" else CPU_CONFIGS)
    log_dir = Path(args.work) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for recipe in sorted({c.split("/")[0] for c in configs} & set(RECIPES)):
        cfg = load_config(RECIPES[recipe], [f"data.shards={synthetic_dir(recipe, args)}"])
        synthetic_shards(cfg, train=512 if args.quick else SYNTHETIC_IMAGES[recipe], test=64)
    results: dict[str, dict] = {}
    for name in configs:
        left = args.budget_s - (time.monotonic() - started)
        if left < 20:
            results[name] = {"error": f"not started: --budget-s {args.budget_s:g} spent"}
        else:
            results[name] = run_child(name, args, log_dir, min(args.case_timeout_s, left))
        print(f"{name}: {results[name]}", flush=True)
        write(Path(args.out), args, results, started)  # after every row: a killed suite keeps what it measured
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
