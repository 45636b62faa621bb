"""Checkers for the exercises of chapters 2–4: attention, masks, heads, positional encoding.

Each checker runs the reader's function on a few cases and compares it with the package's
implementation. When a case fails it also runs the classic wrong versions (no √d_k, softmax over
the queries, mask after the softmax, heads split without a transpose, sin and cos swapped, …);
if the reader's answer matches one of them, the hint names that mistake.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tformer.course.exercises import CheckFailed
from tformer.course.exercises._common import COMMON, close, describe, diagnose
from tformer.course.exercises._text import texts
from tformer.masks import causal_mask
from tformer.nn.attention import scaled_dot_product_attention
from tformer.nn.positional import sinusoidal_encoding

MESSAGES = {
    "scale": (
        "the scores must be divided by √d_k before the softmax: scores = q @ k.transpose(-2, -1) / "
        "math.sqrt(d_k). Without it large d_k pushes the softmax into saturation (§3.2.1).",
        "softmax 之前要把分数除以 √d_k：scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)。"
        "不缩放时，d_k 较大会使 softmax 饱和（§3.2.1）。"),
    "scale_dk": ("divide by √d_k (math.sqrt(d_k)), not by d_k itself.",
                 "应除以 √d_k（math.sqrt(d_k)），而不是 d_k 本身。"),
    "scale_dv": (
        "scale by √d_k, the size of the queries and keys (q.shape[-1]), not by √d_v, the size of the "
        "values (v.shape[-1]): the dot products q·k are what grow with the dimension (§3.2.1).",
        "应按查询和键的维度 √d_k（q.shape[-1]）缩放，而不是值的维度 √d_v（v.shape[-1]）："
        "随维度增大的是点积 q·k（§3.2.1）。"),
    "fully_masked_nan": (
        "a query whose mask row is all False gives NaN when the scores are filled with -inf (softmax of "
        "all -inf is 0/0). Fill with torch.finfo(scores.dtype).min instead, and set the masked weights "
        "to 0 after the softmax (weights.masked_fill(~mask, 0.0)), so that query's output is all zeros.",
        "掩码整行为 False 的查询，若用 -inf 填充分数就会得到 NaN（全为 -inf 的 softmax 是 0/0）。"
        "请改用 torch.finfo(scores.dtype).min 填充，并在 softmax 之后把被掩蔽的权重置 0"
        "（weights.masked_fill(~mask, 0.0)），使该查询的输出全为零。"),
    "fully_masked_uniform": (
        "a query whose mask row is all False may attend to nothing, so its output must be zeros; your "
        "answer averages all values there. After the softmax set the masked weights to 0: "
        "weights.masked_fill(~mask, 0.0).",
        "掩码整行为 False 的查询不能关注任何位置，其输出必须为零；你的答案在那里对所有值取了平均。"
        "请在 softmax 之后把被掩蔽的权重置 0：weights.masked_fill(~mask, 0.0)。"),
    "axis": ("the softmax must run over the keys, the last axis: torch.softmax(scores, dim=-1), so "
             "that each query's weights α_{{i,·}} sum to 1.",
             "softmax 应沿键所在的最后一维计算：torch.softmax(scores, dim=-1)，"
             "使每个查询的权重 α_{{i,·}} 之和为 1。"),
    "mask_after": (
        "apply the mask before the softmax: set masked scores to -inf (or a very negative number) and "
        "then take the softmax, so the remaining weights still sum to 1. Zeroing weights after the "
        "softmax leaves rows that no longer sum to 1.",
        "掩码要在 softmax 之前使用：先把被掩蔽的分数设为 -inf（或很小的负数），再做 softmax，"
        "这样剩下的权重之和仍为 1。在 softmax 之后把权重置零，每行之和就不再是 1。"),
    "mask_inverted": (
        "in tformer True means 'may attend': fill the scores where the mask is False "
        "(scores.masked_fill(~mask, float('-inf'))). torch.nn.MultiheadAttention's key_padding_mask "
        "uses the opposite convention.",
        "在 tformer 中 True 表示「可以关注」：应在掩码为 False 的位置填充分数"
        "（scores.masked_fill(~mask, float('-inf'))）。torch.nn.MultiheadAttention 的 "
        "key_padding_mask 用的是相反的约定。"),
    "mask_ignored": ("the mask was not used: masked positions must get zero weight.",
                     "没有使用掩码：被掩蔽的位置的权重必须为零。"),
    "transpose": ("the scores are q @ k.transpose(-2, -1) (query rows against key rows), not q @ k.",
                  "分数是 q @ k.transpose(-2, -1)（查询的行对键的行），而不是 q @ k。"),
    "sdpa": ("compute softmax(q kᵀ / √d_k) v, Eq. (1) of the paper, on the last two dimensions.",
             "在最后两维上计算 softmax(q kᵀ / √d_k) v，即论文的式 (1)。"),
    "swapped_pair": (
        "you returned (weights, out): return the output first and the weights second, (out, weights), "
        "like tformer's scaled_dot_product_attention.",
        "你返回的是 (weights, out)：应先返回输出、再返回权重，即 (out, weights)，"
        "与 tformer 的 scaled_dot_product_attention 一致。"),
    "n_values": ("case {i} ({name}): returned {n} values", "用例 {i}（{name}）：返回了 {n} 个值"),
    "return_pair": ("return out, or the pair (out, weights)", "返回 out，或二元组 (out, weights)"),
    "weights_differ": ("case {i} ({name}): the weights differ, {detail}",
                       "用例 {i}（{name}）：注意力权重不对，{detail}"),
    "weights_hint": ("weights are softmax(q kᵀ/√d_k) over the last axis, after masking",
                     "权重是掩蔽之后沿最后一维的 softmax(q kᵀ/√d_k)"),
    "case_sdpa_1": ("one sequence (T=4, d_k=16), no mask", "单个序列（T=4, d_k=16），无掩码"),
    "case_sdpa_2": ("batched (B=2, h=3), T_q=3, T_k=5, d_k=8", "批量（B=2, h=3），T_q=3, T_k=5, d_k=8"),
    "case_sdpa_3": ("causal mask (T=5, d_k=16)", "因果掩码（T=5, d_k=16）"),
    "case_sdpa_4": ("key padding mask (B=2, lengths 5 and 3)", "键的填充掩码（B=2，长度 5 和 3）"),
    "case_sdpa_5": ("query 2 may attend to no key (its mask row is all False)",
                    "查询 2 不能关注任何键（其掩码行全为 False）"),
    # causal mask
    "causal_dtype": ("case {i} (T={T}): dtype {dtype}, expected torch.bool",
                     "用例 {i}（T={T}）：数据类型为 {dtype}，应为 torch.bool"),
    "causal_dtype_hint": ("return a bool tensor (True = may attend), e.g. torch.ones(T, T, "
                          "dtype=torch.bool).tril(); tformer does not use additive float masks",
                          "请返回布尔张量（True = 可以关注），例如 torch.ones(T, T, dtype=torch.bool).tril()；"
                          "tformer 不使用加性的浮点掩码"),
    "causal_inverted": ("True must mean 'may attend': your mask is True where attention is forbidden "
                        "(the future). Invert it, or build it with .tril().",
                        "True 必须表示「可以关注」：你的掩码在禁止关注的位置（未来）为 True。"
                        "请取反，或用 .tril() 构造。"),
    "causal_triu": ("position t must see the past (columns s ≤ t), not the future: use .tril(), not "
                    ".triu().",
                    "位置 t 应看到过去（列 s ≤ t），而不是未来：用 .tril()，不要用 .triu()。"),
    "causal_diag": ("a position may attend to itself: keep the diagonal (tril(diagonal=0)).",
                    "位置可以关注它自己：请保留对角线（tril(diagonal=0)）。"),
    "causal_hint": ("row t (the query) must be True in columns 0..t and False after t (§3.2.3).",
                    "第 t 行（查询）在第 0..t 列应为 True，t 之后为 False（§3.2.3）。"),
    "causal_case": ("case {i} (T={T}): {detail}", "用例 {i}（T={T}）：{detail}"),
    "wrong_entries": ("wrong entries", "有元素不对"),
    # heads
    "split_view": (
        "x.view(B, h, T, d_k) reinterprets memory and mixes tokens across heads. Split the last axis "
        "first, x.view(B, T, h, d_k), then swap axes with .transpose(1, 2) to get (B, h, T, d_k).",
        "x.view(B, h, T, d_k) 只是重新解释内存，会把不同词元的特征混进各个头。应先拆分最后一维 "
        "x.view(B, T, h, d_k)，再用 .transpose(1, 2) 交换维度，得到 (B, h, T, d_k)。"),
    "split_order": ("each head takes a contiguous slice of d_k = d_model/h features: view(B, T, h, "
                    "d_k), not view(B, T, d_k, h).",
                    "每个头取连续的 d_k = d_model/h 个特征：view(B, T, h, d_k)，而不是 view(B, T, d_k, h)。"),
    "split_hint": ("head j of token t must hold x[b, t, j*d_k:(j+1)*d_k].",
                   "词元 t 的第 j 个头应是 x[b, t, j*d_k:(j+1)*d_k]。"),
    "split_no_transpose": ("after view(B, T, h, d_k) add .transpose(1, 2) so the heads come before "
                           "time.", "在 view(B, T, h, d_k) 之后加上 .transpose(1, 2)，让头的维度排在时间之前。"),
    "split_case": ("case {i} (B={B}, T={T}, d_model={d}, h={h}): {detail}",
                   "用例 {i}（B={B}, T={T}, d_model={d}, h={h}）：{detail}"),
    "merge_view": ("after transpose the tensor is not contiguous: use .reshape(...) or "
                   ".contiguous().view(...)",
                   "transpose 之后张量在内存中不连续：请用 .reshape(...) 或 .contiguous().view(...)"),
    "merge_no_transpose": ("transpose back to (B, T, h, d_k) before reshaping to (B, T, d_model); "
                           "x.reshape(B, T, -1) alone mixes tokens across heads.",
                           "先转置回 (B, T, h, d_k)，再变形为 (B, T, d_model)；"
                           "只用 x.reshape(B, T, -1) 会把不同头的词元混在一起。"),
    "merge_hint": ("token t must get the concatenation [head_0[t], head_1[t], …].",
                   "词元 t 应得到拼接 [head_0[t], head_1[t], …]。"),
    "merge_case": ("case {i} (B={B}, h={h}, T={T}, d_k={d_k}): {detail}",
                   "用例 {i}（B={B}, h={h}, T={T}, d_k={d_k}）：{detail}"),
    "merge_error": ("case {i}: {error}", "用例 {i}：{error}"),
    # positions
    "pe_swap": ("sin goes in the even dimensions (2i) and cos in the odd ones (2i+1), §3.5.",
                "sin 放在偶数维（2i），cos 放在奇数维（2i+1），§3.5。"),
    "pe_halves": ("the paper interleaves: sin in dimensions 0, 2, 4, … and cos in 1, 3, 5, …, not all "
                  "sines followed by all cosines.",
                  "论文是交错排列的：sin 在第 0, 2, 4, … 维，cos 在第 1, 3, 5, … 维，"
                  "而不是先放全部 sin、再放全部 cos。"),
    "pe_exponent": ("dimensions 2i and 2i+1 share one frequency 1/10000^(2i/d_model); the exponent uses "
                    "the pair index 2i, not the dimension index.",
                    "第 2i 维和第 2i+1 维共用一个频率 1/10000^(2i/d_model)；指数用的是成对的下标 2i，"
                    "而不是维度下标。"),
    "pe_base": ("the base of the wavelengths is 10000, not {base}: PE(pos, 2i) = sin(pos / "
                "10000^(2i/d_model)) (§3.5).",
                "波长的底数是 10000，而不是 {base}：PE(pos, 2i) = sin(pos / 10000^(2i/d_model))（§3.5）。"),
    "pe_hint": ("PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(same).",
                "PE(pos, 2i) = sin(pos / 10000^(2i/d_model))，PE(pos, 2i+1) = cos(同一角度)。"),
    "pe_case": ("case {i} (max_len={max_len}, d_model={d}): {detail}",
                "用例 {i}（max_len={max_len}, d_model={d}）：{detail}"),
}
say = texts(MESSAGES, COMMON)

HINT_SCALE, HINT_SCALE_DK, HINT_SCALE_DV = say("scale"), say("scale_dk"), say("scale_dv")
HINT_FULLY_MASKED_NAN, HINT_FULLY_MASKED_UNIFORM = say("fully_masked_nan"), say("fully_masked_uniform")
HINT_AXIS, HINT_MASK_AFTER = say("axis"), say("mask_after")
HINT_MASK_INVERTED, HINT_MASK_IGNORED = say("mask_inverted"), say("mask_ignored")
HINT_TRANSPOSE, HINT_SDPA, HINT_SWAPPED_PAIR = say("transpose"), say("sdpa"), say("swapped_pair")
HINT_SPLIT_VIEW, HINT_SPLIT_ORDER = say("split_view"), say("split_order")
HINT_SWAP, HINT_HALVES, HINT_EXPONENT = say("pe_swap"), say("pe_halves"), say("pe_exponent")


# --- attention.scaled_dot_product -------------------------------------------------------------


def _sdpa_variants(q, k, v, mask) -> dict:
    d_k = q.shape[-1]
    raw = q @ k.transpose(-2, -1)
    scores = raw / math.sqrt(d_k)
    neg = torch.finfo(q.dtype).min

    def fill(s: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return s if keep is None else s.masked_fill(~keep, neg)

    out = {
        HINT_SCALE: torch.softmax(fill(raw, mask), -1) @ v,
        HINT_SCALE_DK: torch.softmax(fill(raw / d_k, mask), -1) @ v,
        HINT_AXIS: torch.softmax(fill(scores, mask), -2) @ v,
    }
    if v.shape[-1] != d_k:
        out[HINT_SCALE_DV] = torch.softmax(fill(raw / math.sqrt(v.shape[-1]), mask), -1) @ v
    if mask is not None and bool((~mask.any(-1)).any()):
        out[HINT_FULLY_MASKED_UNIFORM] = torch.softmax(fill(scores, mask), -1) @ v
    if mask is not None:
        out[HINT_MASK_AFTER] = torch.softmax(scores, -1).masked_fill(~mask, 0.0) @ v
        out[HINT_MASK_INVERTED] = torch.softmax(fill(scores, ~mask), -1) @ v
        out[HINT_MASK_IGNORED] = torch.softmax(scores, -1) @ v
    return out


def check_scaled_dot_product(fn: Callable) -> int:
    """``fn(q, k, v, mask=None)`` must return softmax(q kᵀ/√d_k) v, or ``(out, weights)``."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    lengths = torch.tensor([5, 3])
    key_padding = (torch.arange(5)[None, :] < lengths[:, None])[:, None, None, :]  # (2, 1, 1, 5)
    cases = [
        (say("case_sdpa_1"), randn(4, 16), randn(4, 16), randn(4, 16), None),
        (say("case_sdpa_2"), randn(2, 3, 3, 8), randn(2, 3, 5, 8), randn(2, 3, 5, 6), None),
        (say("case_sdpa_3"), randn(1, 5, 16), randn(1, 5, 16), randn(1, 5, 4), causal_mask(5)),
        (say("case_sdpa_4"), randn(2, 2, 4, 16), randn(2, 2, 5, 16), randn(2, 2, 5, 8), key_padding),
        # A query that may see no key at all (a padded query of an empty sentence, say): its
        # output must be zeros, not NaN. Row 2 is fully masked; the others are partly masked.
        (say("case_sdpa_5"), randn(1, 4, 8), randn(1, 5, 8), randn(1, 5, 3),
         torch.tensor([[True, True, False, False, True], [True, False, True, False, False],
                       [False, False, False, False, False], [True, True, True, True, False]])),
    ]
    for i, (name, q, k, v, mask) in enumerate(cases, start=1):
        got = fn(q, k, v) if mask is None else fn(q, k, v, mask=mask)
        want, want_w = scaled_dot_product_attention(q, k, v, mask)
        weights = None
        if isinstance(got, (tuple, list)):
            if len(got) != 2:
                raise CheckFailed(say("n_values", i=i, name=name, n=len(got)), say("return_pair"))
            got, weights = got
            if close(got, want_w) and close(weights, want):
                raise CheckFailed(say("case", i=i, name=name, detail=describe(got, want)),
                                  HINT_SWAPPED_PAIR)
        if not close(got, want):
            hint = HINT_SDPA
            if isinstance(got, torch.Tensor) and got.shape != want.shape and k.shape[-2] != k.shape[-1]:
                hint = HINT_TRANSPOSE
            hint = diagnose(got, _sdpa_variants(q, k, v, mask), hint)
            fully_masked = mask is not None and bool((~mask.any(-1)).any())
            if (fully_masked and isinstance(got, torch.Tensor) and got.shape == want.shape
                    and not got.is_complex() and not torch.isfinite(got).all()):
                hint = HINT_FULLY_MASKED_NAN
            raise CheckFailed(say("case", i=i, name=name, detail=describe(got, want)), hint)
        if weights is not None and not close(weights, want_w):
            raise CheckFailed(say("weights_differ", i=i, name=name, detail=describe(weights, want_w)),
                              say("weights_hint"))
    return len(cases)


# --- attention.causal_mask ---------------------------------------------------------------------


def check_causal_mask(fn: Callable) -> int:
    """``fn(T)`` must return a ``(T, T)`` bool mask, True where query t may see key s (s ≤ t)."""
    sizes = [4, 7, 1]
    for i, T in enumerate(sizes, start=1):
        got = fn(T)
        want = causal_mask(T)
        shape_ok = isinstance(got, torch.Tensor) and got.shape == want.shape
        if shape_ok and got.dtype != torch.bool:
            raise CheckFailed(say("causal_dtype", i=i, T=T, dtype=got.dtype), say("causal_dtype_hint"))
        if shape_ok and torch.equal(got, want):
            continue
        mistakes = {say("causal_inverted"): ~want, say("causal_triu"): want.T.clone(),
                    say("causal_diag"): want & ~torch.eye(T, dtype=torch.bool)}
        hint = next((text for text, wrong in mistakes.items() if shape_ok and torch.equal(got, wrong)),
                    say("causal_hint"))
        detail = say("wrong_entries") if shape_ok else describe(got, want)
        raise CheckFailed(say("causal_case", i=i, T=T, detail=detail), hint)
    return len(sizes)


# --- attention.multi_head_split / merge ---------------------------------------------------------


def check_multi_head_split(fn: Callable) -> int:
    """``fn(x, num_heads)``: ``(B, T, d_model)`` → ``(B, h, T, d_k)``, head j = features j·d_k…"""
    g = torch.Generator().manual_seed(1)
    cases = [(2, 5, 12, 3), (1, 7, 8, 2), (3, 4, 24, 6)]
    for i, (B, T, d, h) in enumerate(cases, start=1):
        x = torch.randn(B, T, d, generator=g)
        d_k = d // h
        got = fn(x, h)
        want = x.view(B, T, h, d_k).transpose(1, 2)
        if close(got, want):
            continue
        mistakes = {HINT_SPLIT_VIEW: x.reshape(B, h, T, d_k),
                    HINT_SPLIT_ORDER: x.view(B, T, d_k, h).permute(0, 3, 1, 2)}
        hint = diagnose(got, mistakes, say("split_hint"))
        if isinstance(got, torch.Tensor) and got.shape == (B, T, h, d_k):
            hint = say("split_no_transpose")
        raise CheckFailed(say("split_case", i=i, B=B, T=T, d=d, h=h, detail=describe(got, want)), hint)
    return len(cases)


def check_multi_head_merge(fn: Callable) -> int:
    """``fn(x)``: ``(B, h, T, d_k)`` → ``(B, T, h·d_k)``, the inverse of the split (Concat in §3.2.2)."""
    g = torch.Generator().manual_seed(2)
    cases = [(2, 3, 5, 4), (1, 2, 7, 8)]
    for i, (B, h, T, d_k) in enumerate(cases, start=1):
        x = torch.randn(B, h, T, d_k, generator=g)  # as weights @ v returns it
        try:
            got = fn(x)
        except RuntimeError as error:
            if "view" in str(error):
                line = (str(error).strip().splitlines() or [""])[0]
                raise CheckFailed(say("merge_error", i=i, error=line), say("merge_view")) from None
            raise
        want = x.transpose(1, 2).reshape(B, T, h * d_k)
        if not close(got, want):
            hint = diagnose(got, {say("merge_no_transpose"): x.reshape(B, T, h * d_k)}, say("merge_hint"))
            raise CheckFailed(say("merge_case", i=i, B=B, h=h, T=T, d_k=d_k, detail=describe(got, want)),
                              hint)
    return len(cases)


# --- positional.sinusoidal ----------------------------------------------------------------------


def _sinusoid(max_len: int, d: int, base: float = 10000.0) -> torch.Tensor:
    return sinusoidal_encoding(max_len, d, base=base).double()


def _sinusoid_variants(max_len: int, d: int) -> dict:
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    i2 = torch.arange(0, d, 2, dtype=torch.float64)
    angle = pos / 10000 ** (i2 / d)
    swapped = torch.zeros(max_len, d, dtype=torch.float64)
    swapped[:, 0::2], swapped[:, 1::2] = torch.cos(angle), torch.sin(angle)
    halves = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
    per_dim = pos / 10000 ** (torch.arange(d, dtype=torch.float64) / d)
    exponent = per_dim.clone()
    exponent[:, 0::2], exponent[:, 1::2] = per_dim[:, 0::2].sin(), per_dim[:, 1::2].cos()
    out = {HINT_SWAP: swapped, HINT_HALVES: halves, HINT_EXPONENT: exponent}
    for base in (1000, 100, 10000 * 2 * math.pi):
        out[say("pe_base", base=base)] = _sinusoid(max_len, d, base)
    return out


def check_sinusoidal(fn: Callable) -> int:
    """``fn(max_len, d_model)`` must return the ``(max_len, d_model)`` table of §3.5."""
    cases = [(10, 8), (50, 32), (7, 6)]
    for i, (max_len, d) in enumerate(cases, start=1):
        got = fn(max_len, d)
        want = sinusoidal_encoding(max_len, d)
        if not close(got, want):
            hint = diagnose(got, _sinusoid_variants(max_len, d), say("pe_hint"))
            raise CheckFailed(say("pe_case", i=i, max_len=max_len, d=d, detail=describe(got, want)), hint)
    return len(cases)


CHECKS: dict[str, Callable[[Callable], int]] = {
    "attention.scaled_dot_product": check_scaled_dot_product,
    "attention.causal_mask": check_causal_mask,
    "attention.multi_head_split": check_multi_head_split,
    "attention.multi_head_merge": check_multi_head_merge,
    "positional.sinusoidal": check_sinusoidal,
}
