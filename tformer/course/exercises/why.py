"""Checkers for the exercises of chapter 1: why a convolution needs depth, how much padding costs."""

from __future__ import annotations

import math
from collections.abc import Callable

from tformer.course.exercises import CheckFailed
from tformer.course.exercises._common import number, short
from tformer.course.exercises._text import texts

MESSAGES = {
    "cnn_hint": ("each layer widens the receptive field by kernel_size - 1 positions in total: "
                 "ceil(n / (kernel_size - 1)).",
                 "每一层让感受野总共扩大 kernel_size - 1 个位置：ceil(n / (kernel_size - 1))。"),
    "cnn_both_sides": ("count the window of one output in the middle, which grows on both sides: "
                       "L layers see L*(kernel_size-1)+1 positions, ceil(n / (kernel_size - 1)).",
                       "数一数中间某个输出的窗口，它向两侧同时扩大：L 层能看到 L*(kernel_size-1)+1 "
                       "个位置，即 ceil(n / (kernel_size - 1))。"),
    "cnn_case": ("case {i} (n={n}, kernel_size={k}): expected {want}, got {got}",
                 "用例 {i}（n={n}, kernel_size={k}）：应为 {want}，实际为 {got}"),
    "pad_hint": ("pad each batch to its own longest sentence; padding = padded positions - real "
                 "tokens.", "每个批量填充到它自己最长的句子；填充量 = 填充后的位置数 - 真实词元数。"),
    "pad_global": ("pad each batch to its own longest sentence, not to the longest of all batches.",
                   "每个批量填充到它自己最长的句子，而不是所有批量中最长的句子。"),
    "pad_real": ("return the share of padding (1 - real/padded), not the share of real tokens.",
                 "返回填充所占的比例（1 - 真实/填充后），而不是真实词元所占的比例。"),
    "pad_case": ("case {i} (lengths={lengths}, batch_size={b}): expected {want:.4f}, got {got}",
                 "用例 {i}（lengths={lengths}, batch_size={b}）：应为 {want:.4f}，实际为 {got}"),
}
say = texts(MESSAGES)


# --- chapter 1: why.cnn_layers_needed, why.padding_fraction --------------------------------------


def check_cnn_layers_needed(fn: Callable) -> int:
    """``fn(n, kernel_size)``: fewest stacked convolutions after which tokens n apart interact."""
    cases = [(1, 3), (2, 3), (7, 3), (10, 3), (100, 3), (8, 5), (9, 5), (50, 7)]
    for i, (n, k) in enumerate(cases, start=1):
        want = math.ceil(n / (k - 1))
        out = fn(n, k)
        got = number(out)
        if got != want:
            hint = say("cnn_hint")
            if got in (n, math.ceil(n / ((k - 1) // 2))):
                hint = say("cnn_both_sides")
            raise CheckFailed(say("cnn_case", i=i, n=n, k=k, want=want, got=short(out)), hint)
    return len(cases)


def check_padding_fraction(fn: Callable) -> int:
    """``fn(lengths, batch_size)``: share of padding when consecutive batches pad to their max."""
    cases = [([3, 3, 3, 3], 2), ([1, 4, 2, 2], 2), ([5, 1, 1, 1, 2], 2), ([2, 7, 3, 1, 1, 6, 4], 3),
             ([4], 1)]
    for i, (lengths, b) in enumerate(cases, start=1):
        padded = sum(max(lengths[j:j + b]) * len(lengths[j:j + b]) for j in range(0, len(lengths), b))
        want = 1 - sum(lengths) / padded
        out = fn(list(lengths), b)
        got = number(out)
        ok_type = got is not None
        if not ok_type or abs(got - want) > 1e-9:
            hint = say("pad_hint")
            global_max = 1 - sum(lengths) / (max(lengths) * len(lengths))
            if ok_type and abs(got - global_max) < 1e-9:
                hint = say("pad_global")
            elif ok_type and padded and abs(got - sum(lengths) / padded) < 1e-9:
                hint = say("pad_real")
            raise CheckFailed(say("pad_case", i=i, lengths=lengths, b=b, want=want, got=short(out)),
                              hint)
    return len(cases)


CHECKS: dict[str, Callable[[Callable], int]] = {
    "why.cnn_layers_needed": check_cnn_layers_needed,
    "why.padding_fraction": check_padding_fraction,
}
