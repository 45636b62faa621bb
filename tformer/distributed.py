"""Scaling up: the device, mixed precision and data-parallel training over several processes.

Nothing here changes the model of Vaswani et al. (2017); it changes where and how fast the same
arithmetic runs. The paper trained on one machine with 8 P100 GPUs (§5.2). The standard way to
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

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_HINT = (
    "Start one process per device with torchrun, which sets these variables, e.g.\n"
    "    torchrun --standalone --nproc_per_node=2 -m tformer.ddp_train --steps 20 --out runs/ddp\n"
    "(`python -m torch.distributed.run` is the same launcher when `torchrun` is not on PATH; "
    "on several machines add --nnodes=N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT). "
    "For one process, train without init_distributed()."
)


def _as_device(device: torch.device | str) -> torch.device:
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"device={device!r} is not a device name such as 'cpu' or 'cuda:0'") from error
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device or a str, got {type(device).__name__}")
    return device


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def pick_device(prefer: torch.device | str | None = None) -> torch.device:
    """The fastest device present: CUDA, then Apple's MPS, then the CPU.

    Args:
        prefer: ask for a device instead (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``);
            a ``ValueError`` says so when it is not available here.
    """
    if prefer is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = _as_device(prefer)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"prefer={str(prefer)!r} but torch.cuda.is_available() is False here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"prefer={str(prefer)!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type == "mps" and not _mps_available():
        raise ValueError(f"prefer={str(prefer)!r} but torch.backends.mps.is_available() is False here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"prefer={str(prefer)!r}: expected 'cpu', 'cuda[:i]' or 'mps'")
    return device


def default_amp_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on CPU and on GPUs that support it (Ampere and later), float16 otherwise.

    bfloat16 keeps float32's 8 exponent bits, so gradients do not underflow; float16 has only 5
    and needs a gradient scaler (:func:`make_grad_scaler`) on CUDA.
    """
    device = _as_device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16


def autocast_context(
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    enabled: bool = True,
) -> contextlib.AbstractContextManager:
    """Run matrix products in lower precision inside ``with autocast_context(device): ...``.

    ``torch.autocast`` decides per operation: matrix products (linear layers, ``matmul``) run
    in ``dtype``; operations that need range, such as ``cross_entropy``, run in float32; the
    rest follow their inputs. The lists differ between CPU and CUDA (on CUDA softmax and layer
    norm are computed in float32, on the CPU they follow their input). Weights stay float32.

    Args:
        device: where the model runs (its type selects the autocast backend).
        dtype: ``torch.bfloat16`` or ``torch.float16``; None picks :func:`default_amp_dtype`;
            ``torch.float32`` means no autocast.
        enabled: False gives a context that does nothing (plain float32).
    """
    device = _as_device(device)
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={str(device)!r}: autocast here supports 'cpu', 'cuda' and 'mps'")
    if not enabled or dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype is None:
        dtype = default_amp_dtype(device)
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(
            f"dtype={dtype} is not a mixed-precision type; expected torch.bfloat16, torch.float16, "
            "torch.float32 (off) or None (automatic)"
        )
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device | str, dtype: torch.dtype | None = None) -> torch.amp.GradScaler:
    """A ``GradScaler`` that is enabled only where it is needed: float16 autocast on CUDA.

    float16's smallest normal number is about 6e-5, so small gradients underflow to zero; the
    scaler multiplies the loss before ``backward`` and divides the gradients before the step.
    With bfloat16 or on the CPU it is a pass-through (``scaler.scale(loss) is loss``).
    """
    device = _as_device(device)
    if dtype is None:
        dtype = default_amp_dtype(device)
    enabled = device.type == "cuda" and dtype == torch.float16
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=enabled)


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
    if not (dist.is_available() and dist.is_initialized()):
        if info.world_size == 1:
            return model
        raise RuntimeError(f"world_size={info.world_size} but no process group: call init_distributed() first")
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (save checkpoints from this, so names have no ``module.``)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Process ``rank``'s share of ``items``: every ``world_size``-th item starting at ``rank``.

    The last ``len(items) % world_size`` items are dropped, so all shards have exactly
    ``len(items) // world_size`` items and every process runs the same number of steps (a
    process that runs one step more would wait forever in the all-reduce). This is the order of
    ``torch.utils.data.DistributedSampler(shuffle=False, drop_last=True)``.
    """
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a sequence (list, tuple, range), got {type(items).__name__}")
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    usable = len(items) - len(items) % world_size
    return [items[i] for i in range(rank, usable, world_size)]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over all processes (a copy; ``value`` itself with one process)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def world_size() -> int:
    """The number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalMeanLoss(nn.Module):
    """This process's share of the mean loss per target token over *all* processes' tokens.

    DDP averages gradients: it computes (1/W) Σ_r ∇L_r over the W processes. If each process
    used its own mean L_r = S_r / n_r (S_r its summed loss, n_r its non-pad target tokens), the
    result would be the gradient of the *mean of the means*, which equals the gradient of the
    global mean S / N (N = Σ_r n_r) only when every n_r is N / W. Equal numbers of sentences do
    not give equal numbers of tokens, so this loss returns L_r = W · S_r / N instead, with N
    all-reduced across processes; then (1/W) Σ_r ∇L_r = ∇(S / N) exactly, as on one process
    with the whole batch. On one process it is the ordinary mean.

    Args:
        loss_sum: a loss with ``reduction="sum"`` that skips padding, e.g.
            ``tformer.train.LabelSmoothingLoss(0.1, reduction="sum")``.
        ignore_index: the padding id that ``loss_sum`` skips (tokens that are not counted).
    """

    def __init__(self, loss_sum: nn.Module, ignore_index: int = 0) -> None:
        super().__init__()
        if not isinstance(loss_sum, nn.Module):
            raise TypeError(f"loss_sum must be a torch.nn.Module, got {type(loss_sum).__name__}")
        if getattr(loss_sum, "reduction", "sum") != "sum":
            raise ValueError(
                f"loss_sum must sum over tokens (reduction='sum'), got reduction={loss_sum.reduction!r}"
            )
        self.loss_sum, self.ignore_index = loss_sum, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, T, V), ``target`` (B, T) → scalar W · S_r / N."""
        n_local = (target != self.ignore_index).sum().to(torch.float64)
        n_global = all_reduce_sum(n_local).clamp(min=1)  # N, the same on every process
        summed = self.loss_sum(logits, target)  # S_r
        return summed * (world_size() / n_global).to(summed.dtype)


def is_main_process() -> bool:
    """True in the process that should print and save (rank 0), and when not distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
