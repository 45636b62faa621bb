"""Training objectives: the paper's label-smoothed cross-entropy (§5.4) and its data-parallel form.

Both skip padding and average over real target tokens, which is what makes a loss per token
comparable between batches of different shapes — and, under data parallelism, between processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import tformer._checks as _checks
from tformer.runtime import all_reduce, world_size


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
        if target.device != logits.device:
            raise ValueError(f"target is on {target.device} but logits on {logits.device}; move target "
                             "to the logits' device")
        if logits.shape[:-1] != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} must be target's shape {tuple(target.shape)} plus a "
                "vocabulary dimension, e.g. logits (B, T, V) with target (B, T)"
            )
        V = logits.shape[-1]
        logp = F.log_softmax(logits.float(), dim=-1)  # (..., V)
        keep = target != self.ignore_index  # (...)
        safe = target.long().masked_fill(~keep, 0)
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
            :class:`LabelSmoothingLoss` ``(0.1, reduction="sum")``.
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
        n_global = all_reduce(n_local).clamp(min=1)  # N, the same on every process
        summed = self.loss_sum(logits, target)  # S_r
        return summed * (world_size() / n_global).to(summed.dtype)

