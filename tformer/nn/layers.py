"""The two kinds of layer the Transformer stacks: encoder layers and decoder layers (§3.1).

Each layer is a few sub-layers (attention, then a position-wise feed-forward network), and each
sub-layer is wrapped in a residual connection and a layer normalisation. Where the normalisation
goes is the one choice that matters here:

* **post-LN** (the paper, and tformer's default, ``norm_first=False``):
  ``x = LayerNorm(x + Dropout(Sublayer(x)))`` — §3.1 and §5.4 of Vaswani et al. (2017).
* **pre-LN** (``norm_first=True``, what most later models use):
  ``x = x + Dropout(Sublayer(LayerNorm(x)))`` — the stack then needs one final LayerNorm, which
  :class:`tformer.nn.transformer.Encoder` / :class:`tformer.nn.transformer.Decoder` add.

Both layers compute exactly what ``torch.nn.TransformerEncoderLayer`` /
``torch.nn.TransformerDecoderLayer`` compute with ``batch_first=True`` and the same ``norm_first``
(the tests copy weights between them). Masks follow tformer's convention: bool, **True = may
attend**; ``torch.nn``'s ``src_key_padding_mask`` etc. mean the opposite (True = ignore).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import tformer._checks as _checks
from tformer.nn.attention import KVCache, MultiHeadAttention
from tformer.nn.dropout import Dropout

ACTIVATIONS = ("relu", "gelu")


def _check_activation(activation: object) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} must be one of {ACTIVATIONS}")
    return activation  # type: ignore[return-value]


def _check_layer_args(d_model: int, num_heads: int, dim_feedforward: int, layer_norm_eps: float) -> None:
    _checks.heads_divide(d_model, num_heads)  # checked before any sub-layer is built
    _checks.positive_int("dim_feedforward", dim_feedforward)
    _checks.positive_float("layer_norm_eps", layer_norm_eps, "1e-5")


def _check_x(name: str, x: torch.Tensor, d_model: int) -> None:
    _checks.tensor(name, x, ndim_min=3, floating=True)
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{name} must have shape (B, T, d_model={d_model}), got {tuple(x.shape)}")


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, Eq. (2) of Vaswani et al. (2017), §3.3.

    The same two linear maps are applied at every position separately ("position-wise"); the
    inner width ``dim_feedforward`` is d_ff = 2048 in the base model, four times d_model.

    Args:
        d_model: input and output width.
        dim_feedforward: inner width d_ff.
        dropout: dropout on the inner activations (as ``torch.nn.TransformerEncoderLayer`` does).
        activation: ``"relu"`` (the paper) or ``"gelu"`` (exact, erf-based GELU; BERT, GPT).
        bias: whether the two linear maps have biases.
    """

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int,
        dropout: float = 0.0,
        activation: str = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        _checks.positive_int("d_model", d_model)
        _checks.positive_int("dim_feedforward", dim_feedforward)
        self.activation = _check_activation(activation)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)  # W_1, b_1
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)  # W_2, b_2
        self.dropout = Dropout(_checks.probability("dropout", dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., d_model) → (..., d_model)."""
        h = self.linear1(x)  # (..., d_ff)
        h = F.relu(h) if self.activation == "relu" else F.gelu(h)
        return self.linear2(self.dropout(h))


class EncoderLayer(nn.Module):
    """One encoder layer: self-attention, then the feed-forward network (§3.1, Figure 1 left).

    Post-LN by default, as in the paper: ``x = LayerNorm(x + Dropout(Sublayer(x)))``.
    With ``norm_first=True`` it is pre-LN: ``x = x + Dropout(Sublayer(LayerNorm(x)))``.

    Args:
        d_model: model width (512 in the base model).
        num_heads: attention heads h (8).
        dim_feedforward: inner width of the FFN, d_ff (2048).
        dropout: P_drop, applied to each sub-layer's output before the residual sum (§5.4), and,
            unless the next two say otherwise, to the attention weights and to the FFN's inner
            activations (as ``torch.nn.TransformerEncoderLayer`` does).
        attention_dropout: dropout on the attention weights (None: ``dropout``; the paper's
            §5.4 has none there, i.e. 0.0).
        activation_dropout: dropout on the FFN's inner activations (None: ``dropout``; the
            paper: 0.0).
        activation: ``"relu"`` (paper) or ``"gelu"``.
        norm_first: False = post-LN (paper), True = pre-LN.
        layer_norm_eps: the LayerNorms' epsilon.
        bias: biases in the linear maps and the LayerNorms.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        attention_dropout: float | None = None,
        activation_dropout: float | None = None,
    ) -> None:
        super().__init__()
        _check_layer_args(d_model, num_heads, dim_feedforward, layer_norm_eps)
        self.d_model, self.norm_first = d_model, bool(norm_first)
        attn_p = dropout if attention_dropout is None else attention_dropout
        act_p = dropout if activation_dropout is None else activation_dropout
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=attn_p, bias=bias)
        self.ffn = FeedForward(d_model, dim_feedforward, act_p, activation, bias)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def _sa(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        return self.dropout1(self.self_attn(x, x, x, mask=mask, is_causal=is_causal))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """``x`` (B, T, d_model) → (B, T, d_model).

        Args:
            mask: bool, True = may attend, broadcastable to (B, h, T, T): ``(B, 1, 1, T)`` to
                ignore padded keys, ``(T, T)`` for a causal mask.
            is_causal: causal self-attention without building a mask (needs ``mask=None``).
        """
        _check_x("x", x, self.d_model)
        if self.norm_first:  # pre-LN
            x = x + self._sa(self.norm1(x), mask, is_causal)
            x = x + self.dropout2(self.ffn(self.norm2(x)))
        else:  # post-LN, §3.1: LayerNorm(x + Sublayer(x))
            x = self.norm1(x + self._sa(x, mask, is_causal))
            x = self.norm2(x + self.dropout2(self.ffn(x)))
        return x


class DecoderLayer(nn.Module):
    """One decoder layer: masked self-attention, cross-attention, FFN (§3.1, Figure 1 right).

    In cross-attention ("encoder-decoder attention", §3.2.3) the queries come from the decoder
    and the keys and values from the encoder output ``memory``: the decoder asks, the encoder
    answers. Arguments and norm placement are those of :class:`EncoderLayer`.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        attention_dropout: float | None = None,
        activation_dropout: float | None = None,
    ) -> None:
        super().__init__()
        _check_layer_args(d_model, num_heads, dim_feedforward, layer_norm_eps)
        self.d_model, self.norm_first = d_model, bool(norm_first)
        attn_p = dropout if attention_dropout is None else attention_dropout
        act_p = dropout if activation_dropout is None else activation_dropout
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=attn_p, bias=bias)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout=attn_p, bias=bias)
        self.ffn = FeedForward(d_model, dim_feedforward, act_p, activation, bias)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)

    def _sa(self, x, mask, cache, is_causal):  # masked self-attention block
        return self.dropout1(self.self_attn(x, x, x, mask=mask, cache=cache, is_causal=is_causal))

    def _ca(self, x, memory, mask, cache):  # cross-attention block: Q from x, K and V from memory
        return self.dropout2(self.cross_attn(x, memory, memory, mask=mask, cache=cache))

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        self_cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
        tgt_is_causal: bool = False,
    ) -> torch.Tensor:
        """``x`` (B, T, d_model) attends to itself and to ``memory`` (B, S, d_model).

        Args:
            tgt_mask: bool, True = may attend, broadcastable to (B, h, T, T_k) where T_k counts
                the cached positions too; normally causal (``(T, T)``) and/or target padding.
            memory_mask: bool, broadcastable to (B, h, T, S); normally the source padding mask
                ``(B, 1, 1, S)``.
            self_cache: a :class:`~tformer.nn.attention.KVCache` for incremental decoding; the new
                positions' keys and values are appended to it.
            cross_cache: a ``KVCache(static=True)``; the encoder's keys and values are projected
                on the first call and reused afterwards.
            tgt_is_causal: causal self-attention without a mask tensor (needs ``tgt_mask=None``
                and no filled cache).

        Returns:
            ``(B, T, d_model)``.
        """
        _check_x("x", x, self.d_model)
        _check_x("memory", memory, self.d_model)
        if memory.shape[0] != x.shape[0]:
            raise ValueError(
                f"memory must have the batch size of x ({x.shape[0]}), got {tuple(memory.shape)}"
            )
        if self.norm_first:  # pre-LN
            x = x + self._sa(self.norm1(x), tgt_mask, self_cache, tgt_is_causal)
            x = x + self._ca(self.norm2(x), memory, memory_mask, cross_cache)
            x = x + self.dropout3(self.ffn(self.norm3(x)))
        else:  # post-LN, as in the paper
            x = self.norm1(x + self._sa(x, tgt_mask, self_cache, tgt_is_causal))
            x = self.norm2(x + self._ca(x, memory, memory_mask, cross_cache))
            x = self.norm3(x + self.dropout3(self.ffn(x)))
        return x
