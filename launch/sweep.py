"""Sweep with Ray Tune: python launch/sweep.py --config RECIPE --sweep launch/sweeps/SPEC.yaml [--grid k=v1,v2] [--set k=v] [--resume]

Every trial is one Ray Train run of the recipe (see launch/train.py) reporting live validation
metrics to Tune; the spec (launch/sweeps/, format in cluster/sweep_spec.py) picks the search and the
scheduler. Writes sweep.csv, sweep.md and plots/ into train.out_dir and prints the table best first.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cluster.cli import sweep_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(sweep_main())
