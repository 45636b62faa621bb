"""Checkers for the exercises of chapter 12: sharding data and normalising the loss under DDP."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tformer.course.exercises import CheckFailed
from tformer.course.exercises._common import COMMON
from tformer.course.exercises._text import texts
from tformer.training.distributed import shard

MESSAGES = {
    "shard_case": ("case {i} ({n} items, world_size={world})", "用例 {i}（{n} 个样本，world_size={world}）"),
    "shard_type": ("{case}: expected a list per rank, got {kinds}", "{case}：每个进程应得到一个列表，实际为 {kinds}"),
    "shard_sizes": ("{case}: the shards have sizes {sizes}", "{case}：各分片的大小为 {sizes}"),
    "shard_sizes_hint": ("every process must get the same number of items, or the one with more runs a "
                         "step the others never join and the all-reduce waits forever: drop the last "
                         "len(items) % world_size items",
                         "每个进程必须得到同样多的样本，否则样本多的进程会多跑一步，其他进程不会参与，"
                         "all-reduce 将永远等待：丢掉最后 len(items) % world_size 个样本"),
    "shard_overlap": ("{case}: some items are in two shards", "{case}：有样本同时出现在两个分片里"),
    "shard_overlap_hint": ("the shards must not overlap", "分片之间不能重叠"),
    "shard_count": ("{case}: each shard has {got} items, expected {want}",
                    "{case}：每个分片有 {got} 个样本，应为 {want} 个"),
    "shard_count_hint": ("use all but the last len(items) % world_size items",
                         "使用除最后 len(items) % world_size 个之外的全部样本"),
    "shard_order": ("{case}: the shards are {got}, expected {want}", "{case}：分片为 {got}，应为 {want}"),
    "shard_order_hint": ("take every world_size-th item starting at rank (the order of "
                         "DistributedSampler(shuffle=False, drop_last=True))",
                         "从第 rank 个样本开始，每隔 world_size 个取一个（即 "
                         "DistributedSampler(shuffle=False, drop_last=True) 的顺序）"),
    "loss_case": ("case {i} (S_r={sums}, n_r={counts})", "用例 {i}（S_r={sums}，n_r={counts}）"),
    "loss_shape": ("{case}: expected a tensor of shape {shape} (one loss per process)",
                   "{case}：应返回形状为 {shape} 的张量（每个进程一个损失）"),
    "loss_shape_hint": ("return one loss per process, a tensor like s", "每个进程返回一个损失，即与 s 形状相同的张量"),
    "loss_mean": ("{case}: the processes' losses average to {got:.4f}, the global mean is {want:.4f}",
                  "{case}：各进程损失的平均值为 {got:.4f}，而全局平均为 {want:.4f}"),
    "loss_mean_of_means": ("the mean of the per-process means weights a token on a process with few "
                           "tokens more heavily; divide each sum by the *global* token count N and "
                           "multiply by W",
                           "各进程平均值的平均，会让词元少的进程上的词元权重更大；应把每个总和除以"
                           "*全局*词元数 N，再乘以 W"),
    "loss_avg": ("the average over processes of your losses must be Σ S_r / Σ n_r",
                 "你的各进程损失的平均值必须等于 Σ S_r / Σ n_r"),
    "loss_no_grad": ("{case}: the losses must be computed from S_r so gradients flow",
                     "{case}：损失必须由 S_r 计算得到，梯度才能回传"),
    "loss_no_grad_hint": ("do not detach S_r or build a new tensor from its values",
                          "不要对 S_r 调用 detach，也不要用它的数值新建张量"),
    "loss_jacobian": ("{case}: process {r}'s loss depends on the loss sums of other processes "
                      "(d loss_{r} / dS = {row})",
                      "{case}：进程 {r} 的损失依赖于其他进程的损失总和（d loss_{r} / dS = {row}）"),
    "loss_jacobian_hint": ("each process back-propagates only its own shard: loss_r may use S_r and the "
                           "global count N (an all-reduced number), never the other processes' S_j. "
                           "Returning the global mean on every rank is what the all-reduce of the "
                           "gradients already does; return W · S_r / N instead",
                           "每个进程只对自己的分片反向传播：loss_r 只能用 S_r 和全局计数 N（all-reduce 得到的数），"
                           "不能用其他进程的 S_j。在每个进程上返回全局平均，正是梯度的 all-reduce 已经做的事；"
                           "应返回 W · S_r / N"),
    "loss_grad": ("{case}: d loss_{r} / dS_{r} = {got:.4f}, expected W / N = {want:.4f}",
                  "{case}：d loss_{r} / dS_{r} = {got:.4f}，应为 W / N = {want:.4f}"),
    "loss_grad_hint": ("scale each S_r by the same factor W / N; do not detach or rescale per process",
                       "每个 S_r 都乘以同一个系数 W / N；不要 detach，也不要按进程分别缩放"),
}
say = texts(MESSAGES, COMMON)

# --- distributed.shard --------------------------------------------------------------------------

SHARD_CASES = [(10, 2), (11, 3), (7, 4), (3, 4), (5, 1)]


def check_shard(fn: Callable) -> int:
    """``fn(items, rank, world_size)`` must give every process the same number of distinct items."""
    for i, (n, world) in enumerate(SHARD_CASES, start=1):
        items = [f"pair{j}" for j in range(n)]
        got = [fn(items, rank, world) for rank in range(world)]
        case = say("shard_case", i=i, n=n, world=world)
        if not all(isinstance(g, (list, tuple)) for g in got):
            raise CheckFailed(say("shard_type", case=case, kinds=[type(g).__name__ for g in got]))
        got = [list(g) for g in got]
        sizes = [len(g) for g in got]
        if len(set(sizes)) != 1:
            raise CheckFailed(say("shard_sizes", case=case, sizes=sizes), say("shard_sizes_hint"))
        flat = [x for g in got for x in g]
        if len(set(map(repr, flat))) != len(flat):
            raise CheckFailed(say("shard_overlap", case=case), say("shard_overlap_hint"))
        if sizes[0] != n // world:
            raise CheckFailed(say("shard_count", case=case, got=sizes[0], want=n // world),
                              say("shard_count_hint"))
        want = [shard(items, rank, world) for rank in range(world)]
        if got != want:
            raise CheckFailed(say("shard_order", case=case, got=got, want=want), say("shard_order_hint"))
    return len(SHARD_CASES)


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
    be the global mean per token, Σ S_r / Σ n_r. Each process sees only its own S_r, so the whole
    Jacobian is checked: d loss_r / dS_r = W / N and d loss_r / dS_j = 0 for j ≠ r.
    """
    for i, (sums, counts) in enumerate(LOSS_CASES, start=1):
        s = torch.tensor(sums, dtype=torch.float64, requires_grad=True)
        n = torch.tensor(counts, dtype=torch.float64)
        case = say("loss_case", i=i, sums=sums, counts=counts)
        out = fn(s, n)
        if not isinstance(out, torch.Tensor) or out.shape != s.shape or out.is_complex():
            raise CheckFailed(say("loss_shape", case=case, shape=tuple(s.shape)), say("loss_shape_hint"))
        N, W = float(n.sum()), len(sums)
        mean = float(out.detach().double().mean())
        if abs(mean - sum(sums) / N) > 1e-9 * max(1.0, abs(mean)):
            naive = float((s.detach() / n).mean())
            hint = say("loss_mean_of_means") if abs(mean - naive) < 1e-9 else say("loss_avg")
            raise CheckFailed(say("loss_mean", case=case, got=mean, want=sum(sums) / N), hint)
        if out.grad_fn is None:
            raise CheckFailed(say("loss_no_grad", case=case), say("loss_no_grad_hint"))
        for r in range(W):
            (row,) = torch.autograd.grad(out[r], s, retain_graph=True, allow_unused=True)
            row = torch.zeros_like(s) if row is None else row
            others = torch.cat([row[:r], row[r + 1:]])
            if others.abs().max().item() if others.numel() else 0.0:
                raise CheckFailed(say("loss_jacobian", case=case, r=r,
                                      row=[round(float(x), 4) for x in row]), say("loss_jacobian_hint"))
            if abs(float(row[r]) - W / N) > 1e-9:
                raise CheckFailed(say("loss_grad", case=case, r=r, got=float(row[r]), want=W / N),
                                  say("loss_grad_hint"))
    return len(LOSS_CASES)


CHECKS = {
    "distributed.shard": check_shard,
    "distributed.rank_losses": check_rank_losses,
}
