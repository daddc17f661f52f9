"""The DeepSpeed backend: one engine per optimizer group of the family, ZeRO stage
0/1/2 and fp32/bf16/fp16 from `cluster.deepspeed`, on the process group that already exists (Ray
Train's, or a one-rank gloo group made here for a single process).

Two engines in one process follow DeepSpeed's own GAN example. They break under ZeRO-2 when one
engine's backward runs through the other's parameters (DeepSpeed issue 4923); the loop's PhaseRunner
already freezes the networks a phase does not train and calls their raw modules, which is what
makes ZeRO 0, 1 and 2 work here. Calling the sub-networks of an engine directly (not engine(...))
is fine up to ZeRO-2, where parameters are never partitioned away from the forward pass; ZeRO-3
is therefore refused.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import deepspeed
import torch
import torch.distributed as torch_dist
from deepspeed.utils import safe_get_full_grad
from torch import nn

from cluster.ray_env import free_port
from tgan.config import ConfigError, OptimConfig
from tgan.train.backend import Backend, guarded_step, set_hyperparameters

TAG = "ds"


def check_config(ds: dict, *, on_gpu: bool) -> None:
    """Refuse cluster.deepspeed settings this backend cannot honour, naming the field, before any
    worker starts (and again in each worker, which knows its device)."""
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise ConfigError(f"cluster.deepspeed.zero_optimization.stage={stage!r} is invalid: expected 0, 1 or 2 "
                          "(two engines whose phases call each other's networks rule out ZeRO-3)")
    for half in ("bf16", "fp16"):
        if ds.get(half, {}).get("enabled", False) and not on_gpu:
            raise ConfigError(f"cluster.deepspeed.{half}.enabled=true needs GPUs (cluster.use_gpu=true, "
                              f"train.device cuda): on CPU DeepSpeed trains in fp32, so set {half}.enabled=false")
    if ds.get("bf16", {}).get("enabled", False) and ds.get("fp16", {}).get("enabled", False):
        raise ConfigError("cluster.deepspeed.bf16.enabled and cluster.deepspeed.fp16.enabled are both true: pick one")


def engine_config(user: dict, *, batch_size: int, grad_clip: float) -> dict:
    """DeepSpeed config of one engine: the user's cluster.deepspeed section over our defaults; the
    batch and clipping always come from data.batch_size and optim.grad_clip (one source of truth)."""
    cfg = {"steps_per_print": 10**9, "zero_allow_untested_optimizer": True}  # we pass torch's Adam
    cfg.update(copy.deepcopy(user))
    cfg.update({"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": 1,
                "gradient_clipping": grad_clip})
    cfg.pop("train_batch_size", None)
    return cfg


def _ensure_process_group(device: torch.device) -> None:
    """DeepSpeed needs a process group; a single process outside Ray Train gets a one-rank one.
    It also insists on LOCAL_RANK, which Ray Train and torchrun set; a group made by hand may not."""
    if torch_dist.is_initialized():
        if "LOCAL_RANK" not in os.environ:
            os.environ["LOCAL_RANK"] = str(torch.cuda.current_device() if device.type == "cuda" else 0)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def _cast_hooks(net: nn.Module, dtype: torch.dtype) -> None:
    """Half-precision engines hold half weights: cast floating inputs to them and outputs back to
    fp32, so the losses (and frozen calls from the other phase) stay fp32 and unchanged. The engine
    casts parameters only; BatchNorm's running statistics follow here, or its kernels refuse the
    mix ("Expected running_mean to have type BFloat16 but got Float", seen on an H100)."""
    for buf in net.buffers():
        if buf.is_floating_point():
            buf.data = buf.data.to(dtype)

    def pre(_module, args, kwargs):
        cast = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        return tuple(cast), kwargs

    def post(_module, _args, output):
        return output.float() if torch.is_tensor(output) and output.is_floating_point() else output

    net.register_forward_pre_hook(pre, with_kwargs=True)
    net.register_forward_hook(post)


class DeepSpeedBackend(Backend):
    """Backend over one DeepSpeed engine per optimizer group (see the module docstring)."""

    def __init__(self, ds_config: dict, *, batch_size: int):
        self._user = ds_config
        self._batch_size = batch_size
        self._raw: dict[str, nn.Module] = {}
        self._groups: dict[str, tuple[str, ...]] = {}
        self._specs: dict = {}
        self._engines: dict = {}

    def setup(self, nets, groups, optim_cfg: OptimConfig, device):
        check_config(self._user, on_gpu=device.type == "cuda")
        _ensure_process_group(device)
        self._raw, self._groups = dict(nets), {g.name: g.networks for g in groups}
        self._specs = {g.name: g for g in groups}
        config = engine_config(self._user, batch_size=self._batch_size, grad_clip=optim_cfg.grad_clip)
        for group in groups:
            container = nn.ModuleDict({n: self._raw[n] for n in group.networks})
            optimizer = torch.optim.Adam(container.parameters(), lr=group.lr(optim_cfg),
                                         betas=(optim_cfg.beta1, optim_cfg.beta2))
            engine, *_ = deepspeed.initialize(model=container, optimizer=optimizer, config=copy.deepcopy(config),
                                              dist_init_required=False)
            self._engines[group.name] = engine
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}
        for key, dtype in half.items():
            if config.get(key, {}).get("enabled", False):
                for net in self._raw.values():
                    _cast_hooks(net, dtype)

    def module(self, name):
        # The engine's module holds the very same sub-networks; gradients are reduced by
        # engine.backward/step, so the phase calls the sub-network itself.
        return self._raw[name]

    def raw(self, name):
        return self._raw[name]

    def step(self, group, loss):
        engine = self._engines[group]

        def norm(name: str) -> torch.Tensor:
            # Full (reduced across ranks) gradient of every parameter, before clipping: the same value
            # on every rank, whatever the ZeRO stage partitioned.
            grads = [safe_get_full_grad(p) for p in self._raw[name].parameters()]
            parts = [g.float().norm(2) for g in grads if g is not None]
            return torch.linalg.vector_norm(torch.stack(parts)) if parts else torch.zeros((), device=loss.device)

        # DeepSpeed clips (gradient_clipping) inside engine.step, so `apply` ignores the total norm.
        return guarded_step(loss, self._groups[group], backward=engine.backward, norm=norm,
                            apply=lambda _total: engine.step(), skip=lambda: self._drop_gradients(engine))

    @staticmethod
    def _drop_gradients(engine) -> None:
        """Skip a step: forget the gradients without touching weights or Adam state. ZeRO 1/2 keep
        reduced gradients in partition buffers; this is what their own overflow branch clears."""
        opt = engine.optimizer
        if hasattr(opt, "averaged_gradients"):
            opt.zero_grad(set_to_none=True)
            release = getattr(opt, "_release_preflattened_grad_buffers", None)
            if release is not None:
                release()
            for key in list(opt.averaged_gradients):
                opt.averaged_gradients[key] = None
                if hasattr(opt, "all_grad_tensors"):
                    opt.all_grad_tensors[key] = None
        engine.zero_grad()

    def save(self, directory):
        # Every rank writes its ZeRO partition of the optimizer state; rank 0 the module weights.
        for group, engine in self._engines.items():
            engine.save_checkpoint(str(Path(directory) / f"deepspeed_{group}"), tag=TAG, save_latest=False)

    def load(self, directory):
        for group, engine in self._engines.items():
            path = Path(directory) / f"deepspeed_{group}"
            if not (path / TAG).is_dir():
                raise FileNotFoundError(f"checkpoint {directory} has no {path.name}/{TAG} (was it written by "
                                        "cluster.backend=ddp? resume with the backend that wrote it)")
            load_path, _ = engine.load_checkpoint(str(path), tag=TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
            if load_path is None:
                raise FileNotFoundError(f"DeepSpeed could not load {path}/{TAG}")

    def apply_optim(self, optim_cfg):
        # engine.optimizer is torch's Adam itself (ZeRO-0 fp32) or DeepSpeed's wrapper around it,
        # whose param_groups are the wrapped Adam's.
        for group, engine in self._engines.items():
            set_hyperparameters(engine.optimizer, self._specs[group], optim_cfg)
