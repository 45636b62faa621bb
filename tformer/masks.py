"""Attention masks: the one place tformer builds and checks them (Vaswani et al., 2017, §3.2.3).

Convention, used everywhere in tformer and the book: a **bool** tensor in which **True means "may
attend"** (the convention of ``torch.nn.functional.scaled_dot_product_attention``). A mask
broadcasts to ``(B, h, T_q, T_k)``:

=====================  ==================  ==========================================
mask                   shape               built by
=====================  ==================  ==========================================
causal                 ``(T_q, T_k)``      :func:`causal_mask` (``offset`` for a cache)
key padding            ``(B, 1, 1, T_k)``  :func:`padding_mask` (from ids or lengths)
both (decoder input)   ``(B, 1, T, T)``    ``padding_mask(ids) & causal_mask(T)``
=====================  ==================  ==========================================

``torch.nn.MultiheadAttention``'s ``key_padding_mask`` means the opposite (True = ignore); pass
``~mask`` there.
"""

from __future__ import annotations

import torch

import tformer._checks as _checks

MASK_HINT = "a bool mask broadcastable to (..., T_q, T_k) with True = may attend"


def check_mask(mask: torch.Tensor | None, target: tuple[int, ...], name: str = "mask") -> None:
    """Raise a clear error unless ``mask`` is None or a bool tensor broadcastable to ``target``."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must have dtype torch.bool (True = may attend), got {mask.dtype}; "
            "for a 0/1 tensor use mask.bool(), for an additive -inf mask use mask == 0"
        )
    _checks.broadcastable(name, tuple(mask.shape), target, MASK_HINT)


# a bound on the booleans one mask may hold (256 MiB), checked before it is allocated
MAX_MASK_ELEMENTS = 2**28


def causal_mask(
    T_q: int, T_k: int | None = None, offset: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(T_q, T_k)`` bool mask: query i (at position ``offset + i``) sees keys 0..offset+i (§3.2.3).

    ``causal_mask(T)`` is the square mask of a full pass, True on and below the diagonal. With a
    KV cache holding ``offset`` earlier positions, the T_q new queries see every cached key and the
    new keys up to their own: ``causal_mask(T_q, offset + T_q, offset)``. ``T_k`` defaults to
    ``offset + T_q``.
    """
    _checks.positive_int("T_q", T_q)
    _checks.int_at_least("offset", offset, 0, "an int >= 0 (the number of cached positions)")
    T_k = offset + T_q if T_k is None else _checks.positive_int("T_k", T_k)
    if T_q * T_k > MAX_MASK_ELEMENTS:
        raise ValueError(f"causal_mask(T_q={T_q}, T_k={T_k}) would hold {T_q * T_k:.3g} booleans, more than "
                         f"{MAX_MASK_ELEMENTS:.3g}; attention over that many positions does not fit in memory "
                         "(use shorter sequences)")
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril_(offset)


def padding_mask(
    lengths_or_ids: torch.Tensor | list[int],
    pad_id: int = 0,
    max_len: int | None = None,
) -> torch.Tensor:
    """Key-padding mask ``(B, 1, 1, T)``: True at real tokens, False at padding.

    Args:
        lengths_or_ids: either token ids ``(B, T)`` (padding is where ``ids == pad_id``; a
            Hugging Face ``attention_mask`` of 1/0 is read the same way with ``pad_id=0``) or
            the true lengths ``(B,)`` (a 1-D tensor or list of ints).
        pad_id: the padding token id, used when ids are given.
        max_len: with lengths, the padded length T (default: the longest length).
    """
    if isinstance(lengths_or_ids, (list, tuple)):
        lengths_or_ids = torch.tensor(lengths_or_ids)
    x = _checks.tensor("lengths_or_ids", lengths_or_ids)
    if x.is_floating_point():
        raise TypeError(
            f"lengths_or_ids must hold integer token ids or lengths (torch.long), got dtype {x.dtype}"
        )
    if x.dim() == 2:
        return (x != pad_id)[:, None, None, :]
    if x.dim() != 1:
        raise ValueError(
            f"lengths_or_ids must be token ids (B, T) or lengths (B,), got shape {tuple(x.shape)}"
        )
    if (x < 0).any():
        raise ValueError(f"lengths must be >= 0, got {x.tolist()}")
    longest = int(x.max()) if x.numel() else 0
    if max_len is not None:
        _checks.int_at_least("max_len", max_len, 0, "None or an int >= 0 (the padded length)")
    if max(longest, max_len or 0) * max(x.numel(), 1) > MAX_MASK_ELEMENTS:
        raise ValueError(f"padding_mask of {x.numel()} lengths up to {max(longest, max_len or 0)} would hold more "
                         f"than {MAX_MASK_ELEMENTS:.3g} booleans; the lengths are absurd")
    if max_len is None:
        max_len = longest
    elif max_len < longest:
        raise ValueError(f"max_len={max_len} is shorter than the longest length {longest}")
    positions = torch.arange(max_len, device=x.device)
    return (positions[None, :] < x[:, None])[:, None, None, :]
