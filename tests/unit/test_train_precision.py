"""The GPU-ready options of the DDP / one-process step, on the CPU: bf16 and fp16 (GradScaler)
training of the debug recipe, SyncBatchNorm's conversion and its refusal on CPU, channels_last."""
import pytest
import torch
from torch import nn

from tgan.config import ConfigError, load_config
from tgan.train.backend import TorchBackend, prepare_network
from tgan.train.loop import train

DEBUG = "launch/recipes/debug.yaml"


def _train(tmp_path, shards, *overrides):
    cfg = load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={tmp_path}", "train.steps=2",
                              "train.checkpoint_every=0", *overrides])
    return train(cfg)


def test_bf16_autocast_trains_the_debug_recipe(tmp_path, debug_shards):
    with TorchBackend(precision="bf16").autocast():
        assert nn.Conv2d(1, 2, 3)(torch.randn(1, 1, 5, 5)).dtype == torch.bfloat16
    result = _train(tmp_path, debug_shards, "train.precision=bf16")
    assert result.step == 2 and result.scalars["nonfinite_skipped"] == 0
    losses = [v for k, v in result.scalars.items() if k.startswith("loss/")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for net in result.nets.values() for p in net.parameters())


def test_fp16_runs_with_a_grad_scaler_that_is_checkpointed(tmp_path, debug_shards):
    result = _train(tmp_path, debug_shards, "train.precision=fp16")
    assert result.step == 2
    state = torch.load(result.checkpoint / "optim.pt", weights_only=True)
    scales = {group: s["scale"] for group, s in state["_grad_scalers"].items()}
    assert set(scales) == {"D", "G"} and all(0 < s <= 2.0**16 for s in scales.values())


def test_precision_is_checked_against_the_backend():
    with pytest.raises(ConfigError, match="train.precision='fp8'"):
        load_config(DEBUG, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="train.precision='bf16'.*cluster.deepspeed"):
        load_config(DEBUG, ["train.precision=bf16", "cluster.backend=deepspeed"])


def test_sync_batchnorm_is_refused_on_cpu_ranks_and_converts_on_gpus():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ConfigError, match="model.sync_batchnorm=true needs GPU workers"):
        prepare_network(net, torch.device("cpu"), 2, sync_batchnorm=True, channels_last=False)
    same = prepare_network(net, torch.device("cpu"), 1, sync_batchnorm=True, channels_last=False)
    assert isinstance(same[1], nn.BatchNorm2d)  # one rank: plain BatchNorm is already the global batch
    if torch.cuda.is_available():
        synced = prepare_network(net.cuda(), torch.device("cuda"), 2, sync_batchnorm=True, channels_last=False)
        assert isinstance(synced[1], nn.SyncBatchNorm)
        assert synced.state_dict().keys() == net.state_dict().keys()


def test_channels_last_networks_compute_the_same():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.Conv2d(4, 2, 3))
    x = torch.randn(2, 3, 8, 8)
    want = net(x)
    fast = prepare_network(net, torch.device("cpu"), 1, sync_batchnorm=False, channels_last=True)
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x), want, rtol=1e-5, atol=1e-6)
