"""Checkers for the coding exercises of chapter 13 (the paper revisited): what pre-LN adds to the
parameter count, the memory of materialised attention weights, and the four terms of an additive
positional encoding's attention score."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from tformer.course.exercises import CheckFailed
from tformer.course.exercises._common import COMMON, number, short
from tformer.course.exercises._text import texts
from tformer.nn.positional import sinusoidal_encoding
from tformer.nn.transformer import Transformer, TransformerConfig, count_parameters

MESSAGES = {
    "preln_case": ("case {i} (d_model={d}, N={n}): expected {want:,}, got {got}",
                   "用例 {i}（d_model={d}, N={n}）：应为 {want:,}，实际为 {got}"),
    "preln": ("pre-LN adds one LayerNorm at the end of each of the two stacks (the last layer's output "
              "would otherwise never be normalised); each has a weight and a bias of d_model entries.",
              "前置归一化在两个栈的末尾各加一个层归一化（否则最后一层的输出从未被归一化）；"
              "每个层归一化有 d_model 个权重和 d_model 个偏置。"),
    "preln_per_layer": ("the extra LayerNorm is one per stack, at its end, not one per layer: the answer "
                        "does not depend on N.", "多出来的层归一化是每个栈一个（在栈的末尾），而不是每层一个："
                        "答案与 N 无关。"),
    "preln_one_stack": ("both stacks, the encoder's and the decoder's, get a final LayerNorm.",
                        "编码器和解码器两个栈都有一个最终的层归一化。"),
    "preln_no_bias": ("a LayerNorm has a bias as well as a weight: 2 · d_model parameters.",
                      "层归一化除了权重还有偏置：共 2 · d_model 个参数。"),
    "mem_case": ("case {i} (T={T}, d_k={d_k}, {b} bytes per number): expected {want}, got {got}",
                 "用例 {i}（T={T}, d_k={d_k}，每个数 {b} 字节）：应为 {want}，实际为 {got}"),
    "mem_return": ("return the pair (bytes of the attention weights, bytes of the head's output).",
                   "返回二元组（注意力权重的字节数，该头输出的字节数）。"),
    "mem": ("the weights are a T × T matrix and the output T × d_k, each number taking the given "
            "number of bytes.", "权重是 T × T 的矩阵，输出是 T × d_k，每个数占给定的字节数。"),
    "mem_weights": ("the attention weights hold one number per (query, key) pair: T × T, not T × d_k.",
                    "注意力权重对每一对（查询，键）有一个数：T × T，而不是 T × d_k。"),
    "mem_bytes": ("multiply the number of entries by the bytes per number (2 for bfloat16).",
                  "元素个数还要乘以每个数的字节数（bfloat16 为 2）。"),
    "mem_swapped": ("the weights come first, the output second.", "先返回权重，再返回输出。"),
    "terms_case": ("case {i} (m={m}, n={n}): expected {want}, got {got}", "用例 {i}（m={m}, n={n}）：应为 {want}，实际为 {got}"),
    "terms_return": ("return the four numbers (x·y, x·PE[n], PE[m]·y, PE[m]·PE[n]).",
                     "返回四个数 (x·y, x·PE[n], PE[m]·y, PE[m]·PE[n])。"),
    "terms": ("expand (x + PE[m]) · (y + PE[n]) = x·y + x·PE[n] + PE[m]·y + PE[m]·PE[n], in this order.",
              "按此顺序展开 (x + PE[m]) · (y + PE[n]) = x·y + x·PE[n] + PE[m]·y + PE[m]·PE[n]。"),
    "terms_swapped": ("x goes with the query's position m and y with the key's position n: the cross "
                      "terms are x·PE[n] and PE[m]·y (x + PE[m] meets y + PE[n]).",
                      "交叉项是 x·PE[n] 和 PE[m]·y：x + PE[m] 与 y + PE[n] 相乘，x 与 PE[n] 相遇，PE[m] 与 y 相遇。"),
}
say = texts(MESSAGES, COMMON)


def _plain(v: float | None) -> object:
    return int(v) if v is not None and float(v).is_integer() else v


def _as_numbers(out: object, n: int) -> list[float] | None:
    if isinstance(out, torch.Tensor) and out.numel() == n and not out.is_complex():
        return [float(v) for v in out.flatten()]
    if isinstance(out, (tuple, list)) and len(out) == n:
        values = [number(v) for v in out]
        return None if any(v is None for v in values) else values
    return None


# --- paper.preln_extra_parameters ----------------------------------------------------------------


@functools.cache
def _count(d: int, n: int, norm_first: bool) -> int:
    config = TransformerConfig.base(1000, d_model=d, num_heads=2, dim_feedforward=2 * d,
                                    num_encoder_layers=n, num_decoder_layers=n, norm_first=norm_first)
    with torch.device("meta"):
        return count_parameters(Transformer(config))


def check_preln_extra_parameters(fn: Callable) -> int:
    """``fn(d_model, num_layers) -> int``: how many parameters ``norm_first=True`` adds."""
    cases = [(512, 6), (64, 2), (32, 3), (256, 1)]
    for i, (d, n) in enumerate(cases, start=1):
        want = _count(d, n, True) - _count(d, n, False)
        got = number(fn(d, n))
        if got != want:
            mistakes = {say("preln_per_layer"): 2 * 2 * d * n, say("preln_one_stack"): 2 * d,
                        say("preln_no_bias"): 2 * d}
            hint = next((h for h, v in mistakes.items() if got == v and v != want), say("preln"))
            raise CheckFailed(say("preln_case", i=i, d=d, n=n, want=want, got=_plain(got)), hint)
    return len(cases)


# --- paper.attention_memory ----------------------------------------------------------------------


def check_attention_memory(fn: Callable) -> int:
    """``fn(T, d_k, bytes_per_number) -> (weights_bytes, output_bytes)`` for one head of one layer."""
    cases = [(128_000, 128, 2), (512, 64, 4), (1, 8, 2), (4096, 128, 2)]
    for i, (T, d_k, b) in enumerate(cases, start=1):
        want = (T * T * b, T * d_k * b)
        out = fn(T, d_k, b)
        got = _as_numbers(out, 2)
        if got is None:
            raise CheckFailed(say("mem_case", i=i, T=T, d_k=d_k, b=b, want=want, got=short(out)),
                              say("mem_return"))
        if tuple(got) != want:
            mistakes = {say("mem_weights"): (T * d_k * b, T * d_k * b), say("mem_bytes"): (T * T, T * d_k),
                        say("mem_swapped"): (T * d_k * b, T * T * b)}
            hint = next((h for h, v in mistakes.items() if tuple(got) == v and v != want), say("mem"))
            raise CheckFailed(say("mem_case", i=i, T=T, d_k=d_k, b=b, want=want,
                                  got=tuple(_plain(v) for v in got)), hint)
    return len(cases)


# --- paper.additive_score_terms ------------------------------------------------------------------


def check_additive_score_terms(fn: Callable) -> int:
    """``fn(x, y, pe, m, n) -> (x·y, x·PE[n], PE[m]·y, PE[m]·PE[n])``: the expanded additive score."""
    g = torch.Generator().manual_seed(13)
    pe = sinusoidal_encoding(2048, 16).double()
    x, y = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    cases = [(5, 2), (105, 102), (0, 7), (30, 30)]
    for i, (m, n) in enumerate(cases, start=1):
        want = [float(x @ y), float(x @ pe[n]), float(pe[m] @ y), float(pe[m] @ pe[n])]
        out = fn(x.clone(), y.clone(), pe.clone(), m, n)
        got = _as_numbers(out, 4)
        shown = [round(v, 4) for v in want]
        if got is None:
            raise CheckFailed(say("terms_case", i=i, m=m, n=n, want=shown, got=short(out)),
                              say("terms_return"))
        if any(abs(a - b) > 1e-5 * max(1.0, abs(b)) for a, b in zip(got, want, strict=True)):
            swapped = [want[0], float(x @ pe[m]), float(pe[n] @ y), want[3]]
            hint = say("terms_swapped") if all(abs(a - b) < 1e-5 * max(1.0, abs(b))
                                               for a, b in zip(got, swapped, strict=True)) else say("terms")
            raise CheckFailed(say("terms_case", i=i, m=m, n=n, want=shown, got=[round(v, 4) for v in got]),
                              hint)
    return len(cases)


CHECKS = {
    "paper.preln_extra_parameters": check_preln_extra_parameters,
    "paper.attention_memory": check_attention_memory,
    "paper.additive_score_terms": check_additive_score_terms,
}
