"""tformer: the Transformer of Vaswani et al. (2017), built chapter by chapter in the course.

The most used names are available at the top level; everything else lives in the module of the
idea it belongs to (``tformer.attention``, ``tformer.layers``, ``tformer.train``, …).
"""

from __future__ import annotations

from tformer.attention import (
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)
from tformer.model import Transformer, TransformerConfig, count_parameters
from tformer.positional import PositionalEncoding, sinusoidal_encoding

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
