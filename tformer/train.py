"""Training: label smoothing, the warmup schedule, the loop, validation (Vaswani et al., 2017, §5).

The paper trains with teacher forcing (the decoder reads the reference shifted right by one
position, §3.1 and Figure 1), Adam with β1 = 0.9, β2 = 0.98, ε = 1e-9 and a learning rate that
rises linearly for ``warmup`` steps and then decays as step^-0.5 (§5.3, Eq. 3), and label
smoothing ε_ls = 0.1 (§5.4). This module holds each of those pieces and a small loop
(:func:`train_epoch`, :func:`evaluate`, :func:`fit`) that also runs on a GPU with autocast and
inside ``torch.nn.parallel.DistributedDataParallel``. Checkpoints live in :mod:`tformer.checkpoint`.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tformer import _checks

with warnings.catch_warnings():
    # Without ipywidgets tqdm.auto falls back to a text bar, which is what a static book shows anyway.
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

# --------------------------------------------------------------------------- loss


class LabelSmoothingLoss(nn.Module):
    """Cross-entropy against a smoothed target distribution (§5.4, "Label Smoothing").

    The target puts 1 - ε on the reference token and spreads ε uniformly over all V classes
    (so the reference gets 1 - ε + ε/V), exactly as ``F.cross_entropy(label_smoothing=ε)``.
    Positions whose target is ``ignore_index`` (padding) contribute nothing, and the mean is
    taken over the real tokens only.

    Args:
        smoothing: ε_ls in [0, 1); the paper uses 0.1. ε = 0 is plain cross-entropy.
        ignore_index: target id to skip (the padding id, 0 in tformer).
        reduction: ``"mean"`` over real tokens, ``"sum"``, or ``"none"`` (per position, 0 at padding).
    """

    def __init__(self, smoothing: float = 0.1, ignore_index: int = 0, reduction: str = "mean") -> None:
        super().__init__()
        self.smoothing = _checks.probability("smoothing", smoothing)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction={reduction!r} must be 'mean', 'sum' or 'none'")
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (..., V) float, ``target`` (...) long → scalar (or (...) with ``"none"``)."""
        _checks.tensor("logits", logits, ndim_min=2, floating=True)
        _checks.tensor("target", target, ndim_min=1, floating=False)
        if logits.shape[:-1] != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} must be target's shape {tuple(target.shape)} plus a "
                "vocabulary dimension, e.g. logits (B, T, V) with target (B, T)"
            )
        V = logits.shape[-1]
        logp = F.log_softmax(logits.float(), dim=-1)  # (..., V)
        keep = target != self.ignore_index  # (...)
        safe = target.masked_fill(~keep, 0)
        if ((safe < 0) | (safe >= V)).any():
            bad = safe[(safe < 0) | (safe >= V)][0].item()
            raise ValueError(f"target id {bad} is outside the vocabulary [0, {V})")
        nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (...) -log p(reference)
        uniform = -logp.mean(dim=-1)  # (...) cross-entropy against the uniform distribution
        loss = ((1.0 - self.smoothing) * nll + self.smoothing * uniform) * keep
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / keep.sum().clamp(min=1)


# --------------------------------------------------------------------------- schedule


def noam_lr(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """lrate = factor · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), Eq. (3), §5.3.

    The rate grows linearly for the first ``warmup`` steps, peaks at step = warmup, and then
    decays with the inverse square root of the step number. Steps count from 1.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step={step!r} must be an int >= 1 (the schedule counts steps from 1)")
    _checks.positive_int("d_model", d_model)
    _checks.positive_int("warmup", warmup)
    if not factor > 0:
        raise ValueError(f"factor={factor!r} must be > 0")
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def noam_scheduler(
    optimizer: torch.optim.Optimizer, d_model: int, warmup: int, factor: float = 1.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that sets the rate of step s (1, 2, …) to ``noam_lr(s, d_model, warmup, factor)``.

    ``LambdaLR`` multiplies the optimizer's own ``lr`` by the lambda, so build the optimizer with
    ``lr=1.0`` (as :func:`make_optimizer` does); any other value acts as an extra factor.
    Call ``scheduler.step()`` after every ``optimizer.step()``.
    """
    noam_lr(1, d_model, warmup, factor)  # validate the arguments once, here
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: noam_lr(s + 1, d_model, warmup, factor)
    )


def make_optimizer(model: nn.Module, lr: float = 1.0) -> torch.optim.Adam:
    """Adam with the paper's β1 = 0.9, β2 = 0.98, ε = 1e-9 (§5.3); ``lr=1.0`` for the Noam schedule."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9)


# --------------------------------------------------------------------------- device


def default_device() -> torch.device:
    """``cuda`` when a GPU is present, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """bf16 on a CUDA device that supports it, fp16 on older GPUs, ``None`` (float32) on CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or ``torch.compile``) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


# --------------------------------------------------------------------------- loop


@dataclass
class TrainState:
    """Everything about a run that is not a tensor: where it is and what it has seen.

    ``batch_in_epoch`` is the number of batches of ``epoch`` already trained on, so a run that
    stops in the middle of an epoch resumes at the next batch. ``loss_sum``/``tokens`` are the
    running totals of that unfinished epoch.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    loss_sum: float = 0.0
    tokens: int = 0
    elapsed: float = 0.0  # seconds of training so far, over all sessions
    finished: bool = False
    history: dict[str, list[float]] = field(
        default_factory=lambda: {
            "train_loss": [], "valid_loss": [], "step_loss": [], "lr": [], "tokens_per_s": []
        }
    )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(**d)


@dataclass
class EpochResult:
    loss: float  # mean per target token over the batches of this call
    tokens: int  # target tokens trained on
    tokens_per_s: float
    steps: int
    stopped: bool  # True when a time or step limit ended the epoch early


def _forward_loss(model: nn.Module, batch, loss_fn: nn.Module) -> torch.Tensor:
    """Teacher forcing: the decoder reads ``tgt_in`` (<bos> y1 … y_{n-1}) and predicts ``tgt_out`` (y1 … <eos>)."""
    logits = model(batch.src, batch.tgt_in, batch.src_mask, batch.tgt_mask)  # (B, T, V)
    return loss_fn(logits, batch.tgt_out)


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is True on any process (all ranks must stop at the same step under DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([float(flag)], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)
    return flag


def train_epoch(
    model: nn.Module,
    batches: Sequence,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    device: torch.device | str | None = None,
    clip_norm: float | None = 1.0,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    state: TrainState | None = None,
    deadline: float | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> EpochResult:
    """One pass of gradient steps over ``batches`` (a list of :class:`tformer.data.Batch`).

    Works on a plain model or one wrapped in ``DistributedDataParallel``: each process passes its
    own shard of the batches, the wrapper averages the gradients, and only the process that
    sets ``progress=True`` shows a bar. With a ``state``, batches before ``state.batch_in_epoch``
    are skipped (resume) and ``state`` is advanced after each step.

    Args:
        clip_norm: clip the global gradient norm to this value (``None`` = no clipping).
        amp_dtype: autocast dtype (bf16/fp16 on CUDA), ``None`` for float32.
        scaler: a ``torch.amp.GradScaler`` for fp16 (not needed for bf16).
        deadline: ``time.perf_counter()`` value after which the epoch stops early.
        max_steps: stop once ``state.step`` reaches this global step count.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    state = state if state is not None else TrainState()
    model.train()
    start_batch = state.batch_in_epoch
    todo = batches[start_batch:]
    t0 = time.perf_counter()
    loss_sum, tokens, steps, stopped = 0.0, 0, 0, False
    # A terminal redraws one line; a notebook saved to a book keeps every update, so update less often.
    interval = 1.0 if getattr(sys.stderr, "isatty", lambda: False)() else 5.0
    bar = tqdm(total=len(batches), initial=start_batch, desc=desc, disable=not progress, mininterval=interval)
    for batch in todo:
        limited = deadline is not None or max_steps is not None
        if limited and _any_rank(
            (deadline is not None and time.perf_counter() > deadline)
            or (max_steps is not None and state.step >= max_steps),
            device,
        ):
            stopped = True
            break
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = _forward_loss(model, batch, loss_fn)
        value = loss.item()
        if not math.isfinite(value):  # stop before a NaN reaches the weights
            raise FloatingPointError(
                f"the training loss became {value} at step {state.step + 1}; lower the learning "
                "rate (factor) or enable gradient clipping"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        n = int(batch.n_tokens)
        loss_sum += value * n
        tokens += n
        steps += 1
        state.step += 1
        state.batch_in_epoch += 1
        state.loss_sum += value * n
        state.tokens += n
        state.history["step_loss"].append(value)
        state.history["lr"].append(lr)
        dt = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{tokens / max(dt, 1e-9):.0f}", refresh=False)
    bar.close()
    dt = time.perf_counter() - t0
    return EpochResult(
        loss=loss_sum / max(tokens, 1),
        tokens=tokens,
        tokens_per_s=tokens / max(dt, 1e-9),
        steps=steps,
        stopped=stopped,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Sequence,
    loss_fn: nn.Module,
    *,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Mean loss per target token over ``batches``, in eval mode (no dropout), without gradients."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = _forward_loss(model, batch, loss_fn)
        total += loss.item() * int(batch.n_tokens)
        tokens += int(batch.n_tokens)
    model.train(was_training)
    return total / max(tokens, 1)


def fit(
    model: nn.Module,
    train_batches: Sequence | Callable[[int], Sequence],
    valid_batches: Sequence | None,
    *,
    epochs: int,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    state: TrainState | None = None,
    device: torch.device | str | None = None,
    clip_norm: float | None = 1.0,
    amp_dtype: torch.dtype | None = None,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    is_main: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> TrainState:
    """Train for ``epochs`` epochs (or until ``max_minutes``/``max_steps``), validating after each.

    Args:
        train_batches: the batches of every epoch, or a function ``epoch -> batches`` (reshuffled
            per epoch with a seed derived from the epoch, which is what makes resuming exact).
            Under DDP pass each process its own shard.
        valid_batches: batches for the validation loss at the end of each epoch (or ``None``).
        state: a :class:`TrainState` loaded from a checkpoint to resume; ``None`` starts fresh.
        on_checkpoint: called with the state after each epoch and when a limit stops the run
            (only on the main process); it should save a checkpoint.
        is_main: ``False`` on every DDP process but rank 0: no printing, no bar, no saving.

    Returns:
        The final :class:`TrainState` (``history`` holds the loss curves).
    """
    _checks.positive_int("epochs", epochs)
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(
            f"max_minutes={max_minutes!r} must be > 0 (leave it out for no time limit)"
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    state = state if state is not None else TrainState()
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    deadline = None
    if max_minutes is not None:
        deadline = time.perf_counter() + max_minutes * 60  # of this call, not of the whole run
    say = log if (is_main and log is not None) else (lambda _msg: None)
    while state.epoch < epochs:
        batches = train_batches(state.epoch) if callable(train_batches) else train_batches
        if len(batches) == 0:
            raise ValueError(
                "train_batches is empty: no sentence pair survived batching (are all of them empty "
                "or longer than max_len?)"
            )
        t0 = time.perf_counter()
        result = train_epoch(
            model, batches, loss_fn, optimizer, scheduler,
            device=device, clip_norm=clip_norm, amp_dtype=amp_dtype, scaler=scaler, state=state,
            deadline=deadline, max_steps=max_steps, progress=progress and is_main,
            desc=f"epoch {state.epoch + 1}/{epochs}",
        )  # fmt: skip
        state.elapsed += time.perf_counter() - t0
        if result.steps:
            state.history.setdefault("tokens_per_s", []).append(result.tokens_per_s)
        if result.stopped:
            say(f"stopped at step {state.step} (epoch {state.epoch + 1}, batch {state.batch_in_epoch})")
            if is_main and on_checkpoint is not None:
                on_checkpoint(state)
            return state
        state.history["train_loss"].append(state.loss_sum / max(state.tokens, 1))
        if valid_batches is not None:
            state.history["valid_loss"].append(
                evaluate(model, valid_batches, loss_fn, device=device, amp_dtype=amp_dtype)
            )
        state.epoch += 1
        state.batch_in_epoch, state.loss_sum, state.tokens = 0, 0.0, 0
        valid = f", valid loss {state.history['valid_loss'][-1]:.3f}" if valid_batches else ""
        say(
            f"epoch {state.epoch}/{epochs}: train loss {state.history['train_loss'][-1]:.3f}"
            f"{valid}, {result.tokens_per_s:.0f} target tokens/s"
        )
        if is_main and on_checkpoint is not None and state.epoch < epochs:
            on_checkpoint(state)
    state.finished = True
    if is_main and on_checkpoint is not None:
        on_checkpoint(state)
    return state
