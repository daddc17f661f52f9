"""Evaluate a checkpoint (`tgan evaluate`): python launch/evaluate.py CHECKPOINT [--set eval.max_test=1000] [--out DIR]"""
from launch.cli import command

main = command("evaluate")
if __name__ == "__main__":
    raise SystemExit(main())
