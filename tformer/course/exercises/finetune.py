"""Checkers for the ideas of chapter 11c (fine-tuning and LoRA): the LoRA layer's forward pass, merging
the adapter into the frozen weight, and counting the numbers LoRA trains.

Every reference is computed here in float64 from the formula of the LoRA paper (Hu et al., 2021,
§4.1): a frozen weight W (out × in) and two thin matrices A (r × in) and B (out × r) give
``h = x Wᵀ + (α/r) · x Aᵀ Bᵀ``, the merged weight is ``W + (α/r) · B A``, and an adapted layer trains
``r · (in + out)`` numbers. This agrees with :class:`tformer.nn.lora.LoRALinear`, which the tests check.
On a failure the checker computes the classic wrong versions — the scaling α/r forgotten, written α
or r/α, the weight or the factors in the wrong orientation, the frozen term left out, the weight
changed in place, r·in·out counted — and names the one the reader's answer reproduces.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable

import torch

from tformer.course.exercises import _FROM_READER, CheckFailed
from tformer.course.exercises._common import COMMON, close, describe, diagnose, number, short
from tformer.course.exercises._text import texts

_SHAPES = re.compile(r"shape|size|dimension|mat1|broadcast", re.IGNORECASE)  # torch's shape-mismatch errors

MESSAGES = {
    "forward": ("h = x @ weight.T + (alpha / r) · (x @ A.T) @ B.T, with r = A.shape[0]: A (r × in) takes x "
                "down to r numbers, B (out × r) brings them back up to out.",
                "h = x @ weight.T + (alpha / r) · (x @ A.T) @ B.T，其中 r = A.shape[0]：A（r × in）把 x 压到 r "
                "个数，B（out × r）再把它们升回 out 个。"),
    "scale_missing": ("the update is scaled by α/r: (alpha / r) · (x @ A.T) @ B.T. Without it, changing the "
                      "rank would change the size of the update, and the learning rate would have to follow.",
                      "更新量要乘以缩放系数 α/r：(alpha / r) · (x @ A.T) @ B.T。没有它，改变秩就会改变更新量的"
                      "大小，学习率也得跟着改。"),
    "scale_alpha": ("the scaling is alpha / r, not alpha alone: divide by the rank r = A.shape[0].",
                    "缩放系数是 alpha / r，不只是 alpha：还要除以秩 r = A.shape[0]。"),
    "scale_inverse": ("the scaling is alpha / r, not r / alpha: alpha goes on top.",
                      "缩放系数是 alpha / r，而不是 r / alpha：alpha 在分子上。"),
    "scale_floor": ("alpha // r rounds down: use true division, alpha / r.",
                    "alpha // r 会向下取整：请用真除法 alpha / r。"),
    "rank_in": ("r is the rank, A.shape[0] (A is r × in); you divided alpha by in_features, A.shape[1].",
                "r 是秩，即 A.shape[0]（A 是 r × in）；你用 alpha 除以了输入维数 A.shape[1]。"),
    "rank_out": ("r is the rank, A.shape[0]; you divided alpha by out_features, B.shape[0] (B is out × r).",
                 "r 是秩，即 A.shape[0]；你用 alpha 除以了输出维数 B.shape[0]（B 是 out × r）。"),
    "scale_all": ("scale only the low-rank update by alpha / r; the frozen term x @ weight.T is added as it is.",
                  "只有低秩更新量乘以 alpha / r；冻结的那一项 x @ weight.T 原样加上。"),
    "weight_t": ("weight is stored (out, in), as in nn.Linear: the frozen term is x @ weight.T, not x @ weight.",
                 "weight 的形状是 (out, in)，与 nn.Linear 相同：冻结的那一项是 x @ weight.T，而不是 x @ weight。"),
    "only_update": ("you returned the update alone: LoRA adds it to the frozen layer's output, "
                    "x @ weight.T + (alpha / r) · (x @ A.T) @ B.T.",
                    "你只返回了更新量：LoRA 要把它加到冻结层的输出上，x @ weight.T + (alpha / r) · (x @ A.T) @ B.T。"),
    "only_base": ("you returned the frozen layer alone: add the adapter's update (alpha / r) · (x @ A.T) @ B.T "
                  "(B is not zero here, as it is after training).",
                  "你只返回了冻结层的输出：还要加上适配器的更新量 (alpha / r) · (x @ A.T) @ B.T"
                  "（这里 B 不为零，就像训练之后那样）。"),
    "order": ("A comes first: x @ A.T is (..., r), then @ B.T gives (..., out). You applied B first.",
              "先乘 A：x @ A.T 的形状是 (..., r)，再乘 B.T 得到 (..., out)。你先用了 B。"),
    "transpose": ("A is (r, in) and B is (out, r), like nn.Linear weights: multiply by their transposes, "
                  "(x @ A.T) @ B.T.",
                  "A 是 (r, in)、B 是 (out, r)，与 nn.Linear 的权重一样：要乘它们的转置，(x @ A.T) @ B.T。"),
    "forward_case": ("case {i} (x {shape}, in={d_in}, out={d_out}, r={r}, alpha={alpha})",
                     "用例 {i}（x {shape}，in={d_in}, out={d_out}, r={r}, alpha={alpha}）"),
    "shape_error": ("your function raised {kind}: {line}", "你的函数抛出了 {kind}：{line}"),
    "forward_shapes": ("check the shapes: weight is (out, in), A is (r, in), B is (out, r) and x is (..., in); "
                       "x @ weight.T and (x @ A.T) @ B.T are both (..., out).",
                       "请检查形状：weight 是 (out, in)，A 是 (r, in)，B 是 (out, r)，x 是 (..., in)；"
                       "x @ weight.T 和 (x @ A.T) @ B.T 都是 (..., out)。"),
    "merge": ("merged = weight + (alpha / r) · B @ A, shape (out, in), with r = A.shape[0]; then x @ merged.T "
              "gives the LoRA layer's output with no extra cost.",
              "merged = weight + (alpha / r) · B @ A，形状 (out, in)，其中 r = A.shape[0]；这样 x @ merged.T "
              "就是 LoRA 层的输出，没有额外开销。"),
    "merge_orientation": ("the update has weight's shape (out, in): B @ A, not A.T @ B.T (that is its transpose, "
                          "(in, out)).",
                          "更新量的形状与 weight 相同，是 (out, in)：B @ A，而不是 A.T @ B.T（那是它的转置，(in, out)）。"),
    "merge_delta": ("you returned the update alone: the merged weight is weight + (alpha / r) · B @ A.",
                    "你只返回了更新量：合并后的权重是 weight + (alpha / r) · B @ A。"),
    "merge_nothing": ("you returned weight unchanged: add the adapter's update (alpha / r) · B @ A.",
                      "你原样返回了 weight：还要加上适配器的更新量 (alpha / r) · B @ A。"),
    "merge_shapes": ("check the shapes: A is (r, in) and B is (out, r), so B @ A is (out, in), like weight.",
                     "请检查形状：A 是 (r, in)，B 是 (out, r)，所以 B @ A 是 (out, in)，与 weight 相同。"),
    "merge_case": ("case {i} (weight {d_out}×{d_in}, r={r}, alpha={alpha})",
                   "用例 {i}（weight {d_out}×{d_in}，r={r}, alpha={alpha}）"),
    "merge_inplace": ("case {i}: your function changed the weight it was given (an in-place += or add_)",
                      "用例 {i}：你的函数改动了传入的 weight（原地 += 或 add_）"),
    "merge_inplace_hint": ("return a new tensor, weight + (alpha / r) · B @ A, and leave weight as it was: it is the "
                           "frozen pretrained weight, which the adapter must be removable from (and shared by "
                           "other adapters).",
                           "请返回一个新张量 weight + (alpha / r) · B @ A，并保持 weight 不变：它是冻结的预训练权重，"
                           "适配器还要能从中移除（其他适配器也要共用它）。"),
    "merge_factors": ("case {i}: your function changed A or B", "用例 {i}：你的函数改动了 A 或 B"),
    "merge_factors_hint": ("read A and B without changing them: compute (alpha / r) · B @ A as a new tensor.",
                           "只读取 A 和 B，不要改动它们：把 (alpha / r) · B @ A 算成一个新张量。"),
    "count": ("each adapted layer (out, in) trains A (r × in) and B (out × r): r · (in + out) numbers; add them "
              "up over the layers.",
              "每个被适配的层 (out, in) 训练 A（r × in）和 B（out × r）：r · (in + out) 个数；再对所有层求和。"),
    "count_full": ("r · in · out is r copies of the whole matrix: LoRA trains two thin matrices, A (r × in) and "
                   "B (out × r), r · (in + out) numbers.",
                   "r · in · out 相当于 r 个完整的矩阵：LoRA 训练的是两个细长矩阵 A（r × in）和 B（out × r），"
                   "共 r · (in + out) 个数。"),
    "count_dense": ("in · out is what full fine-tuning trains in that layer (ΔW itself); LoRA trains A and B, "
                    "r · (in + out).",
                    "in · out 是完整微调在这一层训练的参数量（ΔW 本身）；LoRA 训练 A 和 B，共 r · (in + out)。"),
    "count_no_rank": ("A has r rows and B has r columns: multiply (in + out) by the rank r.",
                      "A 有 r 行，B 有 r 列：(in + out) 要乘以秩 r。"),
    "count_rank_squared": ("A is r × in and B is out × r: each number of r appears once, r · (in + out), "
                           "with no r² term.",
                           "A 是 r × in，B 是 out × r：r 只乘一次，即 r · (in + out)，没有 r² 项。"),
    "count_only_a": ("you counted A (r × in) only: B (out × r) is trained too.",
                     "你只数了 A（r × in）：B（out × r）也要训练。"),
    "count_only_b": ("you counted B (out × r) only: A (r × in) is trained too.",
                     "你只数了 B（out × r）：A（r × in）也要训练。"),
    "count_one_layer": ("add up every adapted layer in shapes, not the first one only.",
                        "要对 shapes 中每个被适配的层求和，而不只是第一个。"),
    "count_case": ("case {i} (rank {rank}, len(shapes) = {n}): expected {want:,}, got {got}",
                   "用例 {i}（秩 {rank}，len(shapes) = {n}）：应为 {want:,}，实际为 {got}"),
}
say = texts(MESSAGES, COMMON)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _name(got: object, mistakes: list[tuple[object, torch.Tensor]], fallback: object) -> object:
    """The hint of the first (hint, wrong answer) pair that ``got`` reproduces; a hint may come twice."""
    return next((hint for hint, wrong in mistakes if diagnose(got, {hint: wrong}, None) is not None), fallback)


def _shape_error(error: Exception, case: object, hint: object) -> CheckFailed | None:
    """A shape mismatch raised inside the reader's function, as a failed case with a shape hint."""
    line = (str(error).strip().splitlines() or [""])[0]
    if not (isinstance(error, RuntimeError) and getattr(error, _FROM_READER, False) and _SHAPES.search(line)):
        return None
    return CheckFailed(say("case_join", case=case, detail=say("shape_error", kind=type(error).__name__, line=line)),
                       hint)


def lora_forward_reference(x: torch.Tensor, weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           alpha: float) -> torch.Tensor:
    """``x Wᵀ + (α/r) · x Aᵀ Bᵀ`` in float64, r = A.shape[0] (Hu et al., 2021, §4.1)."""
    x, weight, A, B = x.double(), weight.double(), A.double(), B.double()
    return x @ weight.T + (alpha / A.shape[0]) * ((x @ A.T) @ B.T)


def lora_merge_reference(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float) -> torch.Tensor:
    """``W + (α/r) · B A`` in float64, r = A.shape[0]."""
    return weight.double() + (alpha / A.shape[0]) * (B.double() @ A.double())


def lora_parameter_count_reference(shapes: list[tuple[int, int]], rank: int) -> int:
    """``Σ r · (in + out)`` over the adapted layers' (out_features, in_features)."""
    return sum(rank * (d_in + d_out) for d_out, d_in in shapes)


# --- finetune.lora_forward ---------------------------------------------------------------------------


def _forward_mistakes(x, w, A, B, alpha) -> list:
    r, d_out, d_in = A.shape[0], w.shape[0], w.shape[1]
    base, update = x @ w.T, (x @ A.T) @ B.T
    s = alpha / r
    mistakes = [(say("scale_missing"), base + update), (say("scale_alpha"), base + alpha * update),
                (say("scale_inverse"), base + (r / alpha) * update), (say("rank_in"), base + (alpha / d_in) * update),
                (say("rank_out"), base + (alpha / d_out) * update), (say("scale_all"), s * (base + update)),
                (say("only_update"), s * update), (say("only_base"), base)]
    if alpha // r != alpha / r:
        mistakes.insert(0, (say("scale_floor"), base + (alpha // r) * update))
    if d_in == d_out:  # shapes that let these run
        mistakes += [(say("weight_t"), x @ w + s * update), (say("order"), base + s * (x @ B) @ A),
                     (say("order"), s * (x @ B) @ A)]
    if d_in == d_out == r:
        mistakes += [(say("order"), base + s * (x @ B.T) @ A.T), (say("transpose"), base + s * (x @ A) @ B)]
    return mistakes


def check_lora_forward(fn: Callable) -> int:
    """``fn(x (..., in), weight (out, in), A (r, in), B (out, r), alpha) -> (..., out)``: a LoRA layer."""
    g = torch.Generator().manual_seed(21)
    # (x's shape, in, out, r, alpha): square layers first, so a weight or factors used untransposed give a
    # value (and a hint) rather than a shape error; then 1-D and 3-D x, ranks 1 to 8, integer alphas.
    cases = [((5, 6), 6, 6, 2, 8.0), ((4,), 4, 4, 4, 2.0), ((2, 3, 10), 10, 12, 8, 16),
             ((3, 12), 12, 20, 1, 1.0), ((2, 2, 9), 9, 5, 3, 12), ((4, 16), 16, 16, 8, 12)]
    for i, (shape, d_in, d_out, r, alpha) in enumerate(cases, start=1):
        x = _randn(g, *shape)
        w = _randn(g, d_out, d_in) / d_in**0.5
        A = _randn(g, r, d_in) / d_in**0.5
        B = _randn(g, d_out, r) / r**0.5  # non-zero, as after training
        want = lora_forward_reference(x, w, A, B, alpha)
        case = say("forward_case", i=i, shape=shape, d_in=d_in, d_out=d_out, r=r, alpha=alpha)
        try:
            got = fn(x.clone(), w.clone(), A.clone(), B.clone(), alpha)
        except RuntimeError as error:
            failure = _shape_error(error, case, say("forward_shapes"))
            if failure is None:
                raise
            raise failure from None
        if not close(got, want):
            raise CheckFailed(say("case_join", case=case, detail=describe(got, want)),
                              _name(got, _forward_mistakes(x, w, A, B, alpha), say("forward")))
    return len(cases)


# --- finetune.lora_merge -----------------------------------------------------------------------------


def check_lora_merge(fn: Callable) -> int:
    """``fn(weight (out, in), A (r, in), B (out, r), alpha) -> (out, in)``: W + (α/r)·B A, W left as it was."""
    g = torch.Generator().manual_seed(22)
    cases = [(6, 6, 2, 8.0), (7, 10, 3, 6.0), (20, 12, 1, 4), (5, 9, 4, 16.0), (16, 16, 8, 12)]
    for i, (d_out, d_in, r, alpha) in enumerate(cases, start=1):
        w = _randn(g, d_out, d_in) / d_in**0.5
        A = _randn(g, r, d_in) / d_in**0.5
        B = _randn(g, d_out, r) / r**0.5
        want = lora_merge_reference(w, A, B, alpha)
        case = say("merge_case", i=i, d_out=d_out, d_in=d_in, r=r, alpha=alpha)
        given = (w.clone(), A.clone(), B.clone())
        try:
            got = fn(*given, alpha)
        except RuntimeError as error:
            failure = _shape_error(error, case, say("merge_shapes"))
            if failure is None:
                raise
            raise failure from None
        if not close(got, want):
            s, delta = alpha / r, B @ A
            mistakes = {say("scale_missing"): w + delta, say("scale_alpha"): w + alpha * delta,
                        say("scale_inverse"): w + (r / alpha) * delta, say("merge_delta"): s * delta,
                        say("merge_nothing"): w, say("rank_in"): w + (alpha / d_in) * delta,
                        say("rank_out"): w + (alpha / d_out) * delta}
            if alpha // r != alpha / r:
                mistakes = {say("scale_floor"): w + (alpha // r) * delta, **mistakes}
            if d_in == d_out:
                mistakes[say("merge_orientation")] = w + s * (A.T @ B.T)
            raise CheckFailed(say("case_join", case=case, detail=describe(got, want)),
                              diagnose(got, mistakes, say("merge")))
        if not torch.equal(given[0], w):
            raise CheckFailed(say("merge_inplace", i=i), say("merge_inplace_hint"))
        if not (torch.equal(given[1], A) and torch.equal(given[2], B)):
            raise CheckFailed(say("merge_factors", i=i), say("merge_factors_hint"))
    return len(cases)


# --- finetune.lora_parameter_count -------------------------------------------------------------------

# SmolLM2-135M with LoRA on W_q (576 → 576) and W_v (576 → 192, grouped-query attention) of its 30 layers
SMOLLM2_QV = [(576, 576), (192, 576)] * 30


def check_lora_parameter_count(fn: Callable) -> int:
    """``fn(shapes [(out_features, in_features), …], rank) -> int``: Σ rank · (in + out)."""
    cases = [([(8, 6)], 2), ([(10, 4), (3, 7)], 1), (SMOLLM2_QV, 8), ([(2048, 512)], 16),
             ([(64, 64), (256, 64), (64, 256)], 4)]
    for i, (shapes, rank) in enumerate(cases, start=1):
        want = lora_parameter_count_reference(shapes, rank)
        out = fn([tuple(s) for s in shapes], rank)
        got = number(out)
        if got is None and isinstance(out, numbers.Integral) and not isinstance(out, bool):  # a NumPy integer
            got = float(out)
        if got != want:
            first = shapes[0]
            mistakes = [
                (say("count_full"), sum(rank * d_in * d_out for d_out, d_in in shapes)),
                (say("count_dense"), sum(d_in * d_out for d_out, d_in in shapes)),
                (say("count_no_rank"), sum(d_in + d_out for d_out, d_in in shapes)),
                (say("count_rank_squared"), sum(rank * rank * (d_in + d_out) for d_out, d_in in shapes)),
                (say("count_rank_squared"), sum(rank * (d_in + d_out) + rank * rank for d_out, d_in in shapes)),
                (say("count_only_a"), sum(rank * d_in for d_out, d_in in shapes)),
                (say("count_only_b"), sum(rank * d_out for d_out, d_in in shapes)),
                (say("count_one_layer"), rank * (first[0] + first[1])),
            ]
            hint = next((h for h, v in mistakes if got == v and v != want), say("count"))
            if got is None:
                shown: object = short(out)
            else:
                shown = int(got) if got.is_integer() else got
            raise CheckFailed(say("count_case", i=i, n=len(shapes), rank=rank, want=want, got=shown), hint)
    return len(cases)


CHECKS = {
    "finetune.lora_forward": check_lora_forward,
    "finetune.lora_merge": check_lora_merge,
    "finetune.lora_parameter_count": check_lora_parameter_count,
}
