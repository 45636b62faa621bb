"""Checkers for the exercises of chapter 12: sharding data and normalising the loss under DDP."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tformer.course.exercises import CheckFailed
from tformer.training.distributed import shard

# --- distributed.shard --------------------------------------------------------------------------

SHARD_CASES = [(10, 2), (11, 3), (7, 4), (3, 4), (5, 1)]


def check_shard(fn: Callable) -> int:
    """``fn(items, rank, world_size)`` must give every process the same number of distinct items."""
    passed = 0
    for n, world in SHARD_CASES:
        items = [f"pair{i}" for i in range(n)]
        got = [fn(items, rank, world) for rank in range(world)]
        case = f"case {passed + 1} ({n} items, world_size={world})"
        if not all(isinstance(g, (list, tuple)) for g in got):
            raise CheckFailed(f"{case}: expected a list per rank, got {[type(g).__name__ for g in got]}")
        got = [list(g) for g in got]
        sizes = [len(g) for g in got]
        if len(set(sizes)) != 1:
            raise CheckFailed(
                f"{case}: the shards have sizes {sizes}",
                hint="every process must get the same number of items, or the one with more runs a "
                "step the others never join and the all-reduce waits forever: drop the last "
                "len(items) % world_size items",
            )
        flat = [x for g in got for x in g]
        if len(set(flat)) != len(flat):
            raise CheckFailed(
                f"{case}: some items are in two shards", hint="the shards must not overlap"
            )
        if sizes[0] != n // world:
            raise CheckFailed(
                f"{case}: each shard has {sizes[0]} items, expected {n // world}",
                hint="use all but the last len(items) % world_size items",
            )
        if got != [shard(items, rank, world) for rank in range(world)]:
            raise CheckFailed(
                f"{case}: the shards are {got}, expected {[shard(items, r, world) for r in range(world)]}",
                hint="take every world_size-th item starting at rank (the order of "
                "DistributedSampler(shuffle=False, drop_last=True))",
            )
        passed += 1
    return passed


# --- distributed.rank_losses ------------------------------------------------------------------

LOSS_CASES = [
    ([2.0, 18.0], [2, 6]),
    ([10.0, 10.0], [5, 5]),
    ([7.0, 1.0, 4.5], [9, 1, 4]),
    ([3.0], [3]),
]


def check_rank_losses(fn: Callable) -> int:
    """``fn(loss_sums, n_tokens)`` → the loss each process should back-propagate under DDP.

    DDP averages the gradients over the W processes, so the average of the returned losses must
    be the global mean per token, Σ S_r / Σ n_r, with gradient 1/N with respect to every S_r.
    """
    passed = 0
    for sums, counts in LOSS_CASES:
        s = torch.tensor(sums, dtype=torch.float64, requires_grad=True)
        n = torch.tensor(counts, dtype=torch.float64)
        case = f"case {passed + 1} (S_r={sums}, n_r={counts})"
        out = fn(s, n)
        if not isinstance(out, torch.Tensor) or out.shape != s.shape:
            raise CheckFailed(f"{case}: expected a tensor of shape {tuple(s.shape)} (one loss per process)")
        N, W = n.sum(), len(sums)
        ddp_value = out.mean()  # what DDP's gradient averaging amounts to
        if not torch.isclose(ddp_value.detach(), s.detach().sum() / N, rtol=1e-9):
            naive = float((s.detach() / n).mean())
            hint = (
                "the mean of the per-process means weights a token on a process with few tokens "
                "more heavily; divide each sum by the *global* token count N and multiply by W"
                if abs(float(ddp_value.detach()) - naive) < 1e-9
                else "the average over processes of your losses must be Σ S_r / Σ n_r"
            )
            raise CheckFailed(
                f"{case}: the processes' losses average to {float(ddp_value.detach()):.4f}, "
                f"the global mean is {float(s.detach().sum() / N):.4f}",
                hint=hint,
            )
        if not s.requires_grad or out.grad_fn is None:
            raise CheckFailed(f"{case}: the losses must be computed from S_r so gradients flow")
        (grad,) = torch.autograd.grad(ddp_value, s)
        if not torch.allclose(grad, torch.full_like(grad, 1 / float(N)), rtol=1e-9):
            raise CheckFailed(
                f"{case}: d(mean loss)/dS_r = {grad.tolist()}, expected 1/N = {1 / float(N):.4f} for "
                f"every process (W={W})",
                hint="scale each S_r by the same factor W / N; do not detach or rescale per process",
            )
        passed += 1
    return passed


CHECKS = {
    "distributed.shard": check_shard,
    "distributed.rank_losses": check_rank_losses,
}
