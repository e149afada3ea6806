"""Where a loop runs: one process on CPU or a GPU, or ``torchrun --nproc_per_node N`` (DDP).

:func:`start` reads the torchrun environment, picks the device (a GPU per local rank), joins the
process group (NCCL on GPU, gloo on CPU) and returns a :class:`Runtime`; its methods are the few
collectives a loop needs (:meth:`Runtime.any`, :meth:`Runtime.gather`, :meth:`Runtime.barrier`)
and :meth:`Runtime.wrap` (``torch.compile`` on CUDA, then DistributedDataParallel). Every collective
is a no-op in a single process, so a loop is written once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """Several processes (DDP)."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs and writes outputs."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )


def pick_device(device: str | None, info: DistInfo | None = None) -> torch.device:
    """``auto``/``None`` -> CUDA when available, else CPU; ``cuda`` -> this local rank's GPU."""
    info = info or DistInfo.from_env()
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no GPU; use --device cpu")
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device(device)


def initialized() -> bool:
    """A process group is up."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the process group (1 without one)."""
    return dist.get_world_size() if initialized() else 1


def all_reduce(t: Tensor, op: Any = None) -> Tensor:
    """Sum (or ``op``) ``t`` over ranks in place; ``t`` unchanged without a process group."""
    if initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def unwrap(module: nn.Module) -> nn.Module:
    """The module under DDP's ``.module`` and ``torch.compile``'s ``._orig_mod``."""
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)


@dataclass(frozen=True)
class Runtime:
    """The process's rank information and device; see :func:`start`."""

    info: DistInfo
    device: torch.device

    @property
    def main(self) -> bool:
        return self.info.main

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def wrap(self, module: nn.Module, compile: bool = False) -> nn.Module:
        """``module`` compiled (only on CUDA, when asked) and under DDP (several processes)."""
        if compile and self.cuda:
            module = torch.compile(module)
        if self.info.enabled:
            ids = [self.device.index] if self.cuda else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a collective: call it on all ranks)."""
        if not self.info.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        return float(all_reduce(t, dist.ReduceOp.MAX)) > 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
        if not self.info.enabled:
            return [obj]
        out: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every rank (nothing in a single process)."""
        if self.info.enabled:
            dist.barrier()

    def synchronize(self) -> None:
        """Wait for queued CUDA work (for honest timings); nothing on CPU."""
        if self.cuda:
            torch.cuda.synchronize(self.device)


def start(device: str | None = "auto") -> Runtime:
    """This process's :class:`Runtime`: device picked, process group joined under torchrun, TF32 on CUDA."""
    info = DistInfo.from_env()
    dev = pick_device(device, info)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(info, dev)
