"""Optimizers and learning-rate schedules: the paper's Adam with warmup (§5.3), and nanoGPT's.

The paper uses Adam with β1 = 0.9, β2 = 0.98, ε = 1e-9 and a rate that rises linearly for
``warmup`` steps, then decays as step^-0.5 (Eq. 3). nanoGPT uses AdamW with weight decay on the
matrices only, and a linear warmup followed by half a cosine (the first GPT warmed up linearly and
annealed with a cosine too; the GPT-2 paper gives no schedule).
"""

from __future__ import annotations

import math

import torch
from torch import nn

import tformer._checks as _checks


def noam_lr(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """lrate = factor · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), Eq. (3), §5.3.

    The rate grows linearly for the first ``warmup`` steps, peaks at step = warmup, and then
    decays with the inverse square root of the step number. Steps count from 1.
    """
    _checks.int_at_least("step", step, 1, "an int >= 1 (the schedule counts steps from 1)")
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


def can_fuse(params: list[torch.Tensor]) -> bool:
    """Whether PyTorch's fused Adam/AdamW kernel can update ``params``: it exists for CPU and CUDA
    tensors, and updates every tensor in one pass with the same arithmetic as the loop over tensors
    (which is what PyTorch picks on the CPU unless told)."""
    return all(p.device.type in ("cpu", "cuda") for p in params)


def make_optimizer(model: nn.Module, lr: float = 1.0) -> torch.optim.Adam:
    """Adam with the paper's β1 = 0.9, β2 = 0.98, ε = 1e-9 (§5.3); ``lr=1.0`` for the Noam schedule.

    Fused where :func:`can_fuse` allows, which saves the loop over the parameter tensors
    (``python -m tformer bench --only step`` measures by how much)."""
    params = list(model.parameters())
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.98), eps=1e-9, fused=can_fuse(params))




def warmup_cosine_lr(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then half a cosine from ``lr`` down to ``min_lr`` at
    ``total`` (nanoGPT's schedule; the paper's own is in :mod:`tformer.training.loop`)."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)



def make_adamw(
    model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.99)
) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices (≥ 2-D) only; biases and LayerNorm gains are 1-D
    (nanoGPT's setup)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=can_fuse(params))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`warmup_cosine_lr` from the optimizer's ``lr`` down to
    ``min_ratio · lr``; call ``scheduler.step()`` after every ``optimizer.step()``."""
    _checks.positive_int("total", total)
    _checks.int_at_least("warmup", warmup, 0)
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio={min_ratio!r} must lie in [0, 1]")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine_lr(s, 1.0, min_ratio, warmup, total)
    )
