"""What a sweep leaves for a person to read, in <train.out_dir>:

- sweep.csv: one row per trial: the swept keys, steps, stopped_early, the last validation metrics
  (val_* columns), test_* columns for the best trial (evaluated on the test split once, after it was
  selected on validation), error, out_dir;
- sweep.md: the same table, best first;
- plots/: the selection metric against each swept key (<metric>_vs_<key>.png), and the learning
  curves of every trial (curves.png: the metric against the training step).
"""
from __future__ import annotations

import contextlib
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tgan.config import Config

TEST_COLUMNS = ("test_map", "test_knn1", "test_knn9", "test_probe", "test_step")
"""test_step: the step of the checkpoint tested (the trial's best on validation)."""


@dataclass
class TrialRow:
    trial: str
    point: dict
    metrics: dict
    """The trial's last report to Tune (step, val/*, losses...)."""
    curve: list[tuple[int, float]]
    """(step, selection metric) of every report: the learning curve."""
    error: str | None
    stopped_early: bool
    checkpoint: Any = None
    """The trial's last checkpoint reported to Tune (a ray.tune.Checkpoint), or None."""
    test: dict = field(default_factory=dict)

    @property
    def out_dir(self) -> str:
        return str(self.metrics.get("out_dir", ""))


def collect(results, keys: list[str], metric: str, mode: str, steps: int) -> list[TrialRow]:
    """TrialRows of a Tune ResultGrid, best first: trials that ran to the end by the last value of
    `metric`, then those stopped early, then failed ones."""
    rows = []
    for r in results:
        m = dict(r.metrics or {})
        df = r.metrics_dataframe
        curve = [] if df is None or metric not in df else \
            [(int(s), float(v)) for s, v in zip(df["step"], df[metric]) if not math.isnan(v)]
        error = None if r.error is None else str(r.error).strip().splitlines()[-1]
        done = int(m.get("step", 0))
        rows.append(TrialRow(trial=str(m.get("trial_id") or Path(r.path).name),
                             point={k: r.config.get(k) for k in keys}, metrics=m, curve=curve, error=error,
                             checkpoint=r.checkpoint,
                             stopped_early=error is None and done < steps))
    # A trial that ASHA stopped was compared at an earlier step: those that ran to the end rank first.
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda t: (t.error is not None or metric not in t.metrics, t.stopped_early,
                                       sign * float(t.metrics.get(metric, 0.0))))


def evaluate_on_test(row: TrialRow, base: Config) -> dict:
    """The test metrics of a trial's best checkpoint on validation (checkpoints/best, by the spec's
    metric; else the last one reported to Tune), from the final evaluation's first model row; also
    writes <trial>/eval (eval.json, eval.md). Called once, for the trial selected on validation."""
    from tgan.evaluate import evaluate
    from tgan.train import checkpoint as ckpt

    best = ckpt.best_checkpoint(row.out_dir)
    if best is None and row.checkpoint is None:
        raise FileNotFoundError(f"trial {row.trial}: no checkpoint in {row.out_dir} or reported to Tune to "
                                "evaluate on test")
    # The best on validation is a copy in the trial's out_dir; the others live in Ray's storage only.
    with contextlib.nullcontext(best) if best is not None else row.checkpoint.as_directory() as path:
        step = int(ckpt.load_checkpoint(path, whole=False)["step"])
        cfg, nets = ckpt.load_networks(path)
    cfg.eval = base.eval
    table = evaluate(cfg, nets, Path(row.out_dir) / "eval", metrics_path=Path(row.out_dir) / "metrics.jsonl")
    features, scores = next((n, s) for n, s in table["rows"].items() if n.startswith("model "))
    k = str(min(9, table["max_k"]))
    return {"test_map": scores["map"], "test_knn1": scores["knn"]["1"], "test_knn9": scores["knn"][k],
            "test_probe": scores["probe_accuracy"], "test_step": step, "test_features": features}


def _val_columns(rows: list[TrialRow]) -> list[str]:
    return sorted({k for r in rows for k in r.metrics if k.startswith("val/")})


def write_csv(rows: list[TrialRow], keys: list[str], path: Path) -> None:
    vals = _val_columns(rows)
    header = ["trial", *keys, "steps", "stopped_early", *(v.replace("/", "_") for v in vals), *TEST_COLUMNS,
              "error", "out_dir"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([r.trial, *(r.point[k] for k in keys), r.metrics.get("step", 0), r.stopped_early,
                        *(r.metrics.get(v, "") for v in vals), *(r.test.get(t, "") for t in TEST_COLUMNS),
                        r.error or "", r.out_dir])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(rows: list[TrialRow], keys: list[str], metric: str) -> str:
    """The trials best first; validation metrics in %, the test columns filled for the best trial."""
    vals = _val_columns(rows)
    head = ["trial", *keys, "steps", "stopped early", *vals, "test mAP", "test 1-NN", "test 9-NN", "test probe",
            "tested step"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        if r.error:
            cells = [r.trial, *(_cell(r.point[k]) for k in keys), f"failed: {r.error}"] + [""] * (len(head) - len(keys) - 2)
        else:
            pct = (lambda v: "" if v in ("", None) else f"{100 * float(v):.2f}")
            cells = [r.trial, *(_cell(r.point[k]) for k in keys), str(r.metrics.get("step", 0)),
                     "yes" if r.stopped_early else "no", *(pct(r.metrics.get(v)) for v in vals),
                     *(pct(r.test.get(t)) for t in TEST_COLUMNS[:-1]), _cell(r.test.get("test_step"))]
        lines.append("| " + " | ".join(cells) + " |")
    return f"Ranked by the last {metric} (validation split); test columns: the selected trial only.\n\n" + \
        "\n".join(lines) + "\n"


def plots(rows: list[TrialRow], keys: list[str], metric: str, log_keys: set[str], out: Path) -> list[Path]:
    """<metric>_vs_<key>.png for every swept key and curves.png; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    name = metric.replace("/", "_")
    written = []
    done = [r for r in rows if not r.error and metric in r.metrics]
    for key in keys:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [r.point[key] for r in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        positions = xs if numeric else [str(x) for x in xs]
        ax.scatter(positions, [r.metrics[metric] for r in done],
                   c=["tab:orange" if r.stopped_early else "tab:blue" for r in done])
        if numeric and key in log_keys:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=f"{metric} (last; orange = stopped early)", title=f"{metric} vs {key}")
        fig.tight_layout()
        path = out / f"{name}_vs_{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r.curve:
            ax.plot(*zip(*r.curve), marker=".", label=r.trial[-12:])
    ax.set(xlabel="step", ylabel=metric, title="learning curves (validation)")
    if len(rows) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return written + [path]


def ranked(results, base: Config, spec) -> list[TrialRow]:
    """The sweep's trials, best first by the spec's metric (`collect` with the spec's settings)."""
    return collect(results, list(spec.space), spec.metric, spec.mode, base.train.steps)


def finish(results, base: Config, spec) -> list[TrialRow]:
    """Rank the trials, evaluate the best one on test, write sweep.csv, sweep.md and plots/."""
    keys = list(spec.space)
    rows = ranked(results, base, spec)
    out = Path(base.train.out_dir)
    if rows and rows[0].error is None and spec.metric in rows[0].metrics:
        rows[0].test = evaluate_on_test(rows[0], base)
    write_csv(rows, keys, out / "sweep.csv")
    (out / "sweep.md").write_text(markdown(rows, keys, spec.metric))
    plots(rows, keys, spec.metric, {k for k, d in spec.space.items() if d.kind == "loguniform"}, out / "plots")
    return rows
