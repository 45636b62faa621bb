"""Attention maps: where a trained model looks (Vaswani et al., 2017, §3.2.3 and Figures 3–5).

The fused kernel never materialises attention weights; a :class:`~tformer.nn.attention.MultiHeadAttention`
with ``keep_weights = True`` takes the math path and keeps them. These helpers switch that on for
one pass and give the weights back.
"""

from __future__ import annotations

import torch
from torch import nn

from tformer.runtime import eval_mode


@torch.no_grad()
def cross_attention(
    model: nn.Module,
    src: torch.Tensor,
    tgt_in: torch.Tensor,
    src_mask: torch.Tensor | None = None,
    layer: int = -1,
) -> torch.Tensor:
    """Cross-attention weights of one decoder layer (default: the last) with teacher forcing.

    Run the decoder on ``tgt_in`` (<bos> y1 … y_n) and return how much each target position
    attends to each source token, ``(B, h, T, S)``; the row of step t is where the decoder "looks"
    while producing y_{t+1}. These maps show the reordering a translation needs.
    """
    attn = model.decoder.layers[layer].cross_attn
    kept = attn.keep_weights
    attn.keep_weights = True
    try:
        with eval_mode(model):
            model(src, tgt_in, src_mask)
        return attn.attn_weights
    finally:
        attn.keep_weights = kept

