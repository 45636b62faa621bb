"""Checkers for chapter 11 (a pretrained encoder): pooling, the padding mask, semantic search."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tformer.course.exercises import CheckFailed
from tformer.nn.bert import key_padding_mask
from tformer.pretrained import cosine_top_k, mean_pool


def _cases(seed: int = 0) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 5, 4, generator=g)
    return [
        ("no padding", hidden[:1], torch.ones(1, 5, dtype=torch.long)),
        ("a padded batch", hidden, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])),
        ("a bool mask", hidden[1:], torch.tensor([[True, True, False, False, False], [True] * 4 + [False]])),
    ]


def check_mean_pool(fn: Callable) -> int:
    """``fn(hidden (B, T, d), attention_mask (B, T)) -> (B, d)``: the mean over real tokens only."""
    for i, (what, hidden, mask) in enumerate(_cases(), start=1):
        got = fn(hidden.clone(), mask.clone())
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (hidden.shape[0], hidden.shape[2]):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(f"case {i} ({what}): expected shape {(hidden.shape[0], hidden.shape[2])}, got {shape}",
                              hint="average over the token dimension T (dim=1), one vector per sentence")
        want = mean_pool(hidden, mask)
        if not torch.allclose(got.float(), want, atol=1e-5):
            diff = (got.float() - want).abs().max().item()
            plain = hidden.mean(dim=1)
            hint = ("padded positions are included: multiply by the mask before summing"
                    if torch.allclose(got.float(), plain, atol=1e-5) else
                    "sum the masked vectors and divide by the number of real tokens, mask.sum(dim=1), not by T")
            raise CheckFailed(f"case {i} ({what}): max abs diff {diff:.3g}", hint=hint)
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
            raise CheckFailed(f"case {i}: expected a torch.bool tensor, got {dtype}",
                              hint="tformer's masks are bool; convert with .bool() or == 1")
        if tuple(got.shape) != tuple(want.shape):
            raise CheckFailed(f"case {i}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}",
                              hint="add the head and query axes: mask[:, None, None, :] broadcasts to (B, h, T, T)")
        if torch.equal(got, ~want):
            raise CheckFailed(f"case {i}: the mask is inverted",
                              hint="in tformer True = may attend (a real token); torch.nn's key_padding_mask is the opposite")
        if not torch.equal(got, want):
            raise CheckFailed(f"case {i}: wrong values", hint="True where attention_mask is 1, False where it is 0")
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
        got = torch.as_tensor(got)
        if tuple(got.shape) != tuple(want.shape):
            raise CheckFailed(f"case {i}: expected indices of shape {tuple(want.shape)}, got {tuple(got.shape)}",
                              hint="one row of k indices per query: sims.topk(k, dim=-1).indices")
        if not torch.equal(got.long(), want):
            by_dot = (q @ corpus.T).topk(k, dim=-1).indices
            hint = ("this ranks by the raw dot product; normalise both sides to unit length first (cosine)"
                    if torch.equal(got.long(), by_dot) else
                    "rank by cosine similarity, highest first (topk or argsort(descending=True))")
            raise CheckFailed(f"case {i}: expected {want.tolist()}, got {got.tolist()}", hint=hint)
    return len(queries)


CHECKS = {
    "pretrained.mean_pool": check_mean_pool,
    "pretrained.key_padding_mask": check_key_padding_mask,
    "pretrained.top_k": check_top_k,
}
