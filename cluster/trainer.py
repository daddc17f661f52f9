"""Run tgan's training loop on Ray Train: one TorchTrainer worker per rank, DDP or DeepSpeed,
Ray checkpoints and restarts, Prometheus metrics, then evaluation of the last checkpoint.

What happens where:
- the driver (launch/train.py, or a `ray job submit` entrypoint) validates, connects, checks the
  cluster, builds the TorchTrainer and, after fit(), evaluates;
- every worker (`train_worker`) runs `tgan.train.loop.train` on Ray Train's process group (gloo on
  CPU, nccl on GPU). The loop's reporter hook forwards every logged step to `ray.train.report`
  (the same scalars Ray Tune will read) and to Prometheus; a step that wrote a checkpoint reports it
  too. Each rank writes its own checkpoint files (and manifest) into a directory of its own under
  <out_dir>/ray_staging and hands them to `ray.train.report`, which uploads them to the run's
  storage (cluster.storage_path: a path or s3://...), merges every rank's files into one checkpoint
  directory there, and deletes the local copy. After a worker dies, Ray restarts the group and
  `ray.train.get_checkpoint()` downloads the last registered checkpoint for the new group; a run
  started again with the same storage and name is restored by Ray the same way.

Multi-node: train.out_dir may be node-local (it holds rank 0's metrics.jsonl, config.yaml and
run.json, and the staging directories); only cluster.storage_path must be shared (s3://, gs://,
NFS), because a restarted worker may land on another node.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2.api.exceptions import WorkerGroupError

from cluster import ray_env
from tgan import runinfo, runlock
from tgan.config import Config, apply_overrides, config_from_dict
from tgan.train import checkpoint as ckpt
from tgan.train.backend import Backend, TorchBackend
from tgan.train.loop import USER_ERRORS
from tgan.train.resume import open_resume

STAGING = "ray_staging"
"""<out_dir>/ray_staging/rank_<r>: where each rank writes its checkpoint files before Ray uploads them."""


@dataclass
class RunResult:
    step: int
    """Step of the last reported metrics."""
    metrics: dict
    """Scalars of the last checkpointed step, as Ray Train recorded them."""
    checkpoint: Checkpoint
    """The last checkpoint, where Ray stored it (`.path`: a path or URI)."""
    run_dir: str
    """storage_path/name: where the run's checkpoints and Ray's state live (a continued run is restored from it)."""


def absolute_paths(cfg: Config) -> Config:
    """Workers do not share the driver's working directory: make relative paths absolute here."""
    paths = {"train.out_dir": str(Path(cfg.train.out_dir).resolve())}
    if "://" not in cfg.data.shards:  # a URL is the same from every node
        paths["data.shards"] = str(Path(cfg.data.shards).resolve())
    if cfg.train.resume not in ("auto", "never"):
        paths["train.resume"] = str(Path(cfg.train.resume).resolve())
    return apply_overrides(cfg, paths)


def make_reporter(cfg: Config, rank: int):
    """The loop's reporter on a Ray Train worker: Prometheus every logged step, ray.train.report every
    cluster.report_every steps, at every checkpoint and at every live validation (eval.every)."""
    metrics = None
    if cfg.cluster.metrics:
        from cluster.metrics import WorkerMetrics

        metrics = WorkerMetrics(run=Path(cfg.train.out_dir).name, family=cfg.model.family, rank=rank,
                                batch_size=cfg.data.batch_size, steps=cfg.train.steps)

    every = cfg.cluster.report_every or cfg.train.log_every

    def reporter(step: int, scalars: dict, saved: Path | None) -> None:
        if metrics is not None:
            metrics.record(step, scalars)
        # ray.train.report is a barrier: the choice is step-based so every rank reports the same
        # steps (validation metrics come at the same steps on every rank, and schedulers need each).
        # Every rank hands over its own files; Ray merges them into <storage>/<name>/step_N.
        if saved is None and step % every != 0 and not any(k.startswith("val/") for k in scalars):
            return
        checkpoint = Checkpoint.from_directory(str(saved)) if saved is not None else None
        ray.train.report({"step": step, **scalars}, checkpoint=checkpoint,
                         checkpoint_dir_name=saved.name if saved is not None else None,
                         delete_local_checkpoint_after_upload=saved is not None)

    return reporter


def make_backend(cfg: Config) -> Backend:
    """The backend cluster.backend names, built inside a worker (DeepSpeed is imported only there)."""
    if cfg.cluster.backend == "deepspeed":
        from cluster.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(cfg.cluster.deepspeed, batch_size=cfg.data.batch_size)
    return TorchBackend.for_config(cfg)


def quiet_report_logs() -> None:
    """Hide Ray Train's "Reporting training result N: TrainingReport(...)" line (every report, every
    rank, the whole metrics dict). Ray 2.60 logs it at INFO through a logger named after its source
    file (ray/train/v2/_internal/execution/context.py: `logging.getLogger(__file__)`), outside the
    "ray.train" logger that RunConfig's LoggingConfig filters. Found by its module's file without
    importing it: if a Ray release moves the module, this does nothing and the lines come back."""
    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)


def train_worker(config: dict) -> None:
    """The per-rank function Ray Train runs (inside an actor, with the process group set up)."""
    from tgan.train.loop import train

    if not config.get("verbose"):
        quiet_report_logs()
    cfg = config_from_dict(config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    backend = make_backend(cfg)
    reporter = make_reporter(cfg, rank)
    staging = Path(cfg.train.out_dir) / STAGING / f"rank_{rank}"
    restored = ray.train.get_checkpoint()
    if restored is None:
        train(cfg, backend=backend, reporter=reporter, rank_dir=staging)
        return
    # Ray's last registered checkpoint first, then the older ones it keeps beside it, each fetched
    # from the storage only if the one before fails verification (the loop falls back).
    parent, _, name = restored.path.rstrip("/").rpartition("/")
    step = ckpt.checkpoint_step(Path(name))
    older = [] if step is None else [n for n in ray_env.stored_steps(restored.filesystem, parent)
                                     if ckpt.checkpoint_step(Path(n)) < step]
    with contextlib.closing(ray_env.fetched(restored.filesystem, parent, [name, *older])) as found:
        train(cfg, backend=backend, reporter=reporter, resume_from=found, rank_dir=staging)


def check_start(cfg: Config, run_dir: str, resume: bool) -> None:
    """Before anything is written or started: the same command starts a run or continues it.

    Ray Train restores a run whose storage_path/name already holds its state, so continuing
    (train.resume=auto, the default) checks the newest loadable checkpoint there (fetched from the
    storage), else train.out_dir's, against the config (tgan.train.resume: refused fields, world
    size); train.resume=never refuses an existing run directory; `resume` (--resume) insists that
    there is a run.
    """
    fs, path = ray_env.run_storage(run_dir)
    stored = ray_env.stored_steps(fs, path)
    if cfg.train.resume == "never" and stored:
        raise ray_env.ClusterError(f"train.resume=never but {run_dir} already holds the checkpoints of a run: choose "
                                   "a new train.out_dir, or drop train.resume=never to continue it")
    with contextlib.closing(ray_env.fetched(fs, path, stored)) as found:
        resumed = open_resume(cfg, found if stored else None, world_size=cfg.cluster.num_workers)
    if resume and resumed is None:
        raise ray_env.ClusterError(f"--resume: train.out_dir={cfg.train.out_dir!r} holds no checkpoint and "
                                   f"{run_dir} no Ray run state: nothing to resume (start it without --resume)")


def build_trainer(cfg: Config, storage: str, worker=train_worker, *, name: str | None = None,
                  callbacks: list | None = None, verbose: bool = False) -> TorchTrainer:
    """The TorchTrainer of `cfg` (benchmarks pass their own instrumented `worker`). `name`: the Ray run
    directory under `storage` (default the out_dir's name); `callbacks`: Ray Train UserCallbacks.

    Ray Train logs every ray.train.report at INFO ("Reporting training result N: TrainingReport(...)",
    the whole metrics dict, per rank), every checkpoint it registers and its worker-group setup; the
    loop's progress line says what matters in one line, so those are shown only when `verbose`
    (LoggingConfig, and quiet_report_logs in the workers). Warnings and errors always are.
    """
    c = cfg.cluster
    storage_path, filesystem = ray_env.storage_filesystem(storage)
    resources = {"CPU": c.cpus_per_worker, **({"GPU": c.gpus_per_worker} if c.use_gpu else {})}
    return TorchTrainer(
        worker,
        train_loop_config={"cfg": cfg.to_dict(), "verbose": verbose},
        torch_config=TorchConfig(backend="nccl" if c.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=c.num_workers, use_gpu=c.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name or Path(cfg.train.out_dir).name, storage_path=storage_path, storage_filesystem=filesystem,
            callbacks=callbacks,
            failure_config=FailureConfig(max_failures=c.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            worker_runtime_env={"env_vars": ray_env.worker_env(c)}))


def user_error(e: WorkerGroupError) -> Exception:
    """The first worker's own error when it is one of USER_ERRORS (so the command line prints its
    message, not Ray's traceback), else Ray's error as it was. Ray hands worker errors over either
    as they were raised or wrapped (RayTaskError, with the original in `.cause`)."""
    for failure in e.worker_failures.values():
        cause = getattr(failure, "cause", None) or failure
        if isinstance(cause, USER_ERRORS):
            return cause
    return e


def run(cfg: Config, *, resume: bool = False, verbose: bool = False) -> RunResult:
    """Driver: checks, connect, fit (`verbose`: Ray Train's INFO logs too, see build_trainer). Starts
    the run of train.out_dir, or continues it when it exists (a retried job just works;
    train.resume=never refuses instead). Raises ClusterError, ConfigError or CheckpointError naming
    the setting or file at fault."""
    cfg = absolute_paths(cfg)
    if cfg.cluster.backend == "deepspeed":  # imported only then: deepspeed takes seconds to import
        from cluster.deepspeed_backend import check_config as check_deepspeed

        check_deepspeed(cfg.cluster.deepspeed, on_gpu=cfg.cluster.use_gpu)
    planned = cfg.cluster.storage_path or str(Path(cfg.train.out_dir) / "ray")
    check_start(cfg, f"{planned.rstrip('/')}/{Path(cfg.train.out_dir).name}", resume)
    storage = ray_env.storage_path(cfg.cluster, cfg.train.out_dir)  # creates it: only once the start is accepted
    run_dir = f"{storage.rstrip('/')}/{Path(cfg.train.out_dir).name}"
    conn = ray_env.connect()
    ray_env.ensure_resources(cfg.cluster)
    if conn.metrics_url:
        print(f"metrics (Prometheus format): {conn.metrics_url}", flush=True)
    fit_start = time.monotonic()
    # Drivers on different machines (node-local out_dirs) may share the storage: one run at a time there too.
    shared = runlock.hold(run_dir, "cluster.storage_path") if "://" in run_dir else contextlib.nullcontext()
    try:
        with shared:
            result = build_trainer(cfg, storage, verbose=verbose).fit()
    except WorkerGroupError as e:
        raise user_error(e) from e
    finally:
        runinfo.record_phase(cfg.train.out_dir, "ray_fit", time.monotonic() - fit_start, address=conn.address,
                             workers=cfg.cluster.num_workers)
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint in {run_dir}")
    metrics = result.metrics or {}
    return RunResult(step=int(metrics.get("step", 0)), metrics=metrics, checkpoint=result.checkpoint,
                     run_dir=run_dir)


def evaluate_checkpoint(checkpoint: Checkpoint, out_dir: Path) -> dict:
    """The core issue's evaluation (eval.json, eval.md, pictures in `out_dir`) of a Ray-stored checkpoint."""
    from tgan.evaluate import evaluate

    with checkpoint.as_directory() as path:
        cfg, nets = ckpt.load_networks(path)
    return evaluate(cfg, nets, out_dir)
