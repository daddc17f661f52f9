"""Fixed-seed losses of every family on the debug recipe (one process, CPU), pinned to the values
recorded before the family extension point was reworked (tests/fixtures/family_losses.json): a
refactor of the loop, the backends or the families must leave training as it was, to 1e-5 (the
exactness contract's tolerance: CPU reductions differ in the last bits with the thread count, 2e-6 seen).

Regenerate the fixture only for an intended change of behaviour:
    python tests/unit/test_family_losses_pinned.py
"""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"
FIXTURE = ROOT / "tests" / "fixtures" / "family_losses.json"
STEPS = 3
RUNS = {
    "bigan": ["model.family=bigan", "data.labelled_batch_size=0"],
    "tribigan": ["model.family=tribigan"],
    "mbgan": ["model.family=mbgan", "data.labelled_batch_size=0"],
    "mbgan_conditional": ["model.family=mbgan", "model.conditional=true", "data.labelled_batch_size=0"],
    "dcgan": ["model.family=dcgan", "data.labelled_batch_size=0"],
    "dcgan_two_g_steps": ["model.family=dcgan", "loss.g_steps_per_d_step=2", "data.labelled_batch_size=0"],
    "tripletgan": ["model.family=tripletgan", "model.embedding_dim=8"],
    "tripletgan_mlp": ["model.family=tripletgan", "model.embedding_dim=8", "model.arch=mlp", "model.norm=weight",
                       "model.input_noise=0.3", "model.hidden_noise=0.5", "loss.feature_matching=hidden"],
}


def losses(shards, out, overrides) -> list[dict[str, float]]:
    """The loss/* and d/* scalars of every step of a STEPS-step run."""
    from tgan.config import load_config
    from tgan.train.loop import train

    cfg = load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", f"train.steps={STEPS}",
                              "train.log_every=1", "train.checkpoint_every=0", *overrides])
    train(cfg)
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k.startswith(("loss/", "d/"))} for row in rows]


@pytest.mark.parametrize("run", list(RUNS))
def test_fixed_seed_losses_match_the_recorded_ones(debug_shards, tmp_path, run):
    want = json.loads(FIXTURE.read_text())[run]
    got = losses(debug_shards, tmp_path / run, RUNS[run])
    assert len(got) == STEPS and [set(r) for r in got] == [set(r) for r in want]
    for step, (g, w) in enumerate(zip(got, want), start=1):
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-5), (run, step, key)


if __name__ == "__main__":
    import tempfile

    from tgan.config import load_config
    from tgan.train.shards import ensure_shards

    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "digits-16"
        ensure_shards(load_config(DEBUG, [f"data.shards={shards}"]).data)
        recorded = {run: losses(shards, Path(tmp) / run, overrides) for run, overrides in RUNS.items()}
    FIXTURE.write_text(json.dumps(recorded, indent=1) + "\n")
    sys.exit(0)
