"""Train on Ray Train: python launch/train.py --config launch/recipes/debug.yaml [--set k=v] [--resume] [--dry-run]

Joins the cluster of RAY_ADDRESS or `ray job submit`, else starts a local Ray in this process.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cluster.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
