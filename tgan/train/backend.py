"""Backends: who wraps the trained networks, runs backward, measures and clips gradients, steps the
optimizers and saves their state. The loop only talks to this interface, so the plain/DDP backend
here and the DeepSpeed backend in cluster/ are interchangeable.

One optimizer (Adam, as in both papers) per optimizer group of the family (`tgan.families.base.Group`),
at the learning rate of the group's role (`Group.lr`: optim.lr_d or optim.lr_g, both default optim.lr).
Both backends run the same guarded step (`guarded_step`): backward, gradient norms, one agreed
finite-or-skip decision across ranks, then step or skip.
"""
from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tgan import dist
from tgan.config import Config, ConfigError, OptimConfig
from tgan.families.base import Group
from tgan.train import precision
from tgan.train.checkpoint import safe_load

SCALERS = "_grad_scalers"
"""Key of the fp16 GradScalers' states in optim.pt (next to one optimizer state per group)."""

# DDP's flag for "do not broadcast buffers at each forward": torch 2.13 renamed broadcast_buffers
# (now a FutureWarning) to forward_sync_buffers. The new flag still broadcasts the buffers once at
# construction, which changes nothing here: every rank has built or loaded the same weights and buffers.
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                  else {"broadcast_buffers": False})


@dataclass
class StepResult:
    """What one optimizer step of a group did."""

    grad_norms: dict[str, float]
    """L2 norm of each network's gradient in the group, measured before clipping."""
    finite: bool
    """False when the loss or a gradient norm was not finite: the optimizer step was skipped."""


class Backend(abc.ABC):
    """The training state the loop does not touch directly: wrapped networks and optimizers."""

    @abc.abstractmethod
    def setup(self, nets: dict[str, nn.Module], groups: Sequence[Group], optim_cfg: OptimConfig,
              device: torch.device) -> None:
        """Take ownership of `nets` (already on `device`), wrap them and build one optimizer per group."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context each phase's forward runs in (mixed precision; none by default)."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def module(self, name: str) -> nn.Module:
        """The network to call when it is trained in this phase (DDP- or DeepSpeed-wrapped)."""

    @abc.abstractmethod
    def raw(self, name: str) -> nn.Module:
        """The plain nn.Module: called frozen by the other phases, saved in checkpoints, evaluated."""

    @abc.abstractmethod
    def step(self, group: str, loss: torch.Tensor) -> StepResult:
        """Backward `loss` through the group's networks, measure per-network gradient norms, clip to
        optim.grad_clip, then step the group's optimizer, or skip it when anything is non-finite.
        Every rank must reach the same decision. Gradients are cleared either way."""

    @abc.abstractmethod
    def save(self, directory: Path) -> None:
        """Called on every rank: write what resuming needs besides the networks (optimizer state; a
        DeepSpeed backend writes its engines' per-rank files) into `directory`."""

    @abc.abstractmethod
    def load(self, directory: Path) -> None:
        """Called on every rank after `setup`: restore what `save` wrote."""

    @abc.abstractmethod
    def apply_optim(self, optim_cfg: OptimConfig) -> None:
        """Set every group's learning rate and betas from `optim_cfg`. Called after `load`, which
        restores the saved ones along with the optimizer state: a resume's new values take effect."""


def guarded_step(loss: torch.Tensor, names: Sequence[str], *, backward: Callable[[torch.Tensor], None],
                 norm: Callable[[str], torch.Tensor], apply: Callable[[torch.Tensor], None],
                 skip: Callable[[], None]) -> StepResult:
    """The step both backends share: `backward(loss)`, `norm(name)` of each network's gradient, then
    `apply(total_norm)` when the loss and every norm are finite on every rank, else `skip()`.

    The rank agreement is explicit: DDP all-reduces gradients, but a loss can be inf on one rank with
    finite gradients, and no rank may step while another skips. The norms and the decision come back
    from the device in one transfer.
    """
    backward(loss)
    norms = torch.stack([norm(n).float().to(loss.device) for n in names])
    total = torch.linalg.vector_norm(norms)  # non-finite when any norm is
    ok = (torch.isfinite(loss.detach()) & torch.isfinite(total)).to(torch.int32)
    if dist.world_size() > 1:
        torch_dist.all_reduce(ok, op=torch_dist.ReduceOp.MIN)
    values = torch.cat([norms.detach(), ok.reshape(1).to(norms.dtype)]).tolist()
    finite = bool(values[-1])
    if finite:
        apply(total)
    else:
        skip()
    return StepResult(grad_norms=dict(zip(names, values[:-1])), finite=finite)


def set_hyperparameters(optimizer: torch.optim.Optimizer, group: Group, cfg: OptimConfig) -> None:
    """The group's learning rate (by its role) and Adam betas from `cfg`, in every param group of `optimizer`."""
    for param_group in optimizer.param_groups:
        param_group["lr"] = group.lr(cfg)
        param_group["betas"] = (cfg.beta1, cfg.beta2)


def prepare_network(net: nn.Module, device: torch.device, world: int, *, sync_batchnorm: bool,
                    channels_last: bool) -> nn.Module:
    """SyncBatchNorm (model.sync_batchnorm, with more than one rank) and channels_last, applied before
    DDP wraps the network. The result is the raw module that checkpoints save: SyncBatchNorm keeps
    BatchNorm's parameter and buffer names, so checkpoints load either way."""
    if sync_batchnorm and world > 1:
        if device.type == "cpu":
            raise ConfigError(f"model.sync_batchnorm=true needs GPU workers: torch {torch.__version__}'s "
                              "SyncBatchNorm refuses CPU tensors; set model.sync_batchnorm=false on CPU")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def grad_norm(module: nn.Module) -> torch.Tensor:
    """L2 norm over all of a module's gradients (0 when none has a gradient), left on the device."""
    norms = [p.grad.detach().norm(2) for p in module.parameters() if p.grad is not None]
    if not norms:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(norms))


class TorchBackend(Backend):
    """Plain PyTorch in one process; DistributedDataParallel per network when a process group with
    more than one rank exists (each network is wrapped on its own so a phase can train some and call
    the others raw and frozen).

    Options (from the config, see `for_config`): mixed precision (tgan.train.precision), SyncBatchNorm
    across ranks, channels_last, torch.compile of the wrapped networks."""

    def __init__(self, *, precision: str = "fp32", sync_batchnorm: bool = False, channels_last: bool = False,
                 compile: bool = False) -> None:
        self._raw: dict[str, nn.Module] = {}
        self._wrapped: dict[str, nn.Module] = {}
        self._groups: dict[str, tuple[str, ...]] = {}
        self._specs: dict[str, Group] = {}
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._scalers: dict[str, torch.amp.GradScaler] = {}
        self._grad_clip = 0.0
        self._precision, self._sync_bn = precision, sync_batchnorm
        self._channels_last, self._compile = channels_last, compile
        self._device = torch.device("cpu")

    @classmethod
    def for_config(cls, cfg: Config) -> TorchBackend:
        return cls(precision=cfg.train.precision, sync_batchnorm=cfg.model.sync_batchnorm,
                   channels_last=cfg.model.channels_last, compile=cfg.train.compile)

    def autocast(self):
        return precision.autocast(self._precision, self._device)

    def setup(self, nets, groups, optim_cfg, device):
        self._device = device
        self._raw = {name: prepare_network(net, device, dist.world_size(), sync_batchnorm=self._sync_bn,
                                           channels_last=self._channels_last) for name, net in nets.items()}
        self._groups = {g.name: g.networks for g in groups}
        self._specs = {g.name: g for g in groups}
        self._grad_clip = optim_cfg.grad_clip
        distributed = dist.world_size() > 1
        for name, net in self._raw.items():
            if distributed:
                ids = [device.index] if device.type == "cuda" else None
                # No buffer broadcast: a phase calls a network several times (E on x and on xl), and
                # the broadcast at each call overwrites BatchNorm running stats in place that the
                # previous call saved for backward (autograd error on torch 2.11). Running stats
                # stay per rank and only matter in eval mode; checkpoints keep rank 0's.
                self._wrapped[name] = DistributedDataParallel(net, device_ids=ids, **NO_BUFFER_SYNC)
            else:
                self._wrapped[name] = net
            if self._compile:
                self._wrapped[name] = torch.compile(self._wrapped[name])
        for group in groups:
            params = [p for n in group.networks for p in self._raw[n].parameters()]
            self._optimizers[group.name] = torch.optim.Adam(
                params, lr=group.lr(optim_cfg), betas=(optim_cfg.beta1, optim_cfg.beta2))
            scaler = precision.grad_scaler(self._precision, device)
            if scaler is not None:
                self._scalers[group.name] = scaler

    def module(self, name):
        return self._wrapped[name]

    def raw(self, name):
        return self._raw[name]

    def step(self, group, loss):
        names = self._groups[group]
        optimizer = self._optimizers[group]
        scaler = self._scalers.get(group)

        def backward(loss: torch.Tensor) -> None:
            if scaler is None:
                loss.backward()
                return
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # true gradients for the norms, the clipping and the step

        def apply(total: torch.Tensor) -> None:
            if self._grad_clip > 0:
                params = [p for n in names for p in self._raw[n].parameters() if p.grad is not None]
                torch.nn.utils.clip_grads_with_norm_(params, self._grad_clip, total)
            # optimizer.step itself, not scaler.step: the finite check is already made (and agreed
            # across ranks) by guarded_step; scaler.step would read its inf flag back once more.
            optimizer.step()

        result = guarded_step(loss, names, backward=backward, norm=lambda n: grad_norm(self._raw[n]),
                              apply=apply, skip=lambda: None)
        if scaler is not None:
            scaler.update()  # halves the scale after an overflow, grows it after enough clean steps
        optimizer.zero_grad(set_to_none=True)
        return result

    def save(self, directory):
        # Under DDP every rank holds the same optimizer state; one copy is enough.
        if dist.rank() == 0:
            state = {g: opt.state_dict() for g, opt in self._optimizers.items()}
            if self._scalers:
                state[SCALERS] = {g: s.state_dict() for g, s in self._scalers.items()}
            torch.save(state, Path(directory) / "optim.pt")

    def load(self, directory):
        path = Path(directory) / "optim.pt"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {directory} has no optim.pt (was it written by another backend?)")
        states = safe_load(path)
        missing = sorted(set(self._optimizers) - set(states))
        if missing:
            raise ValueError(f"{path} has no optimizer state for group {missing[0]} (groups saved: {sorted(states)})")
        for group, opt in self._optimizers.items():
            opt.load_state_dict(states[group])
        for group, scaler in self._scalers.items():  # none saved (an fp32 checkpoint): a fresh scale
            if group in states.get(SCALERS, {}):
                scaler.load_state_dict(states[SCALERS][group])

    def apply_optim(self, optim_cfg):
        for group, opt in self._optimizers.items():
            set_hyperparameters(opt, self._specs[group], optim_cfg)
