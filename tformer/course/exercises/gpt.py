"""Checkers for the exercises of chapter 10 (GPT): temperature, top-k and top-p filtering.

Each checker runs the reader's function on a few hand-made logit vectors and compares the result
with :mod:`tformer.nn.gpt`. When a case fails it also computes the usual wrong answers (multiplying by
the temperature, zeros instead of -inf, dropping the token that crosses p, …); if the reader's
output matches one, the hint names that mistake.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tformer.course.exercises import CheckFailed
from tformer.inference.generation import top_k_filter, top_p_filter

NEG_INF = float("-inf")


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
        return f"expected a torch.Tensor, got {type(got).__name__}"
    if got.shape != want.shape:
        return f"expected shape {tuple(want.shape)}, got {tuple(got.shape)}"
    if torch.isnan(got).any():
        return "the output contains NaN"
    kept, want_kept = torch.isfinite(got), torch.isfinite(want)
    if not torch.equal(kept, want_kept):
        return (
            f"kept {int(kept.sum())} entries, expected {int(want_kept.sum())} "
            "(kept = not -inf)"
        )
    return f"max abs diff {float((got.double() - want.double()).abs().max()):.3g}"


def _run(fn: Callable, cases: list, reference: Callable, mistakes: Callable, hint: str) -> int:
    for i, (label, logits, arg) in enumerate(cases, start=1):
        want = reference(logits.clone(), arg)
        got = fn(logits.clone(), arg)
        if not _same(got, want):
            wrong = [h for h, w in mistakes(logits.clone(), arg) if _same(got, w)]
            raise CheckFailed(f"case {i} ({label}): {_describe(got, want)}", wrong[0] if wrong else hint)
    return len(cases)


def _cases(arg_values: list) -> list:
    g = torch.Generator().manual_seed(0)
    hand = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    return [
        ("5 hand-made logits", hand, arg_values[0]),
        ("a batch of 3 rows of 10", torch.randn(3, 10, generator=g) * 2, arg_values[1]),
        ("one row of 50", torch.randn(50, generator=g), arg_values[2]),
    ]


# --- gpt.temperature ------------------------------------------------------------------------------


def _temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature, dim=-1)


def _temperature_mistakes(logits: torch.Tensor, t: float) -> list:
    return [
        ("divide the logits by the temperature, do not multiply: softmax(logits / T)",
         torch.softmax(logits * t, dim=-1)),
        ("scale the logits before the softmax, not the probabilities after it",
         torch.softmax(logits, dim=-1) / t),
        ("return probabilities (apply the softmax), not the scaled logits", logits / t),
        ("take the softmax over the last dimension (the vocabulary), dim=-1",
         torch.softmax(logits / t, dim=0)),
    ]


def check_temperature(fn: Callable) -> int:
    """``fn(logits, temperature)`` → next-token probabilities softmax(logits / T), same shape."""
    return _run(fn, _cases([0.5, 2.0, 1.0]), _temperature_probs, _temperature_mistakes,
                "probabilities = softmax(logits / temperature, dim=-1)")


# --- gpt.top_k_filter -----------------------------------------------------------------------------


def _top_k_mistakes(logits: torch.Tensor, k: int) -> list:
    kth = logits.topk(k, dim=-1).values[..., -1:]
    out = [
        ("set the removed logits to -inf, not 0: a logit of 0 still gets probability after the "
         "softmax", logits.masked_fill(logits < kth, 0.0)),
        ("keep logits >= the k-th largest value; you kept only those strictly above it (k - 1)",
         logits.masked_fill(logits <= kth, NEG_INF)),
        ("return the logits in vocabulary order, not sorted: token i must stay at position i",
         logits.sort(dim=-1, descending=True).values.masked_fill(
             torch.arange(logits.shape[-1]) >= k, NEG_INF)),
    ]
    if k < logits.shape[-1]:
        kth1 = logits.topk(k + 1, dim=-1).values[..., -1:]
        out.append(("keep exactly k tokens; you kept k + 1 (index k of the sorted values is the "
                    "(k+1)-th)", logits.masked_fill(logits < kth1, NEG_INF)))
    return out


def check_top_k_filter(fn: Callable) -> int:
    """``fn(logits, k)`` → logits with all but the k largest (per row) set to -inf."""
    return _run(fn, _cases([2, 3, 10]), top_k_filter, _top_k_mistakes,
                "find the k-th largest value with torch.topk and mask everything below it with -inf")


# --- gpt.top_p_filter -----------------------------------------------------------------------------


def _top_p_mistakes(logits: torch.Tensor, p: float) -> list:
    probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
    cum = probs.cumsum(dim=-1)

    def unsort(drop_sorted: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), NEG_INF)

    sorted_logits = logits.gather(-1, order)
    return [
        ("keep the token that crosses p too: drop a token only when the tokens ranked above it "
         "already reach p (cumulative mass minus its own probability >= p)", unsort(cum > p)),
        ("work with probabilities (softmax of the logits) when summing to p, not the raw logits",
         unsort(sorted_logits.cumsum(dim=-1) - sorted_logits >= p)),
        ("map the mask back to vocabulary order (scatter with the sort indices), do not return "
         "sorted logits", sorted_logits.masked_fill(cum - probs >= p, NEG_INF)),
        ("set the removed logits to -inf, not 0",
         logits.masked_fill((cum - probs >= p).scatter(-1, order, cum - probs >= p), 0.0)),
    ]


def check_top_p_filter(fn: Callable) -> int:
    """``fn(logits, p)`` → logits with all but the nucleus (smallest set with mass ≥ p) at -inf."""
    return _run(fn, _cases([0.6, 0.9, 0.5]), top_p_filter, _top_p_mistakes,
                "sort the probabilities, take their cumulative sum, drop a token when the mass "
                "before it already reaches p, and map the mask back to vocabulary order")


CHECKS = {
    "gpt.temperature": check_temperature,
    "gpt.top_k_filter": check_top_k_filter,
    "gpt.top_p_filter": check_top_p_filter,
}
