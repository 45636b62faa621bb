"""Scaling up: the device, mixed precision and data-parallel training over several processes.

The paper trained on one machine with 8 P100 GPUs (§5.2). The standard way to
share such work is data parallelism: every device holds a copy of the model and a share of every
batch. That is what ``torch.nn.parallel.DistributedDataParallel`` (DDP) does and what this module
sets up.

One process per device is started by ``torchrun``, which tells each process who it is through
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_distributed` reads them, :func:`shard` gives each process its equal part of the data,
and :func:`wrap_ddp` wraps the model so that ``loss.backward()`` averages the gradients of all
processes (an all-reduce) before the optimizer step. Backends: ``gloo`` on CPU, ``nccl`` on GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

import tformer._checks as _checks
from tformer.runtime import is_distributed

T = TypeVar("T")


TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


LAUNCH_HINT = (
    "Start one process per device with torchrun, which sets these variables, e.g.\n"
    "    torchrun --standalone --nproc_per_node=2 -m tformer.recipes.ddp_demo --steps 20 --out runs/ddp\n"
    "(`python -m torch.distributed.run` is the same launcher when `torchrun` is not on PATH; "
    "on several machines add --nnodes=N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT). "
    "For one process, train without init_distributed()."
)



@dataclass(frozen=True)
class DistInfo:
    """Who this process is: ``rank`` of ``world_size`` in total, ``local_rank`` on its machine."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        number = int(value)
    except ValueError as error:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from error
    if number < 0:
        raise ValueError(f"environment variable {name}={number} must be >= 0")
    return number


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` started; return this process's :class:`DistInfo`.

    Args:
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (NVIDIA GPUs); None picks nccl when CUDA is
            available, else gloo.

    Raises:
        RuntimeError: the torchrun environment variables are missing (the message says how to
            launch), or the backend is not built into this PyTorch.
    """
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"init_distributed() needs the environment variables that torchrun sets; missing: "
            f"{', '.join(missing)}.\n{LAUNCH_HINT}"
        )
    rank, world_size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if world_size < 1 or rank >= world_size:
        raise ValueError(f"RANK={rank} must be smaller than WORLD_SIZE={world_size} (and WORLD_SIZE >= 1)")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r}: expected 'gloo' (CPU), 'nccl' (GPU) or None (automatic)")
    if backend == "gloo" and not dist.is_gloo_available():
        raise RuntimeError("backend='gloo' is not built into this PyTorch")
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise RuntimeError("backend='nccl' needs CUDA GPUs and a PyTorch built with NCCL; use 'gloo' on CPU")
    if backend == "nccl" and local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} CUDA device(s); "
            "start at most one process per GPU (torchrun --nproc_per_node=<number of GPUs>)"
        )
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """Move ``model`` to ``info.device`` and wrap it in ``DistributedDataParallel``.

    DDP copies rank 0's parameters to every process at construction, then averages the gradients
    of all processes during ``backward()`` (sum over ranks divided by ``world_size``). With a
    single process and no process group the model is returned unwrapped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(info, DistInfo):
        raise TypeError(f"info must be the DistInfo from init_distributed(), got {type(info).__name__}")
    model = model.to(info.device)
    if not is_distributed():
        if info.world_size == 1:
            return model
        raise RuntimeError(f"world_size={info.world_size} but no process group: call init_distributed() first")
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Process ``rank``'s share of ``items``: every ``world_size``-th item starting at ``rank``.

    The last ``len(items) % world_size`` items are dropped, so all shards have exactly
    ``len(items) // world_size`` items and every process runs the same number of steps (a
    process that runs one step more would wait forever in the all-reduce). This is the order of
    ``torch.utils.data.DistributedSampler(shuffle=False, drop_last=True)``.
    """
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a sequence (list, tuple, range), got {type(items).__name__}")
    _checks.integer("rank", rank)
    _checks.integer("world_size", world_size)
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    usable = len(items) - len(items) % world_size
    return [items[i] for i in range(rank, usable, world_size)]


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun script).

    Every process first waits at a barrier, so none closes its connections while another is
    still using them: a gloo process whose peer has already gone can abort during teardown
    ("terminate called without an active exception") after its work was done.
    """
    if is_distributed():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()

