"""Sweep with Ray Tune: python launch/sweep.py --config RECIPE --grid loss.alpha=0.2,2,20 [--grid ...] [--set k=v]

Every grid point is one Ray Train run of the recipe (see launch/train.py), evaluated at its end;
the table of trials is printed best first (--metric map | knn9 | probe).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cluster.cli import sweep_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(sweep_main())
