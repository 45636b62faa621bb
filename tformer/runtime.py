"""Where and how the arithmetic runs: device, mixed precision, process group, train/eval mode.

Nothing here changes the model of Vaswani et al. (2017); it is the kit every loop in tformer
shares — the training loop, generation, the data-parallel demo and chapter 12 — so that one rule
decides each of these questions once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn


def _as_device(device: torch.device | str) -> torch.device:
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"device={device!r} is not a device name such as 'cpu' or 'cuda:0'") from error
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device or a str, got {type(device).__name__}")
    return device


def resolve_device(device: torch.device | str | None, name: str = "device") -> torch.device:
    """:func:`pick_device` for a public function's ``device`` argument: ``None`` picks the fastest,
    and a name that is not a device, or a device this machine lacks, is a ``ValueError`` naming
    ``name`` (not a bare error from deep inside torch)."""
    try:
        return pick_device(device)
    except ValueError as error:
        raise ValueError(str(error).replace("prefer=", f"{name}=", 1)) from None


def available_memory() -> int | None:
    """Bytes of memory this machine can still give a process (``MemAvailable`` of
    ``/proc/meminfo``; the free pages elsewhere), or None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


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


def autocast_dtype(device: torch.device | str) -> torch.dtype:
    """The lower-precision type autocast uses on ``device``: bfloat16 where it is supported.

    bfloat16 on the CPU and on GPUs that support it (Ampere and later), float16 on older GPUs and
    on Apple's MPS. bfloat16 keeps float32's 8 exponent bits, so gradients do not underflow;
    float16 has only 5 and needs a gradient scaler (:func:`make_grad_scaler`) on CUDA.
    """
    device = _as_device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16


def training_amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """What tformer's training recipes use unless told otherwise: :func:`autocast_dtype` on CUDA,
    ``None`` (float32) elsewhere — on a CPU, bfloat16 autocast does not speed up models this small
    (chapter 12 measures it) and changes the numbers."""
    device = _as_device(device)
    return autocast_dtype(device) if device.type == "cuda" else None


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
        dtype: ``torch.bfloat16`` or ``torch.float16``; None picks :func:`autocast_dtype`;
            ``torch.float32`` means no autocast.
        enabled: False gives a context that does nothing (plain float32).
    """
    device = _as_device(device)
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={str(device)!r}: autocast here supports 'cpu', 'cuda' and 'mps'")
    if not enabled or dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype is None:
        dtype = autocast_dtype(device)
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
    With bfloat16, with ``dtype=None`` on the CPU, or on the CPU it is a pass-through
    (``scaler.scale(loss) is loss``).
    """
    device = _as_device(device)
    if dtype is None:
        dtype = autocast_dtype(device)
    enabled = device.type == "cuda" and dtype == torch.float16
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=enabled)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` or ``torch.compile`` wrapper (or ``model``).

    Save checkpoints from this, so parameter names carry no ``module.`` / ``_orig_mod.`` prefix.
    """
    while isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model._orig_mod
    return model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model):`` — dropout off inside, the previous train/eval mode restored after.

    The mode is restored in ``finally``, so an exception (or a Ctrl-C) inside the block never
    leaves a model that was training stuck in eval mode, or the other way round.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def is_distributed() -> bool:
    """True inside a process group (``torchrun`` + :func:`tformer.training.distributed.init_distributed`)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True in the process that should print and save (rank 0), and when not distributed."""
    return not is_distributed() or dist.get_rank() == 0


def all_reduce(value: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``value`` combined over all processes (``op`` = ``"sum"`` or ``"max"``); a copy, or
    ``value`` itself with one process."""
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"op={op!r} must be 'sum' or 'max'")
    if is_distributed():
        value = value.clone()
        dist.all_reduce(value, op=ops[op])
    return value


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True if ``flag`` is True on any process: all ranks must stop at the same step under DDP."""
    if not is_distributed():
        return flag
    return bool(all_reduce(torch.tensor([float(flag)], device=device), "max").item() > 0)
