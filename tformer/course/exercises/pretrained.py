"""Checkers for chapter 11 (a pretrained encoder): pooling, the padding mask, semantic search."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tformer.course.exercises import CheckFailed
from tformer.course.exercises._common import COMMON
from tformer.course.exercises._text import texts
from tformer.nn.bert import key_padding_mask
from tformer.pretrained import cosine_top_k, mean_pool

MESSAGES = {
    "case_no_pad": ("no padding", "无填充"),
    "case_padded": ("a padded batch", "有填充的批量"),
    "case_bool": ("a bool mask", "布尔掩码"),
    "pool_shape": ("case {i} ({what}): expected shape {want}, got {got}", "用例 {i}（{what}）：形状应为 {want}，实际为 {got}"),
    "pool_shape_hint": ("average over the token dimension T (dim=1), one vector per sentence",
                        "沿词元维 T（dim=1）求平均，每个句子一个向量"),
    "pool_diff": ("case {i} ({what}): max abs diff {diff:.3g}", "用例 {i}（{what}）：最大绝对误差 {diff:.3g}"),
    "pool_padded": ("padded positions are included: multiply by the mask before summing",
                    "把填充位置也算进去了：求和之前先乘以掩码"),
    "pool_count": ("sum the masked vectors and divide by the number of real tokens, mask.sum(dim=1), not "
                   "by T", "对掩蔽后的向量求和，再除以真实词元的个数 mask.sum(dim=1)，而不是 T"),
    "mask_dtype": ("case {i}: expected a torch.bool tensor, got {dtype}", "用例 {i}：应返回 torch.bool 张量，实际为 {dtype}"),
    "mask_dtype_hint": ("tformer's masks are bool; convert with .bool() or == 1",
                        "tformer 的掩码是布尔型；用 .bool() 或 == 1 转换"),
    "mask_shape": ("case {i}: expected shape {want}, got {got}", "用例 {i}：形状应为 {want}，实际为 {got}"),
    "mask_shape_hint": ("add the head and query axes: mask[:, None, None, :] broadcasts to (B, h, T, T)",
                        "加上头和查询两个维度：mask[:, None, None, :] 可广播到 (B, h, T, T)"),
    "mask_inverted": ("case {i}: the mask is inverted", "用例 {i}：掩码取反了"),
    "mask_inverted_hint": ("in tformer True = may attend (a real token); torch.nn's key_padding_mask is "
                           "the opposite", "在 tformer 中 True = 可以关注（真实词元）；torch.nn 的 "
                           "key_padding_mask 正好相反"),
    "mask_values": ("case {i}: wrong values", "用例 {i}：取值不对"),
    "mask_values_hint": ("True where attention_mask is 1, False where it is 0",
                         "attention_mask 为 1 处为 True，为 0 处为 False"),
    "topk_shape": ("case {i}: expected indices of shape {want}, got {got}", "用例 {i}：下标的形状应为 {want}，实际为 {got}"),
    "topk_shape_hint": ("one row of k indices per query: sims.topk(k, dim=-1).indices",
                        "每个查询一行 k 个下标：sims.topk(k, dim=-1).indices"),
    "topk_case": ("case {i}: expected {want}, got {got}", "用例 {i}：应为 {want}，实际为 {got}"),
    "topk_dot": ("this ranks by the raw dot product; normalise both sides to unit length first (cosine)",
                 "这是按原始点积排序；应先把两边都归一化为单位长度（余弦相似度）"),
    "topk_hint": ("rank by cosine similarity, highest first (topk or argsort(descending=True))",
                  "按余弦相似度从高到低排序（topk 或 argsort(descending=True)）"),
}
say = texts(MESSAGES, COMMON)


def _cases(seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 5, 4, generator=g)
    return [
        (say("case_no_pad"), hidden[:1], torch.ones(1, 5, dtype=torch.long)),
        (say("case_padded"), hidden, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])),
        (say("case_bool"), hidden[1:], torch.tensor([[True, True, False, False, False], [True] * 4 + [False]])),
    ]


def check_mean_pool(fn: Callable) -> int:
    """``fn(hidden (B, T, d), attention_mask (B, T)) -> (B, d)``: the mean over real tokens only."""
    for i, (what, hidden, mask) in enumerate(_cases(), start=1):
        got = fn(hidden.clone(), mask.clone())
        want_shape = (hidden.shape[0], hidden.shape[2])
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != want_shape or got.is_complex():
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(say("pool_shape", i=i, what=what, want=want_shape, got=shape),
                              say("pool_shape_hint"))
        want = mean_pool(hidden, mask)
        if not torch.allclose(got.float(), want, atol=1e-5):
            diff = (got.float() - want).abs().max().item()
            plain = hidden.mean(dim=1)
            hint = say("pool_padded") if torch.allclose(got.float(), plain, atol=1e-5) else say("pool_count")
            raise CheckFailed(say("pool_diff", i=i, what=what, diff=diff), hint)
    return 3


def check_key_padding_mask(fn: Callable) -> int:
    """``fn(attention_mask (B, T) of 0/1) -> bool (B, 1, 1, T)``, True = may attend."""
    masks = [torch.tensor([[1, 1, 1, 0]]), torch.tensor([[1, 1, 0], [1, 1, 1]]),
             torch.tensor([[1, 0, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])]
    for i, m in enumerate(masks, start=1):
        got = fn(m.clone())
        want = key_padding_mask(m)
        if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
            dtype = got.dtype if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(say("mask_dtype", i=i, dtype=dtype), say("mask_dtype_hint"))
        if tuple(got.shape) != tuple(want.shape):
            raise CheckFailed(say("mask_shape", i=i, want=tuple(want.shape), got=tuple(got.shape)),
                              say("mask_shape_hint"))
        if torch.equal(got, ~want):
            raise CheckFailed(say("mask_inverted", i=i), say("mask_inverted_hint"))
        if not torch.equal(got, want):
            raise CheckFailed(say("mask_values", i=i), say("mask_values_hint"))
    return len(masks)


def check_top_k(fn: Callable) -> int:
    """``fn(query (Q, d), corpus (N, d), k) -> indices (Q, k)`` of the most cosine-similar rows."""
    g = torch.Generator().manual_seed(1)
    corpus = torch.randn(8, 6, generator=g)
    corpus[3] *= 50.0  # a long vector: dot product favours it, cosine similarity does not
    queries = [(torch.randn(1, 6, generator=g), 1), (torch.randn(3, 6, generator=g), 3),
               (corpus[[5]] * 0.1 + 0.01, 2)]
    for i, (q, k) in enumerate(queries, start=1):
        got = fn(q.clone(), corpus.clone(), k)
        want = cosine_top_k(q, corpus, k)[1]
        try:
            got = torch.as_tensor(got)
        except (TypeError, ValueError, RuntimeError):
            raise CheckFailed(say("topk_shape", i=i, want=tuple(want.shape), got=type(got).__name__),
                              say("topk_shape_hint")) from None
        if tuple(got.shape) != tuple(want.shape) or got.is_floating_point() or got.is_complex():
            raise CheckFailed(say("topk_shape", i=i, want=tuple(want.shape), got=tuple(got.shape)),
                              say("topk_shape_hint"))
        if not torch.equal(got.long(), want):
            by_dot = (q @ corpus.T).topk(k, dim=-1).indices
            hint = say("topk_dot") if torch.equal(got.long(), by_dot) else say("topk_hint")
            raise CheckFailed(say("topk_case", i=i, want=want.tolist(), got=got.tolist()), hint)
    return len(queries)


CHECKS = {
    "pretrained.mean_pool": check_mean_pool,
    "pretrained.key_padding_mask": check_key_padding_mask,
    "pretrained.top_k": check_top_k,
}
