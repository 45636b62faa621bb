"""Dropout whose random mask is cheap on the CPU.

Dropout (Srivastava et al., 2014; §5.4 of the paper) zeroes each element with probability ``p``
and scales the survivors by ``1 / (1 - p)``, so the expected value of every element is unchanged.
``torch.nn.Dropout`` does exactly that, but on the CPU it draws the mask with ``bernoulli_``, one
call of the Mersenne-Twister generator (32 random bits) per element. In training steps of the
course's Tatoeba translator (d_model 128, 2 + 2 layers) ``torch.profiler`` put those draws at about
13% of the CPU time: a mask of 190,000 elements took about 1 ms on two cores.

:func:`dropout` asks the same generator for a quarter as many numbers: each 64-bit draw is cut
into four 16-bit integers, and an element survives when its integer is at least ``p · 65536``
(rounded) above the smallest. ``p`` therefore moves in steps of 1/65,536 (0.1 acts as 0.1000061),
far below anything training can notice; the survivors are scaled by the probability actually used,
so the expected value stays exact, and ``torch.manual_seed`` still fixes every mask. On GPUs, where
PyTorch's own generator is fast, and while ``torch.compile`` traces, it is ``F.dropout``.
(``python -m tformer bench --only step`` times training steps with both.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tformer import _checks

# 16-bit integers run from -32768 to 32767: 65,536 values, one of which each element draws
_LEVELS = 1 << 16


def level(p: float) -> int:
    """How many of the 65,536 values of a 16-bit draw drop an element: ``round(p · 65536)``."""
    return round(_checks.probability("p", p, upper_inclusive=True) * _LEVELS)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool tensor of ``shape``, each element False (dropped) with probability ``level(p) / 65536``,
    which is ``p`` to within 1/131,072, drawn from PyTorch's default generator for ``device``."""
    return _keep_mask(shape, level(p), device)


def _keep_mask(shape: torch.Size | tuple[int, ...], drop: int, device: torch.device | str) -> torch.Tensor:
    """:func:`keep_mask` for ``drop = level(p)``, already checked."""
    if drop == _LEVELS:  # no 16-bit value lies at or above 32768: nothing is kept
        return torch.zeros(shape, dtype=torch.bool, device=device)
    n = math.prod(shape)
    # random_ with from = -2**63 and no upper bound draws all 64 bits of each number
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    return bits.view(torch.int16)[:n].view(shape) >= drop - _LEVELS // 2


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the mask of :func:`keep_mask` on the CPU (module docstring).

    The kept elements are divided by the probability of being kept, ``1 − level(p) / 65536``, so
    the expected value of every element is exactly unchanged; gradients flow through the kept
    elements only, with the same factor.
    """
    drop = level(p)
    if not training or drop == 0:
        return x
    if x.device.type != "cpu" or not x.is_floating_point() or drop == _LEVELS or torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    return x * _keep_mask(x.shape, drop, x.device) * (_LEVELS / (_LEVELS - drop))


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` with :func:`dropout`'s cheaper CPU mask; the same ``p``, the same
    ``train()``/``eval()`` behaviour, no parameters (checkpoints do not change)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
