"""Train on Ray Train (`tgan train`): python launch/train.py --config launch/recipes/debug.yaml [--set k=v] [--resume] [--dry-run]"""
from launch.cli import command

main = command("train")
if __name__ == "__main__":
    raise SystemExit(main())
