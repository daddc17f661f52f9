"""Count the host synchronisations code would make on a GPU, on the CPU.

A CUDA host sync happens where the host needs a value or a shape that only the device knows: reading
a scalar (`.item()`, `int()`, `float()`, `bool()` -> aten._local_scalar_dense), `.tolist()`, and ops
whose output shape depends on the data (nonzero, unique, masked_select, boolean-mask indexing). On
the CPU none of these waits, but all of them still pass through the dispatcher (tolist excepted,
which is wrapped), so a TorchDispatchMode sees and counts them. (On a GPU,
torch.cuda.set_sync_debug_mode("warn") reports the same places.)

Not counted: the optimizers' reads of their step counters (torch.optim's `_get_value`): Adam keeps
`step` on the CPU on every device (unless capturable or fused) precisely so that reading it waits on
nothing; on a CPU run those reads would otherwise be 44 of a tribigan step's "syncs".
"""
from __future__ import annotations

import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DATA_DEPENDENT = {"aten._local_scalar_dense", "aten.nonzero", "aten._unique2", "aten.unique_dim",
                  "aten.unique_consecutive", "aten.masked_select", "aten.repeat_interleave"}


def _in_optimizer() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if "/torch/optim/" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


class HostSyncs(TorchDispatchMode):
    """`with HostSyncs() as s: ...` then `s.count` (total) and `s.where` (by op)."""

    def __init__(self):
        super().__init__()
        self.where: Counter[str] = Counter()
        self._tolist = None

    @property
    def count(self) -> int:
        return sum(self.where.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        if name == "aten._local_scalar_dense" and _in_optimizer():
            return func(*args, **(kwargs or {}))
        if name in DATA_DEPENDENT or (name in ("aten.index", "aten.index_put", "aten.index_put_")
                                      and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                              for i in (args[1] or ()) if i is not None)):
            self.where[name] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        original = self._tolist = torch.Tensor.tolist
        where = self.where

        def tolist(t):
            where["Tensor.tolist"] += 1
            return original(t)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)
