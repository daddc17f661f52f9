"""Train in this process, no Ray (`tgan train-local`): python launch/train_local.py --config RECIPE [--set k=v] [--dry-run] [--no-eval]"""
from launch.cli import command

main = command("train-local")
if __name__ == "__main__":
    raise SystemExit(main())
