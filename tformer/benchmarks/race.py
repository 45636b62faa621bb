"""What the benchmarks that race training variants share: the clock and a run trained chunk by chunk.

The variants of a race (two precisions in :mod:`tformer.benchmarks.precision`, four ways to drop
and to step in :mod:`tformer.benchmarks.step`) each train their own copy of a model and take turns
in chunks of steps, so that a change in machine load hits all of them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from tformer.training.loop import TrainState, train_epoch


def clock() -> tuple[str, Callable[[], float]]:
    """``("CPU time", time.process_time)`` with one torch thread, else ``("wall-clock time",
    time.perf_counter)``: :mod:`tformer.benchmarks.precision` says why."""
    if torch.get_num_threads() == 1:
        return "CPU time", time.process_time
    return "wall-clock time", time.perf_counter


class ChunkedRun:
    """One model with its own optimizer and schedule, trained chunk by chunk; ``chunks`` holds each
    chunk's time per step by :func:`clock`."""

    def __init__(self, model, make_optimizer, batches, loss_fn, clip_norm, precision) -> None:
        self.model, self.batches, self.loss_fn, self.clip = model, batches, loss_fn, clip_norm
        self.optimizer, self.scheduler = make_optimizer(model)
        self.precision, self.state, self.chunks = precision, TrainState(), []

    def train(self, steps: int) -> None:
        now = clock()[1]
        t0 = now()
        train_epoch(self.model, self.batches, self.loss_fn, self.optimizer, self.scheduler,
                    clip_norm=self.clip, precision=self.precision, state=self.state,
                    max_steps=self.state.step + steps, progress=False)
        self.chunks.append((now() - t0) / steps)


def race(runs: dict[str, ChunkedRun], chunk: int, rounds: int) -> dict[str, ChunkedRun]:
    """Train every run for ``rounds + 1`` rounds of ``chunk`` steps, taking turns in an order that
    reverses every round; round 0 warms the kernels up, so read ``chunks[1:]``."""
    order = list(runs.values())
    for r in range(rounds + 1):
        for run in order if r % 2 == 0 else order[::-1]:
            run.train(chunk)
    return runs


def speedup(reference: ChunkedRun, run: ChunkedRun) -> tuple[float, float, float]:
    """``(median, first quartile, third quartile)`` over the counted rounds of ``reference``'s time
    per step divided by ``run``'s: above 1 means ``run`` is the faster."""
    ratios = [a / b for a, b in zip(reference.chunks[1:], run.chunks[1:])]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return statistics.median(ratios), q1, q3
