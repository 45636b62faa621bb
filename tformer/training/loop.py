"""One training loop for every model in tformer: steps, validation, time limits, resuming.

Nothing in this file knows about translation or GPT (the habit of minGPT's trainer): a batch says
what the model reads (``batch.inputs``), what it must predict (``batch.target``) and how many
target tokens count (``batch.n_tokens``); the model returns logits (or ``(logits, loss)``, as
nanoGPT-style models do) and ``loss_fn(logits, target)`` turns them into the loss. The
encoder–decoder reads a :class:`tformer.data.batches.Batch` with teacher forcing (§3.1: the
decoder reads the reference shifted right); the GPT reads :class:`tformer.data.batches.Windows`.
The loop clips gradients, runs in the precision :func:`tformer.runtime.resolve_precision` decides
(float32, or bfloat16 autocast), inside ``DistributedDataParallel``, stops
at a time or step limit, and hands a :class:`TrainState` to a checkpoint callback, so a run can
resume exactly where it stopped. The objectives are in :mod:`tformer.training.objectives`, the
schedules in :mod:`tformer.training.optim`, checkpoints in :mod:`tformer.training.checkpoint`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

import tformer._checks as _checks
from tformer.runtime import any_rank, autocast_context, eval_mode, resolve_precision

with warnings.catch_warnings():
    # Without ipywidgets tqdm.auto falls back to a text bar, which is what a static book shows anyway.
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

# A loss this many times its lowest smoothed value means the run diverged (e.g. a learning rate far
# too high): the loop stops instead of training on. The smoothed loss averages ~10 steps, so one
# hard batch does not trip it, and nothing is judged before WARMUP_STEPS steps.
DIVERGENCE_FACTOR = 10.0
DIVERGENCE_WARMUP = 20


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP) stopped :func:`fit` between two steps; ``state`` is where it
    stopped (already handed to ``on_checkpoint``, so the run can resume from there) and
    ``signum`` the signal that asked."""

    def __init__(self, state: TrainState, signum: int = signal.SIGINT) -> None:
        super().__init__(f"interrupted at step {state.step}")
        self.state = state
        self.signum = int(signum)


# what asks a run to stop: Ctrl-C, `kill`/`timeout`/`docker stop` (SIGTERM), a closed terminal or
# ssh session (SIGHUP); each saves the run at the next step boundary
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _Interrupt:
    """A handler of the stop signals that asks the loop to stop at the next step boundary, so a
    checkpoint is never taken in the middle of an optimizer step; a second signal stops at once."""

    requested = False
    signum = signal.SIGINT

    @classmethod
    @contextlib.contextmanager
    def deferred(cls):
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

        def handler(signum, frame):
            if cls.requested:
                raise KeyboardInterrupt
            cls.requested, cls.signum = True, signum

        cls.requested, cls.signum = False, signal.SIGINT
        for s in STOP_SIGNALS:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            cls.requested = False


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
    stopped: bool  # True when a time or step limit (or Ctrl-C) ended the epoch early
    interrupted: bool = False  # True when Ctrl-C ended it


Precision = str | torch.dtype


def _precision_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """``"float32"``, ``"bf16"``, ``"auto"`` (:func:`tformer.runtime.resolve_precision`) or a dtype
    (``torch.float16`` on CUDA, with a gradient scaler) → the autocast dtype (float32: none)."""
    if isinstance(precision, torch.dtype):
        if precision not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"precision={precision} must be torch.float32, torch.bfloat16 or torch.float16")
        return precision
    return resolve_precision(precision, device)


def _forward_loss(model: nn.Module, batch, loss_fn: nn.Module) -> torch.Tensor:
    """``loss_fn(model(*batch.inputs), batch.target)``; for a translation batch that is teacher
    forcing: the decoder reads ``tgt_in`` (<bos> y1 … y_{n-1}) and predicts ``tgt_out`` (y1 … <eos>)."""
    logits = model(*batch.inputs)  # (B, T, V), or (logits, loss) from a nanoGPT-style model
    if isinstance(logits, tuple):
        logits = logits[0]
    return loss_fn(logits, batch.target)


class Cooldown:
    """The factor in [0, 1] that scales the scheduler's learning rate over the last ``fraction`` of a
    run, falling linearly to 0 at its end (the "cooldown" of a warmup–stable–decay schedule; Hägele
    et al., 2024, *Scaling Laws and Compute-Optimal Training beyond Fixed Training Durations*).

    A run with a time limit does not know how many steps it will take, so the end is whichever limit
    comes first: the ``deadline`` (a ``time.perf_counter()`` value, ``seconds`` after the start), the
    global step ``max_steps``, or the last step of ``epochs`` (estimated from the current epoch's
    batch count). Each limit gives its own linear ramp over the last ``fraction`` of its span, and
    the smallest factor wins. ``fraction=0`` is no cooldown: the factor is always 1.
    """

    def __init__(self, fraction: float, *, first_step: int = 0, deadline: float | None = None,
                 seconds: float | None = None, max_steps: int | None = None) -> None:
        self.fraction = _checks.probability("cooldown", fraction, upper_inclusive=True)
        self.first_step, self.deadline, self.seconds, self.max_steps = first_step, deadline, seconds, max_steps
        self.epoch_end: int | None = None  # the step the planned epochs end at, set by each epoch

    def factor(self, step: int) -> float:
        """The factor for the optimizer step that makes ``step`` steps done (1, 2, …)."""
        if self.fraction == 0.0:
            return 1.0
        ramps = []
        if self.deadline is not None and self.seconds:
            ramps.append((self.deadline - time.perf_counter()) / (self.fraction * self.seconds))
        for end in (self.max_steps, self.epoch_end):
            if end is not None and end > self.first_step:
                ramps.append((end - step + 1) / (self.fraction * (end - self.first_step)))
        return min([1.0] + [max(r, 0.0) for r in ramps])


def train_epoch(
    model: nn.Module,
    batches: Sequence,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    device: torch.device | str | None = None,
    clip_norm: float | None = 1.0,
    precision: Precision = "float32",
    scaler: torch.amp.GradScaler | None = None,
    state: TrainState | None = None,
    deadline: float | None = None,
    max_steps: int | None = None,
    cooldown: Cooldown | None = None,
    progress: bool = True,
    desc: str = "train",
) -> EpochResult:
    """One pass of gradient steps over ``batches`` (a list of :class:`tformer.data.batches.Batch`).

    Works on a plain model or one wrapped in ``DistributedDataParallel``: each process passes its
    own shard of the batches, the wrapper averages the gradients, and only the process that
    sets ``progress=True`` shows a bar. With a ``state``, batches before ``state.batch_in_epoch``
    are skipped (resume) and ``state`` is advanced after each step.

    Args:
        clip_norm: clip the global gradient norm to this value (``None`` = no clipping).
        precision: ``"float32"`` (the default), ``"bf16"`` or ``"auto"``, decided by
            :func:`tformer.runtime.resolve_precision`, or a dtype (``torch.float16`` on CUDA). The
            forward pass and the loss run under one autocast context; the loss itself, the
            softmax statistics, the weights, their gradients and the optimizer state stay float32,
            and a NaN/Inf loss stops the run exactly as in float32.
        scaler: a ``torch.amp.GradScaler`` for float16 (not needed for bfloat16).
        deadline: ``time.perf_counter()`` value after which the epoch stops early.
        max_steps: stop once ``state.step`` reaches this global step count.
        cooldown: a :class:`Cooldown` whose factor scales each step's learning rate (the
            scheduler's own rate is restored after the step, so any scheduler works unchanged).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = _precision_dtype(precision, device)
    state = state if state is not None else TrainState()
    model.train()
    start_batch = state.batch_in_epoch
    t0 = time.perf_counter()
    loss_sum, tokens, steps, stopped, interrupted = 0.0, 0, 0, False, False
    smooth, best = _smoothed(state.history["step_loss"])
    # A terminal redraws one line; a notebook saved to a book keeps every update, so update less often.
    interval = 1.0 if getattr(sys.stderr, "isatty", lambda: False)() else 5.0
    bar = tqdm(total=len(batches), initial=start_batch, desc=desc, disable=not progress, mininterval=interval)
    for i in range(start_batch, len(batches)):  # by index: a lazy sequence is drawn as it goes
        batch = batches[i]
        if any_rank(_Interrupt.requested, device):
            stopped = interrupted = True
            break
        limited = deadline is not None or max_steps is not None
        if limited and any_rank(
            (deadline is not None and time.perf_counter() > deadline)
            or (max_steps is not None and state.step >= max_steps),
            device,
        ):
            stopped = True
            break
        batch = batch.to(device)
        with autocast_context(device, dtype):
            loss = _forward_loss(model, batch, loss_fn)
        value = loss.item()
        if not math.isfinite(value):  # stop before a NaN reaches the weights
            raise FloatingPointError(
                f"the training loss became {value} at step {state.step + 1}; lower the learning "
                "rate (factor) or enable gradient clipping"
            )
        smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
        if len(state.history["step_loss"]) >= DIVERGENCE_WARMUP and smooth > DIVERGENCE_FACTOR * best:
            raise FloatingPointError(
                f"the training loss grew from {best:.3g} to {smooth:.3g} (smoothed) by step "
                f"{state.step + 1}: the run diverged; lower the learning rate (factor) or the "
                "gradient-clipping norm"
            )
        best = min(best, smooth)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        scale = cooldown.factor(state.step + 1) if cooldown is not None else 1.0
        if scale != 1.0:
            scheduled = [group["lr"] for group in optimizer.param_groups]
            for group, rate in zip(optimizer.param_groups, scheduled):
                group["lr"] = rate * scale
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scale != 1.0:
            for group, rate in zip(optimizer.param_groups, scheduled):
                group["lr"] = rate  # the scheduler goes on from its own rate
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
        interrupted=interrupted,
    )


def _smoothed(losses: Sequence[float]) -> tuple[float | None, float]:
    """The exponential moving average (factor 0.9) of the step losses so far (None if there are
    none) and its lowest value, over the last 1000 steps."""
    smooth, best = None, math.inf
    for value in list(losses)[-1000:]:
        smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
        best = min(best, smooth)
    return smooth, best


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Sequence,
    loss_fn: nn.Module,
    *,
    device: torch.device | str | None = None,
    precision: Precision = "float32",
) -> float:
    """Mean loss per target token over ``batches``, in eval mode (no dropout), without gradients,
    in ``precision`` (as in :func:`train_epoch`)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = _precision_dtype(precision, device)
    total, tokens = 0.0, 0
    with eval_mode(model):
        for batch in batches:
            batch = batch.to(device)
            with autocast_context(device, dtype):
                loss = _forward_loss(model, batch, loss_fn)
            total += loss.item() * int(batch.n_tokens)
            tokens += int(batch.n_tokens)
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
    precision: Precision = "float32",
    max_minutes: float | None = None,
    max_steps: int | None = None,
    cooldown: float = 0.0,
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
        on_checkpoint: called with the state after each epoch and when a limit or Ctrl-C stops
            the run (only on the main process); it should save a checkpoint.
        is_main: ``False`` on every DDP process but rank 0: no printing, no bar, no saving.
        precision: as in :func:`train_epoch`; decided once here (``"auto"`` measures once).
        cooldown: the fraction of this call's run (its time limit, its steps up to ``max_steps``
            or its epochs, whichever ends first) over which the learning rate falls linearly to 0
            (see :class:`Cooldown`); 0, the default, leaves the scheduler's rate alone.

    Ctrl-C (in the main thread) stops at the next step boundary, hands the state to
    ``on_checkpoint`` and raises :class:`TrainingInterrupted`; a second Ctrl-C stops at once. A
    loss that becomes NaN/Inf or grows ``DIVERGENCE_FACTOR`` times above its lowest smoothed value
    raises ``FloatingPointError`` before the step is taken, so the last checkpoint stays good.

    Returns:
        The final :class:`TrainState` (``history`` holds the loss curves); ``finished`` is True
        only once the last epoch is done.
    """
    _checks.positive_int("epochs", epochs)
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(
            f"max_minutes={max_minutes!r} must be > 0 (leave it out for no time limit)"
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    state = state if state is not None else TrainState()
    dtype = _precision_dtype(precision, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    deadline = None
    if max_minutes is not None:
        deadline = time.perf_counter() + max_minutes * 60  # of this call, not of the whole run
    ramp = Cooldown(cooldown, first_step=state.step, deadline=deadline,
                    seconds=None if max_minutes is None else max_minutes * 60, max_steps=max_steps)
    say = log if (is_main and log is not None) else (lambda _msg: None)
    with _Interrupt.deferred():
        return _fit_epochs(model, train_batches, valid_batches, epochs, loss_fn, optimizer, scheduler,
                           state, device, clip_norm, dtype, scaler, deadline, max_steps,
                           on_checkpoint, is_main, progress, say, ramp)


def _fit_epochs(model, train_batches, valid_batches, epochs, loss_fn, optimizer, scheduler, state,
                device, clip_norm, dtype, scaler, deadline, max_steps, on_checkpoint, is_main,
                progress, say, cooldown) -> TrainState:
    if state.epoch < epochs:
        state.finished = False  # a finished run resumed with more epochs is unfinished again
    while state.epoch < epochs:
        batches = train_batches(state.epoch) if callable(train_batches) else train_batches
        if len(batches) == 0:
            raise ValueError(
                "train_batches is empty: no sentence pair survived batching (are all of them empty "
                "or longer than max_len?)"
            )
        # where the planned epochs end, as this epoch's batch count says
        cooldown.epoch_end = (state.step + len(batches) - state.batch_in_epoch
                              + (epochs - state.epoch - 1) * len(batches))
        t0 = time.perf_counter()
        result = train_epoch(
            model, batches, loss_fn, optimizer, scheduler,
            device=device, clip_norm=clip_norm, precision=dtype, scaler=scaler, state=state,
            deadline=deadline, max_steps=max_steps, cooldown=cooldown, progress=progress and is_main,
            desc=f"epoch {state.epoch + 1}/{epochs}",
        )  # fmt: skip
        state.elapsed += time.perf_counter() - t0
        if result.steps:
            state.history.setdefault("tokens_per_s", []).append(result.tokens_per_s)
        if result.stopped:
            why = "interrupted" if result.interrupted else "stopped"
            say(f"{why} at step {state.step} (epoch {state.epoch + 1}, batch {state.batch_in_epoch})")
            if is_main and on_checkpoint is not None:
                on_checkpoint(state)
            if result.interrupted:
                raise TrainingInterrupted(state, _Interrupt.signum)
            return state
        state.history["train_loss"].append(state.loss_sum / max(state.tokens, 1))
        if valid_batches is not None:
            state.history["valid_loss"].append(
                evaluate(model, valid_batches, loss_fn, device=device, precision=dtype)
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
        if _Interrupt.requested and state.epoch < epochs:  # Ctrl-C during validation or the save
            raise TrainingInterrupted(state, _Interrupt.signum)
    state.finished = True
    if is_main and on_checkpoint is not None:
        on_checkpoint(state)
    return state
