"""`tgan evaluate` (launch/evaluate.py): checkpoint (+ eval/data overrides) -> evaluate -> print the table."""
from __future__ import annotations

import sys
from pathlib import Path

from tgan.config import ConfigError, apply_overrides, dump_yaml, parse_overrides
from tgan.data.index import DataError
from tgan.resolve import check
from tgan.train.checkpoint import CheckpointError

# The networks come from the checkpoint, so only what reads data or scores features may change;
# train.seed stays, because it defines the random-init baseline (the run's own initial weights).
OVERRIDABLE = ("eval.", "data.")
OVERRIDABLE_KEYS = ("train.device",)


def overridable(item: str) -> bool:
    """Whether the --set item (KEY=VALUE, split as tgan.config.parse_overrides splits it) may change."""
    key = item.partition("=")[0].strip()
    return key.startswith(OVERRIDABLE) or key in OVERRIDABLE_KEYS


def run_directory(checkpoint: Path) -> Path | None:
    """<out_dir> of the run that wrote <out_dir>/checkpoints/step_N, where its metrics.jsonl lives."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def run_evaluate(checkpoint: str, overrides: list[str], *, out: str | None = None) -> int:
    """Evaluate `checkpoint` (a checkpoint or run directory) with the `overrides` into `out`; prints
    the table and returns the exit code."""
    bad = [o for o in overrides if not overridable(o)]
    if bad:
        print(f"error: --set {bad[0]}: only eval.*, data.* and train.device can change at "
              "evaluation (the networks and their config come from the checkpoint)", file=sys.stderr)
        return 2
    # Imported here so that argument errors need neither torch's model code nor the data code.
    from tgan.data.index import load_index
    from tgan.dist import resolve_device
    from tgan.eval_inputs import check_eval_inputs, open_networks
    from tgan.eval.metrics import check_gallery
    from tgan.evaluate import evaluate, evaluated_files

    try:
        found = open_networks(checkpoint)
        if found is None:
            raise FileNotFoundError(f"{checkpoint} is neither a checkpoint directory (no state.pt) nor a run "
                                    "directory with checkpoints/step_* or checkpoints/best in it")
        checkpoint, saved, nets = found
        run_dir = run_directory(checkpoint)
        out = Path(out) if out else (run_dir or checkpoint) / "eval" / checkpoint.name
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"--out {out} is a file: give a directory for eval.json, eval.md and the pictures")
        # The checkpoint's config, with the overrides applied the same way as for training.
        cfg = check(apply_overrides(saved, parse_overrides(overrides)))
        index = load_index(cfg.data.shards)
        check_gallery(cfg.eval, index.split("train").count, index.location())
        check_eval_inputs(cfg)
        out.mkdir(parents=True, exist_ok=True)  # only now that the settings and the data are accepted
        dump_yaml(cfg, out / "config.yaml")
        device = resolve_device(cfg.train.device)
        for net in nets.values():
            net.to(device)
        metrics = run_dir / "metrics.jsonl" if run_dir else None
        result = evaluate(cfg, nets, out, metrics_path=metrics)
    except (ConfigError, DataError, FileNotFoundError, NotADirectoryError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{cfg.model.family} checkpoint {checkpoint}: {result['num_test']} test queries against "
          f"{result['num_train']} training images (accuracy, mAP and probe in %)")
    print((out / "eval.md").read_text(), end="")
    print(f"written to {out}: {evaluated_files(result)}")
    return 0
