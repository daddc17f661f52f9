"""Train in this process (no Ray), then evaluate:
python launch/train_local.py --config launch/recipes/debug.yaml [--set k=v] [--dry-run] [--no-eval]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tgan.app.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
