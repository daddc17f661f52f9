"""The training loop: one step = every optimizer group of the family in its order, each phase run
once (discriminator role) or `loss.g_steps_per_d_step` times (generator role), all on the same real
batch (Algorithm 1 of the MBGAN paper draws only new z for the G steps; the loss draws z itself).
The loop never knows which family it trains: the family (tgan/families/) gives the networks, the
optimizer groups and their loss phases; the backend does backward and the optimizer steps.

Runs in one process or on every rank of a torch.distributed process group (the backend wraps the
trained networks in DDP); everything rank-dependent goes through tgan.dist.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from tgan import dist, runinfo
from tgan.config import Config, ConfigError, dump_yaml
from tgan.data.index import DataError
from tgan.data.streams import build_streams
from tgan.eval.metrics import check_gallery
from tgan.eval.validation import LOWER_IS_BETTER, LiveValidation, check_best_metric
from tgan.families import get_family
from tgan.families.base import Group, build_networks
from tgan.losses.base import Batch, to_floats
from tgan.progress import Progress
from tgan.runlock import LockError
from tgan.train import checkpoint as ckpt
from tgan.train import resume as resume_lib
from tgan.train.backend import Backend, TorchBackend
from tgan.train.checkpoint import CheckpointError
from tgan.train.ema import WeightAverage
from tgan.train.shards import ensure_shards

Reporter = Callable[[int, dict[str, float], "Path | None"], None]


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


USER_ERRORS = (ConfigError, DataError, FileNotFoundError, NonFiniteError, CheckpointError, LockError)
"""What train() raises about the user's settings or data: the message says what to change, so the
command lines print it as one line (cluster/ also unwraps it from Ray's worker errors)."""


@dataclass
class TrainResult:
    step: int
    """The last completed step: train.steps, fewer when train.time_limit_s ran out, more when the
    resumed run was already further along."""
    scalars: dict[str, float]
    """The last step's scalars (losses, grad norms, perf, counters)."""
    checkpoint: Path | None
    """The last checkpoint written or resumed from."""
    nets: dict[str, nn.Module]
    """The networks to evaluate: the raw trained ones, or their average with train.ema_decay."""
    interrupted: bool = False
    """Stopped early because `stop` was set (Ctrl-C), after writing a checkpoint."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_deterministic_kernels() -> None:
    """Bit-for-bit repeatable GPU runs (train.deterministic): no run-dependent cuDNN/cuBLAS algorithms."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS first starts
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


class PhaseRunner:
    """Runs one optimizer step of a group: trained networks wrapped, the others raw and frozen."""

    def __init__(self, backend: Backend, loss_fn, names: list[str]):
        self.backend, self.loss_fn, self.names = backend, loss_fn, names

    def __call__(self, group: Group, batch: Batch):
        trained = group.networks
        frozen = [self.backend.raw(n) for n in self.names if n not in trained]
        flags = [[p.requires_grad for p in net.parameters()] for net in frozen]
        for net in frozen:
            net.requires_grad_(False)
        try:
            nets = {n: self.backend.module(n) if n in trained else self.backend.raw(n) for n in self.names}
            with self.backend.autocast():
                loss, scalars = group.phase(self.loss_fn, nets, batch)
            result = self.backend.step(group.name, loss)
        finally:
            for net, saved in zip(frozen, flags):
                for p, flag in zip(net.parameters(), saved):
                    p.requires_grad_(flag)
        return scalars, result


def _next_batch(streams, device: torch.device) -> Batch:
    # The data layer's RNG use must not shift the training RNG (z): a DataLoader draws its base seed
    # from the global generator when its iterator starts, which happens at step 1 in a fresh run but
    # at the first step after a resume.
    with torch.random.fork_rng(devices=[]):
        x, y = next(streams.unlabelled)
        xl, yl = next(streams.labelled) if streams.labelled is not None else (None, None)
    move = (lambda t: None if t is None else t.to(device, non_blocking=True))
    return Batch(move(x), move(y), move(xl), move(yl))


def _global_sum(value: int, device: torch.device) -> int:
    if not dist.is_dist():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    torch_dist.all_reduce(t)
    return int(t.item())


def _all_true(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on every rank (so that every rank takes the same decision)."""
    if not dist.is_dist():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
    return bool(t.item())


def _nonfinite_tensor(nets: dict[str, nn.Module]) -> str | None:
    """The first parameter or buffer (e.g. "D.main.0.weight") holding a non-finite value, or None."""
    for name, net in nets.items():
        for key, t in net.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"{name}.{key}"
    return None


def _rank0_says(flag: bool, device: torch.device) -> bool:
    """Rank 0's `flag` on every rank (a decision that only rank 0 can take, taken by all)."""
    t = torch.tensor([float(flag)], device=device)
    if dist.is_dist():
        torch_dist.broadcast(t, src=0)
    return bool(t.item())


def _out_of_time(deadline: float | None, device: torch.device) -> bool:
    """Whether train.time_limit_s has run out, by rank 0's clock, so that every rank stops together."""
    return deadline is not None and _rank0_says(time.monotonic() >= deadline, device)


def _stop_asked(stop: threading.Event | None, device: torch.device) -> bool:
    """Whether `stop` is set (Ctrl-C), by rank 0's, so that every rank stops at the same step."""
    return stop is not None and _rank0_says(stop.is_set(), device)


def _improves_best(out: Path, metric: str, scalars: dict[str, float], weights: str, device: torch.device) -> bool:
    """Whether this validation beats the run's best checkpoint (rank 0 reads best.json; a PBT or
    failure restart keeps the run directory's best, whichever weights it continues from). A best
    scored on another metric (eval.best_metric changed at a resume) or on the other `weights` ("ema"
    or "trained": train.ema_decay switched) does not count."""
    if dist.rank() != 0:
        return _rank0_says(False, device)
    best = ckpt.read_best(out)
    if best is not None and (best.get("weights", "trained") != weights or best["metric"] != metric):
        best = None
    value = scalars[metric]
    better = (lambda a, b: a < b) if metric in LOWER_IS_BETTER else (lambda a, b: a > b)
    return _rank0_says(math.isfinite(value) and (best is None or better(value, best["value"])), device)


def _maybe_fault(cfg: Config, step: int) -> None:
    """train.fault_step: one rank dies once (a marker file remembers it) to exercise restarts."""
    target = 1 if dist.world_size() > 1 else 0
    marker = Path(cfg.train.out_dir) / f".fault_injected_{step}"
    if step == cfg.train.fault_step and dist.rank() == target and not marker.exists():
        marker.touch()
        print(f"train.fault_step={step}: rank {target} exits on purpose", file=sys.stderr, flush=True)
        os._exit(3)


def _trim_metrics(path: Path, last_step: int) -> None:
    """On resume, drop metric lines of steps after the checkpoint: they are about to be redone. A line
    that is not JSON (the writer was killed mid-line) is dropped too, with a note."""
    if not path.is_file():
        return
    kept, broken = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            broken += 1
            continue
        if row["step"] <= last_step:
            kept.append(line)
    if broken:
        print(f"note: {path}: dropped {broken} partial line(s) (a run killed while writing it)", flush=True)
    path.write_text("".join(line + "\n" for line in kept))


def _metrics_line(step: int, scalars: dict[str, float]) -> str:
    """One JSON line; non-finite values (not JSON) become null and are listed under "nonfinite"."""
    bad = sorted(k for k, v in scalars.items() if not math.isfinite(v))
    row = {"step": step, **{k: None if k in bad else v for k, v in scalars.items()}}
    return json.dumps({**row, "nonfinite": bad} if bad else row, allow_nan=False) + "\n"


def train(cfg: Config, *, backend: Backend | None = None, reporter: Reporter | None = None,
          resume_from: str | Path | Iterable[Path] | None = None,
          rank_dir: str | Path | None = None, stop: threading.Event | None = None) -> TrainResult:
    """Train `cfg` on this rank; returns when train.steps steps are done (or train.time_limit_s is up).

    Starts fresh, or continues the run in train.out_dir (see tgan.train.resume: what may change on
    resume, fallback to older checkpoints); `resume_from` is a checkpoint (or several, newest first)
    handed over by a restart (Ray), tried first. Nothing is written into train.out_dir before the start is accepted.
    `reporter(step, scalars, checkpoint_dir_or_None)` is called on every rank at every log step and
    at every checkpoint; rank 0 also appends the scalars to <out_dir>/metrics.jsonl, shows the
    progress (tgan.progress) and records the phases' times in <out_dir>/run.json (tgan.runinfo).
    Checkpoints go to <out_dir>/checkpoints, written by the ranks together, or with `rank_dir` each
    rank's own files into that directory of its own, for the reporter to hand on (Ray Train merges
    them; see checkpoint.save_checkpoint). Once `stop` is set (a Ctrl-C handler) the step under way
    is finished, a checkpoint written and the result says `interrupted`.
    """
    rank, world = dist.rank(), dist.world_size()
    device = dist.resolve_device(cfg.train.device)
    if cfg.train.deterministic:
        use_deterministic_kernels()
    out = Path(cfg.train.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.out_dir={str(out)!r} is a file: give a directory (new or holding a run)")
    t_prep = time.monotonic()
    ensure_shards(cfg.data)

    streams = build_streams(cfg.data, rank=rank, world_size=world, seed=cfg.train.seed,
                            gallery_size=cfg.eval.gallery_size if cfg.eval.every else 0, device=device)
    index = streams.index
    check_gallery(cfg.eval, index.split("train").count, index.location())  # the evaluation after training
    check_best_metric(cfg)
    meta = {"channels": index.channels, "image_size": index.image_size, "num_classes": index.num_classes}
    family = get_family(cfg.model.family)
    # Same initial weights on every rank (DDP would broadcast rank 0's anyway; this keeps W=1 and W>1 equal).
    nets = build_networks(cfg, **meta)
    loss_fn = family.make_loss(cfg.loss, cfg.model, index.num_classes)

    start, counters, last_ckpt, history = 0, {"nonfinite_skipped": 0, "nonfinite_in_row": 0}, None, []
    resumed = resume_lib.open_resume(
        cfg, resume_from, world_size=world, rank=rank, all_ok=lambda ok: _all_true(ok, device),
        report=lambda line: print(line, file=sys.stderr, flush=True))
    if resumed is not None:
        resume_lib.check_meta(resumed.path, resumed.state["meta"], meta)
        for name, net in nets.items():
            net.load_state_dict(resumed.state["nets"][name])
        start, counters, last_ckpt = resumed.step, resumed.state["counters"], resumed.path
        history = resumed.history()
    noop = resumed is not None and start >= cfg.train.steps
    if rank == 0:  # only now that the data, the settings and the checkpoint have been accepted
        out.mkdir(parents=True, exist_ok=True)
        if noop:  # the run's recorded settings stay those it was trained with
            print(f"train.steps={cfg.train.steps}: the run in {out} is already at step {start}, so nothing is "
                  "trained (raise train.steps to continue it)", flush=True)
        else:
            if resumed is None:
                runinfo.archive_unfinished(out)
            dump_yaml(cfg, out / "config.yaml")
            resume_lib.write_history(out, history)
        if cfg.eval.every and (best := ckpt.read_best(out)) is not None and best["metric"] != cfg.eval.best_metric:
            print(f"eval.best_metric changed from {best['metric']} to {cfg.eval.best_metric}: a new best starts "
                  f"(the next validation replaces step {best['step']}'s best checkpoint)", flush=True)
        # Recorded only now, so a refused start leaves no run.json: making the shards, their checks
        # and the labelled scan of build_streams, and building the networks.
        runinfo.record_phase(out, "data_prep", time.monotonic() - t_prep)
    for net in nets.values():
        net.to(device).train()
    backend = backend if backend is not None else TorchBackend.for_config(cfg)
    backend.setup(nets, family.groups_in_order, cfg.optim, device)
    trained = {n: backend.raw(n) for n in nets}  # the backend's own modules (SyncBatchNorm may replace nets')
    ema = None
    if cfg.train.ema_decay > 0:
        ema = WeightAverage({n: net.to(device) for n, net in build_networks(cfg, **meta).items()}, cfg.train.ema_decay)
        if resumed is not None and "ema" in resumed.state:
            ema.load_state_dict(resumed.state["ema"])
        elif resumed is not None:  # switched on at this resume: the average starts from the resumed weights
            ema.update(trained)
    evaluated = ema.nets if ema is not None else trained
    weights = "ema" if ema is not None else "trained"

    seed_everything(dist.rank_seed(cfg.train.seed, rank))
    if resumed is not None:
        backend.load(resumed.path)
        backend.apply_optim(cfg.optim)  # load restored the saved learning rates and betas
        streams.load_state_dict(resumed.rank_state["data"])
        ckpt.set_rng_state(resumed.rank_state["rng"])
        if rank == 0 and not noop:
            _trim_metrics(out / "metrics.jsonl", start)
            changed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in resumed.changes.items())
            print(f"resumed from {resumed.path} at step {start}" + (f"; from step {start + 1}: {changed}"
                                                                    if changed else ""), flush=True)

    run_phase = PhaseRunner(backend, loss_fn, list(nets))
    validation = LiveValidation(cfg, family, streams, device) if cfg.eval.every else None
    scalars: dict[str, float] = {}
    shown: dict[str, float] = {}
    done, stopping = start, False
    t_train = time.monotonic()
    deadline = t_train + cfg.train.time_limit_s if cfg.train.time_limit_s > 0 else None
    progress = (Progress(cfg.train.steps, desc="train", initial=start, images_per_unit=cfg.data.batch_size * world)
                if rank == 0 else None)
    try:
        for step in range(start + 1, cfg.train.steps + 1):
            _maybe_fault(cfg, step)
            scalars, give_up = _train_step(cfg, step, streams, device, run_phase, family.groups_in_order,
                                           counters)
            if ema is not None:
                ema.update(trained)
            done = step
            stopping = _stop_asked(stop, device)
            last = step == cfg.train.steps or stopping or _out_of_time(deadline, device)
            every = cfg.train.checkpoint_every
            is_val = validation is not None and validation.due(step, last)
            is_log = step % cfg.train.log_every == 0 or last or give_up or is_val
            is_ckpt = not give_up and (last or (every > 0 and step % every == 0))
            improved = False
            if not (is_log or is_ckpt):
                if progress is not None:  # the last reported scalars: reading this step's would wait on the device
                    progress.update(step, shown)
                continue
            scalars = shown = to_floats(scalars)  # the phases' scalars stay on the device until a step reports
            if progress is not None:
                progress.update(step, scalars)
            scalars["data/corrupt_samples"] = _global_sum(streams.corrupt_samples, device)
            if is_val:
                scalars.update(validation(evaluated))
                if progress is not None:
                    progress.update(step, scalars)  # a line with the new validation metrics
                improved = not give_up and _improves_best(out, cfg.eval.best_metric, scalars, weights, device)
                is_ckpt = is_ckpt or improved  # the best model must exist as a checkpoint to be kept
            saved_path = None
            if is_ckpt:
                averaged = {f"ema.{n}": net for n, net in ema.nets.items()} if ema is not None else {}
                bad = _nonfinite_tensor(trained | averaged)
                if _all_true(bad is None, device):
                    saved_path = last_ckpt = ckpt.save_checkpoint(
                        out, step, backend=backend, keep=cfg.train.keep_checkpoints, rank_dir=rank_dir,
                        state={"config": cfg.to_dict(), "meta": meta, "counters": dict(counters),
                               "config_history": history, "nets": {n: net.state_dict() for n, net in trained.items()},
                               **({"ema": ema.state_dict()} if ema is not None else {})},
                        rank_state={"rng": ckpt.rng_state(), "data": streams.state_dict()})
                    if improved and rank == 0:
                        metric = cfg.eval.best_metric
                        ckpt.keep_best(out, saved_path, {"step": step, "metric": metric, "weights": weights,
                                                         "mode": "min" if metric in LOWER_IS_BETTER else "max",
                                                         "value": scalars[metric]})
                elif rank == 0 or bad is not None:
                    print(f"step {step}: checkpoint not written: the weights hold non-finite values "
                          f"({bad or 'on another rank'}); the last finite checkpoint is {last_ckpt}",
                          file=sys.stderr, flush=True)
            if is_log and rank == 0:
                with (out / "metrics.jsonl").open("a") as f:
                    f.write(_metrics_line(step, {"time": round(time.time(), 3),
                                                 "elapsed_s": round(time.monotonic() - t_train, 3), **scalars}))
            if reporter is not None:
                reporter(step, scalars, saved_path)
            if give_up:
                where = (f"continue from the last finite checkpoint, {last_ckpt}, by running the same command "
                         "again with a lower optim.lr (a resume applies it)" if last_ckpt is not None else
                         "no finite checkpoint was written: start again with a lower optim.lr")
                raise NonFiniteError(
                    f"{counters['nonfinite_in_row']} steps in a row (up to step {step}) had a non-finite loss or "
                    f"gradient norm and were skipped (train.max_nonfinite_in_row={cfg.train.max_nonfinite_in_row}); "
                    f"last scalars {scalars}: lower optim.lr or set optim.grad_clip; {where}")
            if last and step < cfg.train.steps:
                if rank == 0 and not stopping:
                    print(f"train.time_limit_s={cfg.train.time_limit_s:g} reached: stopped at step {step} "
                          f"of {cfg.train.steps}", flush=True)
                break
    finally:
        streams.close()  # stops the loader's worker processes
        if progress is not None:
            progress.close()
            runinfo.record_phase(out, "training", time.monotonic() - t_train, steps=[start, done],
                                 world_size=world, device=str(device), completed=done >= cfg.train.steps)
    if last_ckpt is None:  # every save was refused (non-finite weights): nothing of this run may be used
        raise NonFiniteError(f"no checkpoint written in {done} steps: the weights held non-finite values at every "
                             "checkpoint (see the lines above); lower optim.lr or set optim.grad_clip and start again")
    return TrainResult(step=done, scalars=scalars, checkpoint=last_ckpt, nets=evaluated,
                       interrupted=stopping and done < cfg.train.steps)


def _train_step(cfg: Config, step: int, streams, device: torch.device, run_phase: PhaseRunner,
                groups: tuple[Group, ...], counters: dict[str, int]) -> tuple[dict[str, float], bool]:
    """One step (every group's phases, in order); returns its scalars and whether to give up."""
    t0 = time.perf_counter()
    batch = _next_batch(streams, device)
    data_wait = time.perf_counter() - t0

    scalars, grad_norms, skipped = {}, {}, 0
    for group in groups:
        for _ in range(group.steps(cfg.loss)):
            phase_scalars, result = run_phase(group, batch)
            scalars.update(phase_scalars)
            grad_norms.update(result.grad_norms)
            skipped += not result.finite
    step_time = time.perf_counter() - t0  # the grad-norm read-back in backend.step synchronises the device

    counters["nonfinite_skipped"] += skipped
    counters["nonfinite_in_row"] = counters["nonfinite_in_row"] + 1 if skipped else 0
    scalars.update({f"grad_norm/{n}": v for n, v in grad_norms.items()})
    scalars.update({"perf/images_per_s": cfg.data.batch_size * dist.world_size() / step_time,
                    "perf/step_time_s": step_time, "perf/data_wait_s": data_wait,
                    "nonfinite_skipped": counters["nonfinite_skipped"]})
    return scalars, counters["nonfinite_in_row"] >= cfg.train.max_nonfinite_in_row
