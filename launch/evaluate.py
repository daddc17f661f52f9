"""Evaluate a checkpoint and print its table: python launch/evaluate.py CHECKPOINT [--set eval.max_test=1000] [--out DIR]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tgan.app.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
