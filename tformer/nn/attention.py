"""Scaled dot-product attention and multi-head attention (Vaswani et al., 2017, §3.2).

Masks are bool, **True = may attend**, broadcastable to ``(B, h, T_q, T_k)``; they are built and
checked in :mod:`tformer.masks` (``torch.nn.MultiheadAttention``'s ``key_padding_mask`` means the
opposite).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import tformer._checks as _checks
from tformer.masks import causal_mask, check_mask
from tformer.nn.dropout import dropout


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.tensor(name, t, ndim_min=2, floating=True)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share the last (d_k) dimension to be dotted, got q {tuple(q.shape)} "
            f"and k {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must hold one row per key (same T_k), got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(
            "q, k and v must have the same batch dimensions (all but the last two), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q Kᵀ / √d_k) V, Eq. (1) of Vaswani et al. (2017), §3.2.1, written out step by step.

    Args:
        q: queries ``(..., T_q, d_k)``.
        k: keys ``(..., T_k, d_k)``.
        v: values ``(..., T_k, d_v)``.
        mask: bool, broadcastable to ``(..., T_q, T_k)``; True = may attend. A query whose row is
            entirely False attends to nothing and gets a zero output (never NaN).
        dropout_p: dropout on the attention weights (applied whenever > 0).

    Returns:
        ``(out, weights)``: ``out`` is ``(..., T_q, d_v)``, ``weights`` is ``(..., T_q, T_k)``.
    """
    _check_qkv(q, k, v)
    _checks.probability("dropout_p", dropout_p)
    check_mask(mask, (*q.shape[:-1], k.shape[-2]))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    if mask is not None:
        # The most negative finite number (not -inf) keeps a fully masked row finite: its softmax
        # is uniform, and the second masked_fill turns it into zeros, so no NaN forward or backward.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    if dropout_p > 0.0:
        weights = dropout(weights, dropout_p)
    return weights @ v, weights


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, but in float32 under CPU autocast: PyTorch's bfloat16
    flash-attention kernel on the CPU is several times slower than its float32 one in the backward
    pass (measured by ``python -m tformer bench --only precision``), which cost more than the
    bfloat16 matrix products of the linear layers gained. The products that dominate (Q, K, V, the
    output projection, the FFN) still run in bfloat16."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> torch.Tensor:
    """The same result as :func:`scaled_dot_product_attention` through PyTorch's fused kernel.

    Uses ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels
    where available) and returns only the output; the weights are never materialised.
    ``is_causal=True`` (with ``mask=None``) means ``mask=causal_mask(T)`` without building it,
    which lets the kernel skip the masked half; it needs T_q == T_k.
    """
    _check_qkv(q, k, v)
    _checks.probability("dropout_p", dropout_p)
    check_mask(mask, (*q.shape[:-1], k.shape[-2]))
    if is_causal:
        if mask is not None or q.shape[-2] != k.shape[-2]:
            raise ValueError(
                "is_causal=True needs mask=None and as many queries as keys, got "
                f"mask={'a tensor' if mask is not None else None}, T_q={q.shape[-2]}, T_k={k.shape[-2]}"
            )
        return _sdpa(q, k, v, dropout_p=dropout_p, is_causal=True)
    if mask is None:
        return _sdpa(q, k, v, dropout_p=dropout_p)
    row_has_key = mask.any(dim=-1, keepdim=True)  # (..., T_q, 1)
    # Let fully masked rows attend everywhere so the kernel never sees an all -inf row, then zero them.
    out = _sdpa(q, k, v, attn_mask=mask | ~row_has_key, dropout_p=dropout_p)
    return out.masked_fill(~row_has_key, 0.0)


def cache_start(caches: list | None, num_layers: int, start: int | None) -> int:
    """Position of the first new token when a decoder-only model runs with one :class:`KVCache` per
    layer: the number of cached positions, which ``start`` (when given) must equal."""
    if caches is not None and len(caches) != num_layers:
        raise ValueError(f"caches must hold one KVCache per block ({num_layers}), got {len(caches)}")
    cached = 0 if caches is None else len(caches[0])
    if start is not None and start != cached:
        raise ValueError(f"start={start} must equal the number of cached positions ({cached})")
    return cached


class KVCache:
    """Keys and values of earlier positions, kept by one attention layer during generation.

    Each decoding step projects only the new token and appends its key and value here, instead of
    recomputing every earlier position. ``static=True`` is for cross-attention: the encoder's keys
    and values are projected once and reused at every step.
    """

    def __init__(self, static: bool = False) -> None:
        self.static = static
        self.k: torch.Tensor | None = None  # (B, h, T, d_k)
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None or self.static:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=-2)
            self.v = torch.cat([self.v, v], dim=-2)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows in ``index`` (beam search reorders hypotheses every step)."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, …, head_h) W^O (Vaswani et al., 2017, §3.2.2).

    The h heads are not h modules: one ``d_model × d_model`` projection is reshaped into h slices of
    ``d_k = d_model / h`` columns, which is the same arithmetic and much faster.

    Args:
        d_model: model width; must be divisible by ``num_heads``.
        num_heads: number of heads h.
        dropout: dropout on the attention weights during training.
        bias: whether the four projections have biases.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        _checks.heads_divide(d_model, num_heads)
        self.d_model, self.num_heads, self.d_k = d_model, num_heads, d_model // num_heads
        self.dropout = _checks.probability("dropout", dropout)
        self.w_q = nn.Linear(d_model, d_model, bias=bias)
        self.w_k = nn.Linear(d_model, d_model, bias=bias)
        self.w_v = nn.Linear(d_model, d_model, bias=bias)
        self.w_o = nn.Linear(d_model, d_model, bias=bias)
        self.keep_weights = False  # True: use the math path and keep .attn_weights for plots
        self.attn_weights: torch.Tensor | None = None

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.d_k).transpose(1, 2)  # (B, h, T, d_k)

    def _check_inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        for name, t in (("query", query), ("key", key), ("value", value)):
            _checks.tensor(name, t, ndim_min=3, floating=True)
            if t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(
                    f"{name} must have shape (B, T, d_model={self.d_model}), got {tuple(t.shape)}"
                )
        weight = next(self.parameters())
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.device != weight.device:
                raise ValueError(f"{name} is on {t.device} but the attention's weights are on "
                                 f"{weight.device}; move one with .to(device)")
            # under autocast the products pick their own precision; otherwise dtypes must match
            if t.dtype != weight.dtype and not torch.is_autocast_enabled(t.device.type):
                raise TypeError(f"{name} has dtype {t.dtype} but the attention's weights are "
                                f"{weight.dtype}; convert the input with .to({weight.dtype}) or the "
                                f"module with .to({t.dtype}), or run under torch.autocast")
        if not query.shape[0] == key.shape[0] == value.shape[0]:
            raise ValueError(
                "query, key and value must have the same batch size, got "
                f"{query.shape[0]}, {key.shape[0]}, {value.shape[0]}"
            )
        if key.shape[1] != value.shape[1]:
            raise ValueError(
                f"key and value must have the same length, got {key.shape[1]} and {value.shape[1]}"
            )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Attend from ``query`` (B, T_q, d_model) to ``key``/``value`` (B, T_k, d_model).

        Args:
            mask: bool, broadcastable to ``(B, h, T_q, T_k)``, True = may attend. With a cache,
                T_k counts the cached positions too.
            cache: a :class:`KVCache`; the new keys/values are appended to it (or, for a static
                cache that is already filled, ``key``/``value`` are not projected again).
            is_causal: shorthand for ``mask=causal_mask(T)`` in self-attention without a cache;
                the fused kernel then skips the masked half instead of reading a mask.

        Returns:
            ``(B, T_q, d_model)``. The weights ``(B, h, T_q, T_k)`` are at ``.attn_weights`` when
            ``.keep_weights`` is True.
        """
        reuse = cache is not None and cache.static and cache.k is not None
        self._check_inputs(query, query if reuse else key, query if reuse else value)
        B, T_q, _ = query.shape
        q = self._split_heads(self.w_q(query))  # (B, h, T_q, d_k)
        if reuse:
            k, v = cache.k, cache.v
        else:
            k = self._split_heads(self.w_k(key))  # (B, h, T_k, d_k)
            v = self._split_heads(self.w_v(value))
            if cache is not None:
                k, v = cache.update(k, v)
        check_mask(mask, (B, self.num_heads, T_q, k.shape[-2]))
        if is_causal:
            if mask is not None or T_q != k.shape[-2]:
                raise ValueError(
                    "is_causal=True is for self-attention without a mask or a filled cache "
                    f"(T_q == T_k), got T_q={T_q}, T_k={k.shape[-2]}, mask given: {mask is not None}"
                )
            if self.keep_weights:
                mask = causal_mask(T_q, device=query.device)
        p = self.dropout if self.training else 0.0
        if self.keep_weights:
            out, weights = scaled_dot_product_attention(q, k, v, mask, p)
            self.attn_weights = weights.detach()
        else:
            out = fused_attention(q, k, v, mask, p, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(B, T_q, self.d_model)  # concat heads: (B, T_q, d_model)
        return self.w_o(out)
