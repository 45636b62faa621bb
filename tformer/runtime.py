"""Where and how the arithmetic runs: device, mixed precision, process group, train/eval mode.

Nothing here changes the model of Vaswani et al. (2017); it is the kit every loop in tformer
shares — the training loop, generation, the data-parallel demo and chapter 12 — so that one rule
decides each of these questions once.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
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


def peak_memory() -> int | None:
    """Peak resident memory of this process so far, in bytes: ``VmHWM`` of ``/proc/self/status``
    (Linux; writing 5 to ``/proc/self/clear_refs`` resets it), else ``getrusage``'s ``ru_maxrss``
    (KiB on Linux, bytes on macOS), or None where neither exists (Windows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


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


PRECISIONS = ("auto", "float32", "bf16")


def _cpu_flags() -> set[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 dot products in hardware: AVX512-BF16 (Intel since
    Cooper Lake, AMD since Zen 4) or AMX (Intel since Sapphire Rapids).

    Asks PyTorch's own CPU detection (``torch.cpu._is_avx512_bf16_supported`` and
    ``_is_amx_tile_supported``, which oneDNN's bfloat16 kernels use) and, where those do not
    exist, the ``avx512_bf16``/``amx_bf16`` flags of ``/proc/cpuinfo``. Elsewhere PyTorch still
    runs bfloat16, but by converting to float32 and back, which is slower than float32 alone.
    """
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(check) for check in checks):
        return any(check() for check in checks)
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def native_bf16(device: torch.device | str) -> bool:
    """True when ``device`` has bfloat16 arithmetic in hardware: :func:`cpu_has_native_bf16` on the
    CPU, ``torch.cuda.is_bf16_supported()`` on CUDA (Ampere and later); False on Apple's MPS, whose
    autocast type is float16."""
    device = _as_device(device)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False


@functools.cache
def bf16_speedup(device_type: str = "cpu", n: int = 512, repeats: int = 10) -> float:
    """How many times faster an n×n matrix product runs under bfloat16 autocast than in float32 on
    this machine, conversions included: the best of ``repeats`` each, timed alternately on one
    thread (per-core throughput; on a busy machine several threads are time-sliced and their
    timings say more about the load than about the arithmetic). About 30 ms, measured once per
    process. On CUDA a known rule stands in for the measurement: tensor cores run bfloat16
    several times faster than float32, so it returns 2.0 where bfloat16 is supported."""
    if device_type == "cuda":
        return 2.0 if native_bf16("cuda") else 1.0
    if device_type != "cpu":
        return 1.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        best32 = best16 = math.inf
        for i in range(repeats + 1):  # the first round warms both kernels up
            t0 = time.perf_counter()
            torch.mm(a, b)
            t1 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                torch.mm(a, b)
            t2 = time.perf_counter()
            if i:
                best32, best16 = min(best32, t1 - t0), min(best16, t2 - t1)
    finally:
        torch.set_num_threads(threads)
    return best32 / best16


# "auto" picks bfloat16 only when the measured matrix product is at least this much faster: a
# training step also runs element-wise work that bfloat16 does not speed up.
AUTO_MIN_SPEEDUP = 1.2


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """The one rule for the precision tformer trains in: ``torch.float32`` or ``torch.bfloat16``
    (autocast: the weights, the optimizer state and the checkpoints stay float32).

    Args:
        precision: ``"float32"`` (the default of every recipe and of the CLI: the
            chapters' outputs and the 15-minute Tatoeba recipe were measured in float32);
            ``"bf16"`` (a ``ValueError`` where the hardware has no bfloat16 arithmetic, because
            emulated bfloat16 is slower than float32); ``"auto"``: bfloat16 where
            :func:`native_bf16` says the hardware has it *and* :func:`bf16_speedup` measures a
            matrix product at least ``AUTO_MIN_SPEEDUP`` times faster (CPUs with AVX512-BF16 or
            AMX, GPUs from Ampere on), else float32.
        device: where the model trains.
    """
    device = _as_device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {', '.join(map(repr, PRECISIONS))}")
    if precision == "float32":
        return torch.float32
    if precision == "bf16":
        if not native_bf16(device):
            what = ("this CPU has neither AVX512-BF16 nor AMX" if device.type == "cpu"
                    else f"torch reports no bfloat16 support on {device.type}")
            raise ValueError(f"precision='bf16' but {what}; use precision='float32' (or 'auto', which "
                             "falls back to float32)")
        return torch.bfloat16
    if native_bf16(device) and bf16_speedup(device.type) >= AUTO_MIN_SPEEDUP:
        return torch.bfloat16
    return torch.float32


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
