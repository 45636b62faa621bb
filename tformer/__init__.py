"""tformer: the Transformer of Vaswani et al. (2017), built chapter by chapter in the course.

The most used names are available at the top level; everything else lives in the module of the
idea it belongs to (``tformer.nn.attention``, ``tformer.nn.layers``, ``tformer.training.loop``, …).
"""

from __future__ import annotations

from tformer.masks import causal_mask, padding_mask
from tformer.nn.attention import MultiHeadAttention, scaled_dot_product_attention
from tformer.nn.positional import PositionalEncoding, sinusoidal_encoding
from tformer.nn.transformer import Transformer, TransformerConfig, count_parameters

__version__ = "0.1.0"

__all__ = [
    "MultiHeadAttention",
    "PositionalEncoding",
    "Transformer",
    "TransformerConfig",
    "causal_mask",
    "count_parameters",
    "padding_mask",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
]
