"""The bad-input matrix: every command line, fed what a new user (or an attacker) might type.

Each case runs a real command line in this process (the one-process trainer `tgan.train.cli`,
`launch/train.py --dry-run`, `launch/sweep.py`, `launch/evaluate.py`, `launch/prepare_data.py`) with
the current directory set to an empty scratch folder, and is judged by `outcome`:

- refused cases: a nonzero exit, exactly one `error:` line that names the field or file, no
  traceback, and nothing written (no run directory, nothing in the current directory);
- tolerated cases: exit 0, one `note:` line naming what was repaired, and a check of the result.

benchmarks/bad_inputs.py runs the same matrix and tabulates it (benchmarks/results/bad_inputs.md).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import logging
import os
import shutil
import tarfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"


@dataclass
class Ctx:
    tmp: Path
    """Scratch folder of the case, also its current directory."""
    shards: Path
    """The debug recipe's digits shards (shared: never modified)."""
    run: Path
    """A finished 2-step debug run (shared: copy it before changing it)."""

    @property
    def ckpt(self) -> Path:
        return sorted((self.run / "checkpoints").glob("step_*"))[-1]


@dataclass
class Case:
    id: str
    cli: str
    """train (one process), ray (launch/train.py --dry-run), ray-run (launch/train.py), sweep, eval or prepare."""
    args: list[str]
    """Arguments; {tmp}, {shards}, {run}, {ckpt} and {debug} are filled in from the Ctx."""
    names: tuple[str, ...]
    """What the error (or note) line must name."""
    setup: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx], str | None] | None = None
    """After the run: None when the result is right, else what is wrong."""
    tolerate: bool = False
    """The input is repaired with a note instead of refused."""
    may_write: tuple[str, ...] = ()
    """Paths under tmp that this case may create (a tolerated run's directory)."""


@dataclass
class Outcome:
    kind: str
    """clean, traceback, silent or wrong-message."""
    rc: int | None
    output: str
    why: str = ""


# --- the command lines, called in this process --------------------------------------------------------------

@functools.cache
def _main(cli: str) -> Callable[[list[str]], int]:
    """The main() of a command line, found the way a user starts it (launch/*.py), in the checkout
    whose tgan is imported (benchmarks/bad_inputs.py also runs the code of an older commit)."""
    import tgan

    launch = Path(tgan.__file__).resolve().parents[1] / "launch"
    if cli == "train" and not (launch / "train_local.py").exists():  # before the command lines moved to tgan/app
        from tgan.train.cli import main
        return main
    script = {"train": "train_local", "ray": "train", "ray-run": "train", "sweep": "sweep", "eval": "evaluate",
              "prepare": "prepare_data"}
    spec = importlib.util.spec_from_file_location(f"launch_{cli}", launch / f"{script[cli]}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sweep_main if hasattr(module, "sweep_main") else module.main  # sweep_main: before launch/cli.py


def _train_args(*sets: str, evaluate: bool = False) -> list[str]:
    """The one-process trainer on the debug recipe, 2 steps, in {tmp}/run, plus `sets`."""
    args = ["--config", "{debug}", "--set", "data.shards={shards}", "--set", "train.out_dir={tmp}/run",
            "--set", "train.steps=2"]
    for s in sets:
        args += ["--set", s]
    return args + ([] if evaluate else ["--no-eval"])


def _recipe_args(*extra: str) -> list[str]:
    """{tmp}/recipe.yaml, with overrides that keep a run tiny should the broken recipe be accepted."""
    return ["--config", "{tmp}/recipe.yaml", *extra, *_train_args("data.image_size=16", "model.width=0.125",
                                                                "train.device=cpu", "train.steps=1")[2:]]


def _ray_args(*sets: str) -> list[str]:
    return ["--config", "{debug}", *[a for s in sets for a in ("--set", s)], "--dry-run"]


class _WarningLines(logging.Handler):
    """Logged warnings of the case: a repaired input may be reported by a log line instead of a `note:`."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"note: {record.getMessage()}")


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def outcome(case: Case, ctx: Ctx) -> Outcome:
    """Run `case` in ctx.tmp (the current directory meanwhile) and judge it."""
    if case.setup is not None:
        case.setup(ctx)
    fill = {"tmp": ctx.tmp, "shards": ctx.shards, "run": ctx.run, "debug": DEBUG}
    if "{ckpt}" in " ".join(case.args):
        fill["ckpt"] = ctx.ckpt
    argv = [a.format(**fill) for a in case.args]
    before = _files(ctx.tmp)
    out, err = io.StringIO(), io.StringIO()
    warnings = _WarningLines()
    logging.getLogger().addHandler(warnings)
    cwd = os.getcwd()
    os.chdir(ctx.tmp)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = _main(case.cli)(argv)
            except SystemExit as e:  # argparse
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - an escaped exception is what the matrix looks for
                return Outcome("traceback", None, out.getvalue() + err.getvalue() + traceback.format_exc(limit=3))
    finally:
        os.chdir(cwd)
        logging.getLogger().removeHandler(warnings)
    text = out.getvalue() + err.getvalue()
    if "Traceback (most recent call last)" in text:
        return Outcome("traceback", rc, text)
    written = sorted(f for f in _files(ctx.tmp) - before if not f.startswith(case.may_write or ("\0",)))
    lines = err.getvalue().strip().splitlines()
    problem = case.check(ctx) if case.check is not None else None
    if case.tolerate:
        if rc != 0:
            return Outcome("wrong-message", rc, text, "refused an input that should be repaired")
        notes = [ln for ln in text.splitlines() if ln.startswith("note:")] + warnings.lines
        if problem or len(notes) != 1:
            return Outcome("silent", rc, text, problem or f"{len(notes)} note lines")
        missing = [n for n in case.names if n not in notes[0]]
        return Outcome("wrong-message", rc, text, f"note does not name {missing}") if missing \
            else Outcome("clean", rc, text)
    if rc == 0:
        return Outcome("silent", rc, text, "accepted")
    if problem:
        return Outcome("silent", rc, text, problem)
    if lines and lines[0].startswith("usage:"):  # argparse: its usage block, then one error line
        lines = lines[-1:]
    errors = [ln for ln in lines if "error:" in ln]
    if len(lines) != 1 or len(errors) != 1:
        return Outcome("wrong-message", rc, text, f"{len(lines)} lines on stderr, {len(errors)} error lines")
    missing = [n for n in case.names if n not in errors[0]]
    if missing:
        return Outcome("wrong-message", rc, text, f"error line does not name {missing}")
    if written:
        return Outcome("wrong-message", rc, text, f"wrote {written[:3]}")
    return Outcome("clean", rc, text)


# --- inputs that need files ---------------------------------------------------------------------------------

def _recipe(text: str | bytes) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        path = ctx.tmp / "recipe.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def _copy_shards(ctx: Ctx) -> Path:
    dest = ctx.tmp / "data"
    if not dest.exists():
        shutil.copytree(ctx.shards, dest)
    return dest


def _edit_index(edit: Callable[[dict], None]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        path = _copy_shards(ctx) / "index.json"
        index = json.loads(path.read_text())
        edit(index)
        path.write_text(json.dumps(index))
    return setup


def _damage_first_sample(ext: str, damage: Callable[[bytes], bytes]) -> Callable[[Ctx], None]:
    """Rewrite the first training shard with the first sample's `ext` member damaged, and give the
    index the new sha256: a shard written wrongly, not one damaged in transit."""
    def setup(ctx: Ctx) -> None:
        from tgan.data.codec import tar_members
        from tgan.data.index import sha256_file

        root = _copy_shards(ctx)
        index = json.loads((root / "index.json").read_text())
        shard = index["splits"]["train"]["shards"][0]
        path = root / shard["name"]
        members = list(tar_members(path.read_bytes()))
        first = next(name for name, _ in members if name.endswith("." + ext))
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                data = damage(data) if name == first else data
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        shard["sha256"] = sha256_file(path)
        (root / "index.json").write_text(json.dumps(index))
    return setup


def _file(name: str, text: str = "x") -> Callable[[Ctx], None]:
    return lambda ctx: (ctx.tmp / name).write_text(text)


def _copy_run(extra: Callable[[Path], None]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        shutil.copytree(ctx.run, ctx.tmp / "run")
        extra(ctx.tmp / "run")
    return setup


def _append_partial_line(run: Path) -> None:
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss/D": 0.6')  # the writer was killed mid-line


def _strict_json_lines(ctx: Ctx, steps: range, flagged: bool = False) -> str | None:
    """None when <tmp>/run/metrics.jsonl is strict JSON lines (no NaN) with one line per step in `steps`."""
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")
    try:
        rows = [json.loads(ln, parse_constant=no_constants)
                for ln in (ctx.tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    except (ValueError, OSError) as e:
        return f"metrics.jsonl: {e}"
    if [r["step"] for r in rows] != list(steps):
        return f"metrics.jsonl steps {[r['step'] for r in rows]}, expected {list(steps)}"
    if flagged and not any(r.get("nonfinite") for r in rows):
        return "no metrics line flags its non-finite values"
    return None


# --- the matrix ----------------------------------------------------------------------------------------------

CASES = [
    # Recipe files.
    Case("recipe-yaml-syntax", "train", _recipe_args(), ("recipe.yaml", "line 3"),
         setup=_recipe("data:\n  shards: [unclosed\nmodel:\n  width: 1\n")),
    Case("recipe-binary", "train", _recipe_args(), ("recipe.yaml",),
         setup=_recipe(bytes(range(256)) * 4)),
    Case("recipe-is-directory", "train", ["--config", "{tmp}"], ("is a directory",)),
    Case("recipe-missing", "train", ["--config", "{tmp}/nope.yaml"], ("nope.yaml", "does not exist")),
    Case("recipe-a-list", "train", _recipe_args(), ("recipe.yaml", "mapping"),
         setup=_recipe("- data\n- model\n")),
    Case("recipe-duplicate-section", "train", _recipe_args(), ("duplicate key train (lines 1 and 3)",),
         setup=_recipe("train:\n  steps: 2\ntrain:\n  seed: 3\n")),
    Case("recipe-duplicate-field", "train", _recipe_args(), ("duplicate key train.steps (lines 2 and 3)",),
         setup=_recipe("train:\n  steps: 2\n  steps: 3\n")),
    Case("recipe-python-tag", "train", _recipe_args(), ("recipe.yaml",),
         setup=_recipe("train: !!python/object/apply:os.system ['echo pwned']\n")),
    Case("recipe-unknown-section", "train", _recipe_args(), ("trian",),
         setup=_recipe("trian:\n  steps: 2\n")),
    Case("recipe-section-a-number", "train", _recipe_args(), ("model",),
         setup=_recipe("model: 3\n")),
    # --set overrides.
    Case("set-unclosed-list", "train", _train_args("data.shards=[unclosed"), ("data.shards",)),
    Case("set-no-equals", "train", _train_args("train.steps"), ("train.steps", "key=value")),
    Case("set-empty-key", "train", _train_args("=3"), ("key=value",)),
    Case("set-unknown-field", "train", _train_args("model.depth=3"), ("model.depth",)),
    Case("set-unknown-section", "train", _train_args("modle.width=1"), ("modle",)),
    Case("set-into-a-value", "train", _train_args("train.steps.x=1"), ("train.steps",)),
    Case("set-python-tag", "train", _train_args("train.steps=!!python/name:os.system"), ("train.steps",)),
    Case("set-word-for-int", "train", _train_args("train.steps=abc"), ("train.steps",)),
    Case("set-fraction-for-int", "train", _train_args("train.steps=1.5"), ("train.steps",)),
    # Model sizes.
    Case("width-inf", "train", _train_args("model.width=inf"), ("model.width",)),
    Case("lr-inf", "train", _train_args("optim.lr=inf"), ("optim.lr=", "finite")),
    Case("lr-d-nan", "train", _train_args("optim.lr_d=nan"), ("optim.lr_d=", "finite")),
    Case("width-1e-9", "train", _train_args("model.width=1e-9"), ("model.width",)),
    Case("width-nan", "train", _train_args("model.width=nan"), ("model.width",)),
    Case("width-1e6", "train", _train_args("model.width=1000000"), ("model.width",)),
    Case("latent-dim-1e9", "train", _train_args("model.latent_dim=1000000000"), ("model.latent_dim",)),
    Case("latent-dim-1e9-string", "train", _train_args("model.latent_dim=1e9"), ("model.latent_dim",)),
    Case("embedding-dim-1e9", "train", _train_args("model.family=mbgan", "model.embedding_dim=1000000000"),
         ("model.embedding_dim",)),
    # Data settings and shard directories.
    Case("shards-empty", "train", _train_args("data.shards="), ("data.shards",)),
    Case("shards-a-file", "train", _train_args("data.shards={tmp}/afile"), ("afile",), setup=_file("afile")),
    Case("shards-missing-not-digits", "train", _train_args("data.dataset=cifar10", "data.shards={tmp}/none"),
         ("data.shards",)),
    Case("labelled-batch-over-subset", "train", _train_args("data.labels_per_class=1", "data.labelled_batch_size=16"),
         ("data.labelled_batch_size=16", "10 examples", "repeats"), tolerate=True, may_write=("run",)),
    Case("fraction-on-cli-vs-recipe-per-class", "train", _train_args("data.labelled_fraction=0.1"),
         ("data.labels_per_class=null",)),
    Case("labelled-fraction-zero", "train", _train_args("data.labels_per_class=null", "data.labelled_fraction=0"),
         ("data.labelled_fraction",)),
    Case("image-size-not-the-index", "train", _train_args("data.image_size=32"), ("data.image_size",)),
    Case("index-splits-a-list", "train", _train_args("data.shards={tmp}/data"), ("index.json", "splits"),
         setup=_edit_index(lambda d: d.update(splits=[]))),
    Case("index-count-a-word", "train", _train_args("data.shards={tmp}/data"), ("index.json",),
         setup=_edit_index(lambda d: d["splits"]["train"].update(count="many"))),
    Case("index-not-json", "train", _train_args("data.shards={tmp}/data"), ("index.json",),
         setup=lambda ctx: (_copy_shards(ctx) / "index.json").write_text("{")),
    Case("shard-missing", "train", _train_args("data.shards={tmp}/data"), ("train-000000.tar",),
         setup=lambda ctx: (_copy_shards(ctx) / "train-000000.tar").unlink()),
    Case("shard-damaged", "train", _train_args("data.shards={tmp}/data"), ("train-000000.tar", "sha256"),
         setup=lambda ctx: (_copy_shards(ctx) / "train-000000.tar").write_bytes(b"\0" * 1024)),
    Case("cls-not-a-number", "train", _train_args("data.shards={tmp}/data"),
         ("train-000000.tar", "train_000000", "cls"), setup=_damage_first_sample("cls", lambda b: b"seven")),
    Case("png-undecodable-labelled", "train",
         _train_args("data.shards={tmp}/data", "data.labels_per_class=null", "data.labelled_fraction=1.0"),
         ("train-000000.tar", "train_000000"), setup=_damage_first_sample("png", lambda b: b[:33] + b"\0" * 64)),
    Case("loader-workers-over-shards", "train", _train_args("data.num_workers=64"), ("data.num_workers",)),
    # Run directory and training settings.
    Case("out-dir-empty", "train", _train_args("train.out_dir="), ("train.out_dir",)),
    Case("out-dir-a-file", "train", _train_args("train.out_dir={tmp}/afile"), ("train.out_dir",),
         setup=_file("afile")),
    Case("steps-zero", "train", _train_args("train.steps=0"), ("train.steps",)),
    Case("resume-not-a-checkpoint", "train", _train_args("train.resume={tmp}"), ("train.resume",)),
    Case("device-tpu", "train", _train_args("train.device=tpu"), ("train.device",)),
    # Evaluation settings, refused before step 1.
    Case("max-k-over-gallery", "train", _train_args("eval.max_k=600", evaluate=True), ("eval.max_k=600", "500")),
    Case("max-train-negative", "train", _train_args("eval.max_train=-5"), ("eval.max_train",)),
    Case("max-test-negative", "train", _train_args("eval.max_test=-1"), ("eval.max_test",)),
    # metrics.jsonl: repaired, not refused.
    Case("metrics-partial-last-line", "train", _train_args("train.steps=3"), ("metrics.jsonl", "partial"),
         setup=_copy_run(_append_partial_line), check=lambda ctx: _strict_json_lines(ctx, range(1, 4)),
         tolerate=True, may_write=("run",)),
    Case("metrics-nan", "train", _train_args("optim.lr=1e38", "train.max_nonfinite_in_row=2", "train.steps=3"),
         ("non-finite",), check=lambda ctx: _strict_json_lines(ctx, range(1, 3), flagged=True),
         may_write=("run",)),
    # launch/train.py --dry-run: the cluster section.
    Case("gpus-per-worker-negative", "ray", _ray_args("cluster.use_gpu=true", "cluster.gpus_per_worker=-1"),
         ("cluster.gpus_per_worker",)),
    Case("gpus-per-worker-zero", "ray", _ray_args("cluster.use_gpu=true", "cluster.gpus_per_worker=0"),
         ("cluster.gpus_per_worker",)),
    Case("gpus-per-worker-nan", "ray", _ray_args("cluster.gpus_per_worker=nan"), ("cluster.gpus_per_worker",)),
    Case("cpus-per-worker-zero", "ray", _ray_args("cluster.cpus_per_worker=0"), ("cluster.cpus_per_worker",)),
    Case("num-workers-zero", "ray", _ray_args("cluster.num_workers=0"), ("cluster.num_workers",)),
    Case("storage-path-relative", "ray", _ray_args("cluster.storage_path=ckpts"), ("cluster.storage_path",)),
    Case("deepspeed-not-a-mapping", "ray", _ray_args("cluster.deepspeed=3"), ("cluster.deepspeed",)),
    Case("backend-unknown", "ray", _ray_args("cluster.backend=horovod"), ("cluster.backend",)),
    Case("ray-recipe-yaml-syntax", "ray", ["--config", "{tmp}/recipe.yaml", "--dry-run"], ("recipe.yaml",),
         setup=_recipe("cluster: {num_workers: 2\n")),
    # launch/sweep.py: refused before any Ray starts.
    Case("grid-no-values", "sweep", ["--config", "{debug}", "--grid", "loss.alpha"], ("--grid",)),
    Case("grid-unclosed-list", "sweep", ["--config", "{debug}", "--grid", "loss.alpha=[1,2"], ("loss.alpha",)),
    Case("grid-unknown-field", "sweep", ["--config", "{debug}", "--grid", "loss.alhpa=1,2"], ("loss.alhpa",)),
    Case("sweep-spec-yaml-syntax", "sweep", ["--config", "{debug}", "--sweep", "{tmp}/spec.yaml"], ("spec.yaml",),
         setup=_file("spec.yaml", "space:\n  loss.alpha: {grid: [1, 2\n")),
    Case("grid-invalid-value", "sweep", ["--config", "{debug}", "--grid", "loss.alpha=-1,2"], ("loss.alpha",)),
    # launch/evaluate.py.
    Case("eval-checkpoint-missing", "eval", ["{tmp}/nope"], ("nope",)),
    Case("eval-set-model-field", "eval", ["{ckpt}", "--set", "model.width=2", "--out", "{tmp}/ev"], ("model.width",)),
    Case("eval-max-k-over-gallery", "eval", ["{ckpt}", "--set", "eval.max_k=100000", "--out", "{tmp}/ev"],
         ("eval.max_k=100000",)),
    Case("eval-max-test-negative", "eval", ["{ckpt}", "--set", "eval.max_test=-1", "--out", "{tmp}/ev"],
         ("eval.max_test",)),
    Case("eval-set-unclosed", "eval", ["{ckpt}", "--set", "eval.max_k=[1", "--out", "{tmp}/ev"], ("eval.max_k",)),
    Case("eval-shards-missing", "eval", ["{ckpt}", "--set", "data.shards={tmp}/none", "--out", "{tmp}/ev"],
         ("none",)),
    Case("eval-out-a-file", "eval", ["{ckpt}", "--out", "{tmp}/afile"], ("afile",), setup=_file("afile")),
    Case("eval-checkpoint-a-file", "eval", ["{tmp}/afile"], ("afile",), setup=_file("afile")),
    # launch/prepare_data.py.
    Case("prepare-shard-size-zero", "prepare", ["--dataset", "digits", "--out", "{tmp}/d", "--shard-size", "0"],
         ("--shard-size",)),
    Case("prepare-out-empty", "prepare", ["--dataset", "digits", "--out", ""], ("--out",)),
    Case("prepare-out-a-file", "prepare", ["--dataset", "digits", "--out", "{tmp}/afile"], ("afile",),
         setup=_file("afile")),
    Case("prepare-image-size-17", "prepare", ["--dataset", "digits", "--out", "{tmp}/d", "--image-size", "17"],
         ("--image-size",)),
    Case("prepare-root-missing", "prepare", ["--dataset", "fashion-mnist", "--root", "{tmp}/none", "--out",
                                             "{tmp}/d", "--no-progress"], ("none",)),
]


# Object storage: a bucket that does not exist on the session's S3 server (moto, tests/conftest.py),
# an S3 endpoint and an http server that are down (port 9: nothing listens), for every command line
# that reads or writes a store. Each error names the setting and the endpoint.
DOWN = "http://127.0.0.1:9"
STORE_CASES = [
    Case(f"{store}-{cli}", cli, args, names)
    for store, url, reason in [("s3-no-bucket", "s3://no-such-bucket/digits", "bucket 'no-such-bucket' does not exist at "
                                "http://127.0.0.1:"),
                               ("s3-down", "s3://tgan-test/digits", f"cannot reach {DOWN} (AWS_ENDPOINT_URL)"),
                               ("http-down", f"{DOWN}/digits", f"cannot reach {DOWN} (ClientConnectorError")]
    for cli, args, names in [
        ("train", _train_args(f"data.shards={url}"), ("data.shards: ", reason)),
        ("eval", ["{ckpt}", "--set", f"data.shards={url}", "--out", "{tmp}/ev"], ("data.shards: ", reason)),
        ("prepare", ["--dataset", "digits", "--out", url, "--no-progress"],
         ("--out: ", "http(s) is read-only" if store == "http-down" else reason)),
        ("ray-run", ["--config", "{debug}", "--set", f"train.out_dir={{tmp}}/run", "--set",
                     f"cluster.storage_path={url}/ray"], ("cluster.storage_path: ", reason.split(" (")[0])),
    ] if not (store == "http-down" and cli == "ray-run")  # Ray's storage is a path or a bucket, never http
]


@pytest.mark.parametrize("case", STORE_CASES, ids=[c.id for c in STORE_CASES])
def test_object_storage_fault(case, s3_bucket, shards, finished_run, tmp_path, monkeypatch):
    """Each was a ~135-line botocore or pyarrow traceback, or blamed a flag the user never gave
    (`--out s3://...: upload failed` from the trainer), and launch/train.py left run.json behind."""
    import s3fs

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's 5 tries of a refused connection take 6 s
    if case.id.startswith("s3-down"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", DOWN)
    s3fs.S3FileSystem.clear_instance_cache()  # s3fs reuses a file system made with the old environment
    try:
        result = outcome(case, Ctx(tmp_path, shards, finished_run))
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert result.kind == "clean", f"{result.kind}: {result.why}\n{result.output[-3000:]}"


@pytest.fixture(scope="session")
def finished_run(shards, tmp_path_factory):
    """A 2-step debug run with its checkpoints and metrics.jsonl, trained once per session."""
    from tgan.config import load_config
    from tgan.train.loop import train

    out = tmp_path_factory.mktemp("bad_inputs") / "run"
    train(load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", "train.steps=2"]))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, shards, finished_run, tmp_path):
    result = outcome(case, Ctx(tmp_path, shards, finished_run))
    assert result.kind == "clean", f"{result.kind}: {result.why}\n{result.output[-3000:]}"
