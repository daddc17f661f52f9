"""Train one run in this process: python launch/train.py --config launch/recipes/debug.yaml [--set k=v] [--dry-run]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tgan.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
