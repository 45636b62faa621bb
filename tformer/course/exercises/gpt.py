"""Checkers for the exercises of chapter 10 (GPT): temperature, top-k and top-p filtering.

Each checker runs the reader's function on a few hand-made logit vectors and compares the result
with :mod:`tformer.inference.generation`. When a case fails it also computes the usual wrong answers
(multiplying by the temperature, zeros instead of -inf, dropping the token that crosses p, …); if
the reader's output matches one, the hint names that mistake.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tformer.course.exercises import CheckFailed
from tformer.course.exercises._common import COMMON
from tformer.course.exercises._text import texts
from tformer.inference.generation import top_k_filter, top_p_filter

NEG_INF = float("-inf")

MESSAGES = {
    "kept": ("kept {got} entries, expected {want} (kept = not -inf)",
             "保留了 {got} 个元素，应保留 {want} 个（保留 = 不是 -inf）"),
    "case_hand": ("5 hand-made logits", "5 个手工构造的 logits"),
    "case_batch": ("a batch of 3 rows of 10", "3 行、每行 10 个的批量"),
    "case_long": ("one row of 50", "一行 50 个"),
    "t_multiply": ("divide the logits by the temperature, do not multiply: softmax(logits / T)",
                   "用温度去除 logits，而不是乘：softmax(logits / T)"),
    "t_after": ("scale the logits before the softmax, not the probabilities after it",
                "在 softmax 之前缩放 logits，而不是在之后缩放概率"),
    "t_probs": ("return probabilities (apply the softmax), not the scaled logits",
                "返回概率（做 softmax），而不是缩放后的 logits"),
    "t_dim": ("take the softmax over the last dimension (the vocabulary), dim=-1",
              "沿最后一维（词表）做 softmax，dim=-1"),
    "t_hint": ("probabilities = softmax(logits / temperature, dim=-1)",
               "概率 = softmax(logits / temperature, dim=-1)"),
    "k_zero": ("set the removed logits to -inf, not 0: a logit of 0 still gets probability after the "
               "softmax", "把去掉的 logits 设为 -inf，而不是 0：值为 0 的 logit 在 softmax 之后仍有概率"),
    "k_strict": ("keep logits >= the k-th largest value; you kept only those strictly above it (k - 1)",
                 "保留 >= 第 k 大值的 logits；你只保留了严格大于它的（k - 1 个）"),
    "k_sorted": ("return the logits in vocabulary order, not sorted: token i must stay at position i",
                 "按词表顺序返回 logits，不要排序：词元 i 必须留在位置 i"),
    "k_plus_one": ("keep exactly k tokens; you kept k + 1 (index k of the sorted values is the "
                   "(k+1)-th)", "只保留 k 个词元；你保留了 k + 1 个（排序后下标为 k 的是第 k+1 大）"),
    "k_hint": ("find the k-th largest value with torch.topk and mask everything below it with -inf",
               "用 torch.topk 找到第 k 大的值，把比它小的都设为 -inf"),
    "p_crossing": ("keep the token that crosses p too: drop a token only when the tokens ranked above "
                   "it already reach p (cumulative mass minus its own probability >= p)",
                   "越过 p 的那个词元也要保留：只有排在它前面的词元已达到 p 时才去掉它"
                   "（累积概率减去它自己的概率 >= p）"),
    "p_logits": ("work with probabilities (softmax of the logits) when summing to p, not the raw logits",
                 "累加到 p 时用概率（logits 的 softmax），而不是原始 logits"),
    "p_sorted": ("map the mask back to vocabulary order (scatter with the sort indices), do not return "
                 "sorted logits", "把掩码映射回词表顺序（用排序下标做 scatter），不要返回排序后的 logits"),
    "p_zero": ("set the removed logits to -inf, not 0", "把去掉的 logits 设为 -inf，而不是 0"),
    "p_hint": ("sort the probabilities, take their cumulative sum, drop a token when the mass before it "
               "already reaches p, and map the mask back to vocabulary order",
               "对概率排序并求累积和，当某词元之前的概率质量已达到 p 时去掉它，再把掩码映射回词表顺序"),
}
say = texts(MESSAGES, COMMON)


def _same(got: object, want: torch.Tensor) -> bool:
    """Equal shapes, -inf in the same places, finite entries close."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.is_complex():
        return False
    got = got.double()
    want = want.double()
    if not torch.equal(torch.isneginf(got), torch.isneginf(want)) or torch.isnan(got).any():
        return False
    keep = torch.isfinite(want)
    return bool(torch.allclose(got[keep], want[keep], atol=1e-5, rtol=1e-4))


def _describe(got: object, want: torch.Tensor) -> str:
    if not isinstance(got, torch.Tensor):
        return say("not_tensor", kind=type(got).__name__)
    if got.shape != want.shape:
        return say("shape", want=tuple(want.shape), got=tuple(got.shape))
    if got.is_complex() or torch.isnan(got).any():
        return say("nan")
    kept, want_kept = torch.isfinite(got), torch.isfinite(want)
    if not torch.equal(kept, want_kept):
        return say("kept", got=int(kept.sum()), want=int(want_kept.sum()))
    return say("diff", diff=float((got.double() - want.double()).abs().max()))


def _run(fn: Callable, cases: list, reference: Callable, mistakes: Callable, hint: str) -> int:
    for i, (label, logits, arg) in enumerate(cases, start=1):
        want = reference(logits.clone(), arg)
        got = fn(logits.clone(), arg)
        if not _same(got, want):
            wrong = [h for h, w in mistakes(logits.clone(), arg) if _same(got, w)]
            raise CheckFailed(say("case", i=i, name=label, detail=_describe(got, want)),
                              wrong[0] if wrong else hint)
    return len(cases)


def _cases(arg_values: list) -> list:
    g = torch.Generator().manual_seed(0)
    hand = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    return [
        (say("case_hand"), hand, arg_values[0]),
        (say("case_batch"), torch.randn(3, 10, generator=g) * 2, arg_values[1]),
        (say("case_long"), torch.randn(50, generator=g), arg_values[2]),
    ]


# --- gpt.temperature ------------------------------------------------------------------------------


def _temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature, dim=-1)


def _temperature_mistakes(logits: torch.Tensor, t: float) -> list:
    return [
        (say("t_multiply"), torch.softmax(logits * t, dim=-1)),
        (say("t_after"), torch.softmax(logits, dim=-1) / t),
        (say("t_probs"), logits / t),
        (say("t_dim"), torch.softmax(logits / t, dim=0)),
    ]


def check_temperature(fn: Callable) -> int:
    """``fn(logits, temperature)`` → next-token probabilities softmax(logits / T), same shape."""
    return _run(fn, _cases([0.5, 2.0, 1.0]), _temperature_probs, _temperature_mistakes, say("t_hint"))


# --- gpt.top_k_filter -----------------------------------------------------------------------------


def _top_k_mistakes(logits: torch.Tensor, k: int) -> list:
    kth = logits.topk(k, dim=-1).values[..., -1:]
    out = [
        (say("k_zero"), logits.masked_fill(logits < kth, 0.0)),
        (say("k_strict"), logits.masked_fill(logits <= kth, NEG_INF)),
        (say("k_sorted"), logits.sort(dim=-1, descending=True).values.masked_fill(
            torch.arange(logits.shape[-1]) >= k, NEG_INF)),
    ]
    if k < logits.shape[-1]:
        kth1 = logits.topk(k + 1, dim=-1).values[..., -1:]
        out.append((say("k_plus_one"), logits.masked_fill(logits < kth1, NEG_INF)))
    return out


def check_top_k_filter(fn: Callable) -> int:
    """``fn(logits, k)`` → logits with all but the k largest (per row) set to -inf."""
    return _run(fn, _cases([2, 3, 10]), top_k_filter, _top_k_mistakes, say("k_hint"))


# --- gpt.top_p_filter -----------------------------------------------------------------------------


def _top_p_mistakes(logits: torch.Tensor, p: float) -> list:
    probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
    cum = probs.cumsum(dim=-1)

    def unsort(drop_sorted: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), NEG_INF)

    sorted_logits = logits.gather(-1, order)
    return [
        (say("p_crossing"), unsort(cum > p)),
        (say("p_logits"), unsort(sorted_logits.cumsum(dim=-1) - sorted_logits >= p)),
        (say("p_sorted"), sorted_logits.masked_fill(cum - probs >= p, NEG_INF)),
        (say("p_zero"), logits.masked_fill((cum - probs >= p).scatter(-1, order, cum - probs >= p), 0.0)),
    ]


def check_top_p_filter(fn: Callable) -> int:
    """``fn(logits, p)`` → logits with all but the nucleus (smallest set with mass ≥ p) at -inf."""
    return _run(fn, _cases([0.6, 0.9, 0.5]), top_p_filter, _top_p_mistakes, say("p_hint"))


CHECKS = {
    "gpt.temperature": check_temperature,
    "gpt.top_k_filter": check_top_k_filter,
    "gpt.top_p_filter": check_top_p_filter,
}
