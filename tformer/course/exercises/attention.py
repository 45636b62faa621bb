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
from tformer.masks import causal_mask
from tformer.nn.attention import scaled_dot_product_attention
from tformer.nn.positional import sinusoidal_encoding

ATOL = 1e-5


def _close(a: object, b: torch.Tensor) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and a.shape == b.shape
        and bool(torch.isfinite(a).all())
        and torch.allclose(a.double(), b.double(), atol=ATOL, rtol=1e-4)
    )


def _diagnose(got: object, mistakes: dict[str, torch.Tensor], fallback: str) -> str:
    """The hint of the first known mistake that ``got`` reproduces (NaN entries match anything)."""
    if not isinstance(got, torch.Tensor):
        return fallback
    for hint, wrong in mistakes.items():
        if got.shape != wrong.shape:
            continue
        finite = torch.isfinite(got)
        if finite.any() and torch.allclose(
            got[finite].double(), wrong[finite].double(), atol=ATOL, rtol=1e-4
        ):
            return hint
    return fallback


def _describe(got: object, want: torch.Tensor) -> str:
    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor, got {type(got).__name__}"
    if got.shape != want.shape:
        return f"expected shape {tuple(want.shape)}, got {tuple(got.shape)}"
    if not torch.isfinite(got).all():
        return "the output contains NaN or inf"
    return f"max abs diff {float((got.double() - want.double()).abs().max()):.3g}"


# --- attention.scaled_dot_product -------------------------------------------------------------

HINT_SCALE = (
    "the scores must be divided by √d_k before the softmax: scores = q @ k.transpose(-2, -1) / "
    "math.sqrt(d_k). Without it large d_k pushes the softmax into saturation (§3.2.1)."
)
HINT_SCALE_DK = "divide by √d_k (math.sqrt(d_k)), not by d_k itself."
HINT_SCALE_DV = (
    "scale by √d_k, the size of the queries and keys (q.shape[-1]), not by √d_v, the size of the "
    "values (v.shape[-1]): the dot products q·k are what grow with the dimension (§3.2.1)."
)
HINT_FULLY_MASKED_NAN = (
    "a query whose mask row is all False gives NaN when the scores are filled with -inf (softmax of "
    "all -inf is 0/0). Fill with torch.finfo(scores.dtype).min instead, and set the masked weights to "
    "0 after the softmax (weights.masked_fill(~mask, 0.0)), so that query's output is all zeros."
)
HINT_FULLY_MASKED_UNIFORM = (
    "a query whose mask row is all False may attend to nothing, so its output must be zeros; your "
    "answer averages all values there. After the softmax set the masked weights to 0: "
    "weights.masked_fill(~mask, 0.0)."
)
HINT_AXIS = (
    "the softmax must run over the keys, the last axis: torch.softmax(scores, dim=-1), so that "
    "each query's weights α_{i,·} sum to 1."
)
HINT_MASK_AFTER = (
    "apply the mask before the softmax: set masked scores to -inf (or a very negative number) and "
    "then take the softmax, so the remaining weights still sum to 1. Zeroing weights after the "
    "softmax leaves rows that no longer sum to 1."
)
HINT_MASK_INVERTED = (
    "in tformer True means 'may attend': fill the scores where the mask is False "
    "(scores.masked_fill(~mask, float('-inf'))). torch.nn.MultiheadAttention's key_padding_mask "
    "uses the opposite convention."
)
HINT_MASK_IGNORED = "the mask was not used: masked positions must get zero weight."
HINT_TRANSPOSE = "the scores are q @ k.transpose(-2, -1) (query rows against key rows), not q @ k."
HINT_SDPA = "compute softmax(q kᵀ / √d_k) v, Eq. (1) of the paper, on the last two dimensions."


def _sdpa_variants(q, k, v, mask) -> dict[str, torch.Tensor]:
    d_k = q.shape[-1]
    raw = q @ k.transpose(-2, -1)
    scores = raw / math.sqrt(d_k)
    neg = torch.finfo(q.dtype).min

    def fill(s: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return s if keep is None else s.masked_fill(~keep, neg)

    out: dict[str, torch.Tensor] = {
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
        ("one sequence (T=4, d_k=16), no mask", randn(4, 16), randn(4, 16), randn(4, 16), None),
        ("batched (B=2, h=3), T_q=3, T_k=5, d_k=8", randn(2, 3, 3, 8), randn(2, 3, 5, 8),
         randn(2, 3, 5, 6), None),
        ("causal mask (T=5, d_k=16)", randn(1, 5, 16), randn(1, 5, 16), randn(1, 5, 4), causal_mask(5)),
        ("key padding mask (B=2, lengths 5 and 3)", randn(2, 2, 4, 16), randn(2, 2, 5, 16),
         randn(2, 2, 5, 8), key_padding),
        # A query that may see no key at all (a padded query of an empty sentence, say): its
        # output must be zeros, not NaN. Row 2 is fully masked; the others are partly masked.
        ("query 2 may attend to no key (its mask row is all False)", randn(1, 4, 8), randn(1, 5, 8),
         randn(1, 5, 3), torch.tensor([[True, True, False, False, True],
                                       [True, False, True, False, False],
                                       [False, False, False, False, False],
                                       [True, True, True, True, False]])),
    ]
    for i, (name, q, k, v, mask) in enumerate(cases, start=1):
        got = fn(q, k, v) if mask is None else fn(q, k, v, mask=mask)
        weights = None
        if isinstance(got, (tuple, list)):
            if len(got) != 2:
                raise CheckFailed(f"case {i} ({name}): returned {len(got)} values",
                                  "return out, or the pair (out, weights)")
            got, weights = got
        want, want_w = scaled_dot_product_attention(q, k, v, mask)
        if not _close(got, want):
            hint = HINT_SDPA
            if isinstance(got, torch.Tensor) and got.shape != want.shape and k.shape[-2] != k.shape[-1]:
                hint = HINT_TRANSPOSE
            hint = _diagnose(got, _sdpa_variants(q, k, v, mask), hint)
            fully_masked = mask is not None and bool((~mask.any(-1)).any())
            if (fully_masked and isinstance(got, torch.Tensor) and got.shape == want.shape
                    and not torch.isfinite(got).all()):
                hint = HINT_FULLY_MASKED_NAN
            raise CheckFailed(f"case {i} ({name}): {_describe(got, want)}", hint)
        if weights is not None and not _close(weights, want_w):
            raise CheckFailed(f"case {i} ({name}): the weights differ, {_describe(weights, want_w)}",
                              "weights are softmax(q kᵀ/√d_k) over the last axis, after masking")
    return len(cases)


# --- attention.causal_mask ---------------------------------------------------------------------


def check_causal_mask(fn: Callable) -> int:
    """``fn(T)`` must return a ``(T, T)`` bool mask, True where query t may see key s (s ≤ t)."""
    sizes = [4, 7, 1]
    for i, T in enumerate(sizes, start=1):
        got = fn(T)
        want = causal_mask(T)
        if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype != torch.bool:
            raise CheckFailed(f"case {i} (T={T}): dtype {got.dtype}, expected torch.bool",
                              "return a bool tensor (True = may attend), e.g. torch.ones(T, T, "
                              "dtype=torch.bool).tril(); tformer does not use additive float masks")
        if isinstance(got, torch.Tensor) and got.shape == want.shape and torch.equal(got, want):
            continue
        mistakes = {
            "True must mean 'may attend': your mask is True where attention is forbidden (the "
            "future). Invert it, or build it with .tril().": ~want,
            "position t must see the past (columns s ≤ t), not the future: use .tril(), not .triu().":
                want.T.clone(),
            "a position may attend to itself: keep the diagonal (tril(diagonal=0)).":
                want & ~torch.eye(T, dtype=torch.bool),
        }
        hint = "row t (the query) must be True in columns 0..t and False after t (§3.2.3)."
        for text, wrong in mistakes.items():
            if isinstance(got, torch.Tensor) and got.shape == wrong.shape and torch.equal(got.bool(), wrong):
                hint = text
                break
        shape_ok = isinstance(got, torch.Tensor) and got.shape == want.shape
        detail = "wrong entries" if shape_ok else _describe(got, want)
        raise CheckFailed(f"case {i} (T={T}): {detail}", hint)
    return len(sizes)


# --- attention.multi_head_split / merge ---------------------------------------------------------

HINT_SPLIT_VIEW = (
    "x.view(B, h, T, d_k) reinterprets memory and mixes tokens across heads. Split the last axis "
    "first, x.view(B, T, h, d_k), then swap axes with .transpose(1, 2) to get (B, h, T, d_k)."
)
HINT_SPLIT_ORDER = (
    "each head takes a contiguous slice of d_k = d_model/h features: view(B, T, h, d_k), not "
    "view(B, T, d_k, h)."
)


def check_multi_head_split(fn: Callable) -> int:
    """``fn(x, num_heads)``: ``(B, T, d_model)`` → ``(B, h, T, d_k)``, head j = features j·d_k…"""
    g = torch.Generator().manual_seed(1)
    cases = [(2, 5, 12, 3), (1, 7, 8, 2), (3, 4, 24, 6)]
    for i, (B, T, d, h) in enumerate(cases, start=1):
        x = torch.randn(B, T, d, generator=g)
        d_k = d // h
        got = fn(x, h)
        want = x.view(B, T, h, d_k).transpose(1, 2)
        if _close(got, want):
            continue
        mistakes = {
            HINT_SPLIT_VIEW: x.reshape(B, h, T, d_k),
            HINT_SPLIT_ORDER: x.view(B, T, d_k, h).permute(0, 3, 1, 2),
        }
        hint = _diagnose(got, mistakes, "head j of token t must hold x[b, t, j*d_k:(j+1)*d_k].")
        if isinstance(got, torch.Tensor) and got.shape == (B, T, h, d_k):
            hint = "after view(B, T, h, d_k) add .transpose(1, 2) so the heads come before time."
        raise CheckFailed(f"case {i} (B={B}, T={T}, d_model={d}, h={h}): {_describe(got, want)}", hint)
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
                raise CheckFailed(f"case {i}: {error}",
                                  "after transpose the tensor is not contiguous: use .reshape(...) "
                                  "or .contiguous().view(...)") from None
            raise
        want = x.transpose(1, 2).reshape(B, T, h * d_k)
        if not _close(got, want):
            hint = _diagnose(got, {
                "transpose back to (B, T, h, d_k) before reshaping to (B, T, d_model); "
                "x.reshape(B, T, -1) alone mixes tokens across heads.": x.reshape(B, T, h * d_k),
            }, "token t must get the concatenation [head_0[t], head_1[t], …].")
            raise CheckFailed(f"case {i} (B={B}, h={h}, T={T}, d_k={d_k}): {_describe(got, want)}", hint)
    return len(cases)


# --- positional.sinusoidal ----------------------------------------------------------------------

HINT_SWAP = "sin goes in the even dimensions (2i) and cos in the odd ones (2i+1), §3.5."
HINT_HALVES = (
    "the paper interleaves: sin in dimensions 0, 2, 4, … and cos in 1, 3, 5, …, not all sines "
    "followed by all cosines."
)
HINT_EXPONENT = (
    "dimensions 2i and 2i+1 share one frequency 1/10000^(2i/d_model); the exponent uses the pair "
    "index 2i, not the dimension index."
)


def _sinusoid_variants(max_len: int, d: int) -> dict[str, torch.Tensor]:
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    i2 = torch.arange(0, d, 2, dtype=torch.float64)
    angle = pos / 10000 ** (i2 / d)
    swapped = torch.zeros(max_len, d, dtype=torch.float64)
    swapped[:, 0::2], swapped[:, 1::2] = torch.cos(angle), torch.sin(angle)
    halves = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
    per_dim = pos / 10000 ** (torch.arange(d, dtype=torch.float64) / d)
    exponent = per_dim.clone()
    exponent[:, 0::2], exponent[:, 1::2] = per_dim[:, 0::2].sin(), per_dim[:, 1::2].cos()
    return {HINT_SWAP: swapped, HINT_HALVES: halves, HINT_EXPONENT: exponent}


def check_sinusoidal(fn: Callable) -> int:
    """``fn(max_len, d_model)`` must return the ``(max_len, d_model)`` table of §3.5."""
    cases = [(10, 8), (50, 32), (7, 6)]
    for i, (max_len, d) in enumerate(cases, start=1):
        got = fn(max_len, d)
        want = sinusoidal_encoding(max_len, d)
        if not _close(got, want):
            hint = _diagnose(got, _sinusoid_variants(max_len, d),
                             "PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(same).")
            raise CheckFailed(f"case {i} (max_len={max_len}, d_model={d}): {_describe(got, want)}", hint)
    return len(cases)


CHECKS: dict[str, Callable[[Callable], int]] = {
    "attention.scaled_dot_product": check_scaled_dot_product,
    "attention.causal_mask": check_causal_mask,
    "attention.multi_head_split": check_multi_head_split,
    "attention.multi_head_merge": check_multi_head_merge,
    "positional.sinusoidal": check_sinusoidal,
}


# --- chapter 1: why.cnn_layers_needed, why.padding_fraction --------------------------------------


def check_cnn_layers_needed(fn: Callable) -> int:
    """``fn(n, kernel_size)``: fewest stacked convolutions after which tokens n apart interact."""
    cases = [(1, 3), (2, 3), (7, 3), (10, 3), (100, 3), (8, 5), (9, 5), (50, 7)]
    for i, (n, k) in enumerate(cases, start=1):
        want = math.ceil(n / (k - 1))
        got = fn(n, k)
        if got != want:
            hint = "each layer widens the receptive field by kernel_size - 1 positions in total: " \
                   "ceil(n / (kernel_size - 1))."
            if got == n or got == math.ceil(n / ((k - 1) // 2)):
                hint = ("count the window of one output in the middle, which grows on both sides: "
                        "L layers see L*(kernel_size-1)+1 positions, ceil(n / (kernel_size - 1)).")
            raise CheckFailed(f"case {i} (n={n}, kernel_size={k}): expected {want}, got {got!r}", hint)
    return len(cases)


def check_padding_fraction(fn: Callable) -> int:
    """``fn(lengths, batch_size)``: share of padding when consecutive batches pad to their max."""
    cases = [([3, 3, 3, 3], 2), ([1, 4, 2, 2], 2), ([5, 1, 1, 1, 2], 2), ([2, 7, 3, 1, 1, 6, 4], 3),
             ([4], 1)]
    for i, (lengths, b) in enumerate(cases, start=1):
        padded = sum(max(lengths[j:j + b]) * len(lengths[j:j + b]) for j in range(0, len(lengths), b))
        want = 1 - sum(lengths) / padded
        got = fn(list(lengths), b)
        if not isinstance(got, (int, float)) or isinstance(got, bool) or abs(got - want) > 1e-9:
            hint = "pad each batch to its own longest sentence; padding = padded positions - real tokens."
            global_max = 1 - sum(lengths) / (max(lengths) * len(lengths))
            if isinstance(got, (int, float)) and abs(got - global_max) < 1e-9:
                hint = "pad each batch to its own longest sentence, not to the longest of all batches."
            elif isinstance(got, (int, float)) and padded and abs(got - sum(lengths) / padded) < 1e-9:
                hint = "return the share of padding (1 - real/padded), not the share of real tokens."
            raise CheckFailed(f"case {i} (lengths={lengths}, batch_size={b}): expected {want:.4f}, "
                              f"got {got!r}", hint)
    return len(cases)


CHECKS.update({
    "why.cnn_layers_needed": check_cnn_layers_needed,
    "why.padding_fraction": check_padding_fraction,
})
