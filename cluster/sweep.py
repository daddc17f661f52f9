"""Ray Tune sweeps of tgan runs, as a sweep spec says (cluster/sweep_spec.py): grid, random or Optuna
search over dotted config keys, fifo, ASHA or PBT scheduling on a live validation metric.

Ray Train V2's pattern for Tune: every trial is a small driver function (`_trial`) that builds the
trial's config and runs one full tgan Ray Train run (DDP or DeepSpeed over the spec's workers).
A Train callback (`_ToTune`, in Train's controller) hands every report of the run to the trial, which
passes those that carry the validation metric on to Tune with `ray.tune.report`, together with the
newest checkpoint Train stored since. So schedulers see the metric during training: ASHA stops a
trial mid-run, and PBT copies a better trial's checkpoint into a worse one (`tune.get_checkpoint()`).
A failed or interrupted trial (Ctrl-C, then --resume) continues from its own newest checkpoint;
every start of a trial is a new Ray Train run (docs/SWEEPS.md).

Each trial writes into <train.out_dir>/trials/<trial id> (checkpoints, metrics.jsonl, config.yaml);
Tune's own state goes to <train.out_dir>/tune (what --resume restores). The trial driver holds no
CPU of its own, so its workers get the cluster's CPUs. After the sweep the best trial (by the spec's
metric, its last value) is evaluated once on the test split; see cluster/sweep_report.py.
"""
from __future__ import annotations

import contextlib
import shutil
import threading
import uuid
from pathlib import Path

from cluster.sweep_spec import SweepSpec, check_spec, trial_config
from tgan.config import Config, config_from_dict
from tgan.train import checkpoint as ckpt

TUNE_DIR = "tune"


def _ray_train_callback():
    """_ToTune is a Ray Train UserCallback; defined lazily so importing this module starts no Ray."""
    from ray.train import UserCallback

    class _ToTune(UserCallback):
        """Runs in Ray Train's controller: puts rank 0's metrics and the stored checkpoint's path on the queue."""

        def __init__(self, queue):
            self.queue = queue

        def after_report(self, run_context, metrics, checkpoint):
            self.queue.put((metrics[0], checkpoint.path if checkpoint is not None else None))

    return _ToTune


RUN_NAME = "train_run"
"""<trial out_dir>/train_run: the name of the trial's newest Ray Train run (one per start of the trial)."""


def _adopt(src: Path, out: Path) -> Path:
    """Copy the checkpoint directory a start of the trial continues into out/checkpoints, dropping
    any of the trial's checkpoints there from its step on (the run redoes those steps, and a stale
    later one must not be taken for the newest)."""
    step = int(ckpt.load_checkpoint(src)["step"])
    for later in ckpt.list_checkpoints(out):
        if int(later.name[len(ckpt.PREFIX):]) >= step:
            shutil.rmtree(later)
    dest = ckpt.checkpoint_dir(out) / f"{ckpt.PREFIX}{step:08d}"
    shutil.copytree(src, dest)
    return dest


def _start_from(restored, trial_id: str, out: Path, storage: str, steps: int) -> Path | None:
    """The checkpoint this start of the trial continues, copied into out/checkpoints (None: from scratch).

    Tune's checkpoint when it is another trial's (PBT's exploit). Else the trial's own newest one
    below train.steps: Tune's, or one that the trial's previous Ray Train run stored after it, since
    a Ctrl-C (or PBT pausing the trial) stops Tune before it takes the reports in flight. Below
    train.steps, so that a run cut after its last checkpoint redoes its last steps and reports them.
    """
    from cluster import ray_env

    with contextlib.ExitStack() as stack:
        tuned = Path(stack.enter_context(restored.as_directory())) if restored is not None else None
        state = ckpt.load_checkpoint(tuned, whole=False) if tuned is not None else None
        if state is not None and Path(state["config"]["train"]["out_dir"]).name != trial_id:
            return _adopt(tuned, out)
        previous = out / RUN_NAME
        if previous.is_file():
            fs, run = ray_env.run_storage(f"{storage.rstrip('/')}/{previous.read_text().strip()}")
            below = [n for n in ray_env.stored_steps(fs, run) if ckpt.checkpoint_step(Path(n)) < steps]
            if below and (state is None or ckpt.checkpoint_step(Path(below[0])) > int(state["step"])):
                tuned = next(stack.enter_context(contextlib.closing(ray_env.fetched(fs, run, below[:1]))))
        return _adopt(tuned, out) if tuned is not None else None


def _trial(point: dict, *, base: dict, metric: str) -> None:
    """One Tune trial: a tgan Ray Train run whose validation reports (and checkpoints) go to Tune.

    Each start of the trial is a new Ray Train run (so Train never restores a state on its own),
    continuing the checkpoint `_start_from` picks. The report of the last step (train.steps) goes
    to Tune once the run has ended, marked done: a scheduler's decision on it (ASHA stops a trial
    at its max_t, PBT may exploit) would stop the trial, and Tune stopping a trial ends its actor
    and everything started from it, which must not cut a run that is still finishing."""
    from ray import tune
    from ray.util.queue import Empty, Queue

    from cluster import ray_env
    from cluster.trainer import build_trainer, user_error

    cfg = config_from_dict(base)
    trial_id = tune.get_context().get_trial_id()
    out = Path(cfg.train.out_dir) / "trials" / trial_id
    cfg = trial_config(cfg, point, out)
    storage = ray_env.storage_path(cfg.cluster, out)
    start = _start_from(tune.get_checkpoint(), trial_id, out, storage, cfg.train.steps)
    origin = {}
    if start is not None:
        state = ckpt.load_checkpoint(start, whole=False)
        # Which trial's checkpoint this start continues (its own, or under PBT a better trial's).
        origin = {"started_from": Path(state["config"]["train"]["out_dir"]).name, "started_at": int(state["step"])}
        cfg = trial_config(cfg, {"train.resume": str(start)}, out)
    name = f"train_{uuid.uuid4().hex[:8]}"
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_NAME).write_text(name)

    queue = Queue(actor_options={"num_cpus": 0})
    trainer = build_trainer(cfg, storage, name=name, callbacks=[_ray_train_callback()(queue)])
    failure: list[BaseException] = []

    def fit() -> None:
        from ray.train.v2.api.exceptions import WorkerGroupError

        try:
            trainer.fit()
        except WorkerGroupError as e:
            failure.append(user_error(e))
        except BaseException as e:  # handed to the trial's thread, which raises it to Tune
            failure.append(e)

    # Only Train's controller writes to the queue, and the trial's thread reads it until the run has
    # ended and the queue is empty. When Tune stops the trial (ASHA, PBT, Ctrl-C), the queue ends
    # with the trial's actor, and the run's thread with it, without writing to a dead queue.
    runner = threading.Thread(target=fit, daemon=True)
    runner.start()
    pending, final = None, None
    while True:
        try:
            metrics, stored = queue.get(timeout=0.5)
        except Empty:
            if runner.is_alive() or not queue.empty():
                continue
            break
        pending = stored or pending
        if metric in metrics:
            report = ({**metrics, **origin, "out_dir": str(out)}, tune.Checkpoint(pending) if pending else None)
            pending = None
            if int(metrics.get("step", 0)) < cfg.train.steps:
                tune.report(report[0], checkpoint=report[1])
            else:
                final = report
    if final is not None:  # done: Tune takes it as the trial's end, without asking the scheduler
        tune.report({**final[0], "done": True}, checkpoint=final[1])
    if failure:
        raise failure[0]


def _domain(domain):
    from ray import tune

    kind, values = domain.kind, domain.values
    if kind == "grid":
        return tune.grid_search(values)
    if kind == "choice":
        return tune.choice(values)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*values)


def _scheduler(spec: SweepSpec, steps: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if spec.scheduler == "asha":
        return ASHAScheduler(time_attr="step", max_t=steps, **spec.asha)
    if spec.scheduler == "pbt":
        mutations = {k: (d.values if d.kind in ("grid", "choice") else _domain(d)) for k, d in spec.mutations.items()}
        return PopulationBasedTraining(time_attr="step", perturbation_interval=spec.pbt_interval,
                                       hyperparam_mutations=mutations, synch=spec.pbt_synch)
    return FIFOScheduler()


def _search(spec: SweepSpec):
    if spec.search != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(seed=0)


def max_trials_at_once(cfg: Config, cluster: dict[str, float]) -> int:
    """How many trials' worker groups the cluster holds at once, counting CPUs and (use_gpu) GPUs."""
    c = cfg.cluster
    fits = [cluster.get("CPU", 0.0) // (c.num_workers * c.cpus_per_worker)]
    if c.use_gpu:
        fits.append(cluster.get("GPU", 0.0) // (c.num_workers * c.gpus_per_worker))
    return max(1, int(min(fits)))


def tuner(base: Config, spec: SweepSpec, *, resume: bool):
    """The Tuner of the sweep: a fresh one, or (resume) the interrupted one restored from <out_dir>/tune."""
    import ray
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(_trial, base=base.to_dict(), metric=spec.metric),
                                    {"CPU": 0, "memory": 1 << 20})  # a bundle may not be empty
    path = str(Path(base.train.out_dir) / TUNE_DIR)
    if resume:
        # Finished trials stay as they are; unfinished and failed ones continue from their last checkpoint.
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    concurrent = spec.max_concurrent or max_trials_at_once(base, ray.cluster_resources())
    return tune.Tuner(
        trainable,
        param_space={key: _domain(d) for key, d in spec.space.items()},
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=_search(spec),
                                    scheduler=_scheduler(spec, base.train.steps), num_samples=spec.num_samples,
                                    max_concurrent_trials=concurrent, reuse_actors=False),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=base.train.out_dir, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


def unfinished_trials(out_dir: str) -> list[str]:
    """Ids of the trials that Tune's saved experiment state (in <out_dir>/tune) holds as neither
    terminated nor failed: after a Ctrl-C Tune saves the running trials as running, but the
    ResultGrid it returns calls them terminated. Read with Tune's ExperimentAnalysis, which picks
    the state file the way `Tuner.restore` does (the newest by the session time in its name: a
    restored sweep rewrites the older files too, so their modification times say nothing)."""
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    trials = ExperimentAnalysis(str(Path(out_dir) / TUNE_DIR)).trials
    return [t.trial_id for t in trials if t.status not in (Trial.TERMINATED, Trial.ERROR)]


def prepare(base: Config, spec: SweepSpec, *, resume: bool) -> Config:
    """The base config of every trial (spec checked, paths absolute), and the sweep directory checked."""
    from cluster.ray_env import ClusterError
    from cluster.trainer import absolute_paths

    base = absolute_paths(base)
    check_spec(spec, base)
    state = Path(base.train.out_dir) / TUNE_DIR
    if resume and not state.is_dir():
        raise ClusterError(f"--resume: {state} holds no sweep to resume (start it without --resume)")
    if not resume and state.exists():
        raise ClusterError(f"train.out_dir={base.train.out_dir!r} already holds a sweep ({state}): pass --resume "
                           "to finish it, or choose a new train.out_dir")
    return base


def sweep(base: Config, spec: SweepSpec, *, resume: bool = False):
    """Run the sweep (or finish an interrupted one) holding the sweep directory's lock (tgan.runlock:
    a second sweep or run into it is refused); returns the ResultGrid and the base config used."""
    from cluster import ray_env
    from tgan import runlock

    base = prepare(base, spec, resume=resume)
    with runlock.hold(base.train.out_dir, "train.out_dir"):
        ray_env.connect()  # a local Ray with the dashboard (see connect)
        ray_env.ensure_resources(base.cluster, groups=spec.max_concurrent or 1)
        return tuner(base, spec, resume=resume).fit(), base

