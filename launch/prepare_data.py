"""Turn a dataset into WebDataset shards (`tgan prepare`): python launch/prepare_data.py --dataset digits --out data/digits"""
from launch.cli import command

main = command("prepare")
if __name__ == "__main__":
    raise SystemExit(main())
