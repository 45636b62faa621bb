"""Checkpoint averaging (§6.1 of the paper averages the last 5 checkpoints of the base model): one
mean of saved weights, used by the translation recipe (:class:`RecentWeights`) and by
``scripts/tatoeba_recipes.py``."""

from __future__ import annotations

import copy
import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

import tformer._checks as _checks
from tformer.runtime import unwrap
from tformer.training.checkpoint import ModelFile, TensorFile, listed, read_tensors

AVERAGED = "averaged.safetensors"


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same keys, computed in float64 and returned in
    each tensor's dtype; integer tensors (counters, ids) are taken from the last state."""
    if not states:
        raise ValueError("states is empty; give at least one state dict to average")
    keys = set(states[-1])
    for i, s in enumerate(states):
        if set(s) != keys:
            raise ValueError(f"states[{i}] has other keys than states[-1]: "
                             f"{sorted(set(s) ^ keys)[:5]}; average weights of one model only")
    return {n: (sum(s[n].double() for s in states) / len(states)).to(t.dtype) if t.is_floating_point() else t
            for n, t in states[-1].items()}


class RecentWeights:
    """The mean of the weights at the last ``k`` saves, kept with the checkpoint.

    :meth:`record` is called at every save: it keeps, on the CPU, the weights at the last ``k``
    epoch ends, and the averaged weights are the mean of the last ``k`` states a save saw — at a
    stop in mid-epoch, the current weights and the ``k - 1`` epoch ends before them. Both are saved
    with the checkpoint (``recent-<i>.safetensors``, oldest first, and ``averaged.safetensors``), so a
    resumed run averages exactly what an uninterrupted one would."""

    def __init__(self, k: int):
        self.k = _checks.positive_int("average", k)
        self.snapshots: deque[dict[str, torch.Tensor]] = deque(maxlen=self.k)
        self.averaged: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
        # each tensor cloned on its own: tied weights must not share storage in a safetensors file
        return {n: t.detach().to("cpu", copy=True) for n, t in unwrap(model).state_dict().items()}

    def record(self, model: nn.Module, epoch_end: bool) -> dict[str, torch.Tensor]:
        """Note the weights of a save (kept when it is an epoch end); returns the new mean."""
        current = self._copy(model)
        if epoch_end:
            self.snapshots.append(current)
            states = list(self.snapshots)
        else:
            states = [*list(self.snapshots)[len(self.snapshots) - (self.k - 1):], current] if self.k > 1 else [current]
        self.averaged = average_state_dicts(states)
        return self.averaged

    def files(self, model: nn.Module) -> dict[str, object]:
        """What the checkpoint stores for averaging: the mean (as a model file) and the epoch ends."""
        if self.averaged is None:
            raise ValueError("record() the weights before saving them")
        twin = copy.deepcopy(unwrap(model)).cpu()
        twin.load_state_dict(self.averaged)
        out: dict[str, object] = {AVERAGED: ModelFile(twin)}
        for i, snapshot in enumerate(self.snapshots):
            out[f"recent-{i}.safetensors"] = TensorFile(snapshot)
        return out

    def load(self, directory: str | os.PathLike) -> None:
        """Read back the epoch ends a checkpoint recorded (none for a run without averaging); only
        files its manifest lists are read."""
        self.snapshots.clear()
        i = 0
        while listed(directory, f"recent-{i}.safetensors"):
            self.snapshots.append(read_tensors(Path(directory) / f"recent-{i}.safetensors"))
            i += 1
