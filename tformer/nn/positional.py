"""Position information for a model that has none of its own (Vaswani et al., 2017, §3.5).

Attention is permutation-equivariant: shuffle the tokens and the outputs shuffle the same way.
Word order therefore has to be added to the inputs. This module holds the paper's fixed sinusoids,
the learned table it compared them with, and rotary embeddings (RoPE, Su et al. 2021), the
alternative most large models use today.
"""

from __future__ import annotations

import torch
from torch import nn

import tformer._checks as _checks
from tformer.nn.dropout import Dropout


def sinusoidal_encoding(max_len: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / base^(2i/d_model)), PE(pos, 2i+1) = cos(…), §3.5.

    Returns:
        ``(max_len, d_model)`` float32 table; row ``pos`` is added to the embedding at ``pos``.
    """
    _checks.positive_int("max_len", max_len)
    _checks.positive_int("d_model", d_model)
    if base <= 1:
        raise ValueError(f"base={base} must be > 1 (the paper uses 10000)")
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    i2 = torch.arange(0, d_model, 2, dtype=torch.float64)  # the even dimensions 2i
    angle = pos / base ** (i2 / d_model)  # (max_len, ceil(d_model/2))
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.float()


def _check_sequence(x: torch.Tensor, d_model: int, max_len: int, start: int) -> int:
    _checks.tensor("x", x, ndim_min=3, floating=True)
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x must have shape (B, T, d_model={d_model}), got {tuple(x.shape)}")
    _checks.int_at_least("start", start, 0, "a non-negative int")
    end = start + x.shape[1]
    if end > max_len:
        raise ValueError(
            f"positions {start}..{end - 1} exceed max_len={max_len} of the positional table; "
            f"build it with max_len >= {end} or use shorter inputs"
        )
    return end


class PositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table to token embeddings, then dropout (§3.5 and §5.4).

    The table is a non-persistent buffer: it follows ``.to(device)`` but is not saved in
    checkpoints, since it is a function of the shape alone.
    """

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.register_buffer("pe", sinusoidal_encoding(max_len, d_model), persistent=False)
        self.dropout = Dropout(_checks.probability("dropout", dropout))

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``x`` (B, T, d_model) → x + PE[start:start+T]; ``start`` > 0 when decoding with a cache."""
        end = _check_sequence(x, self.d_model, self.max_len, start)
        return self.dropout(x + self.pe[start:end].to(x.dtype))


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per position (the alternative of §3.5, Table 3 row (E); BERT and GPT)."""

    def __init__(self, max_len: int, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_model = _checks.positive_int("d_model", d_model)
        self.max_len = _checks.positive_int("max_len", max_len)
        self.embedding = nn.Embedding(max_len, d_model)
        self.dropout = Dropout(_checks.probability("dropout", dropout))

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``x`` (B, T, d_model) → x + E[start:start+T]."""
        end = _check_sequence(x, self.d_model, self.max_len, start)
        positions = torch.arange(start, end, device=x.device)
        return self.dropout(x + self.embedding(positions))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE; Su et al., 2021), applied to queries and keys per head.

    Each pair of dimensions (2i, 2i+1) is rotated by the angle pos·θ_i with θ_i = base^(-2i/d),
    so the dot product of a rotated query and key depends only on their relative distance.
    """

    def __init__(self, head_dim: int, max_len: int = 4096, base: float = 10000.0) -> None:
        super().__init__()
        _checks.positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim} must be even (RoPE rotates pairs of dimensions)")
        self.head_dim, self.max_len = head_dim, _checks.positive_int("max_len", max_len)
        theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angle = torch.arange(max_len, dtype=torch.float64)[:, None] * theta  # (max_len, head_dim/2)
        self.register_buffer("cos", angle.cos().float(), persistent=False)
        self.register_buffer("sin", angle.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate ``x`` of shape (..., T, head_dim); position of row t is ``start + t``."""
        _checks.tensor("x", x, ndim_min=2, floating=True)
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"x must end in head_dim={self.head_dim}, got shape {tuple(x.shape)}")
        T = x.shape[-2]
        if start < 0 or start + T > self.max_len:
            raise ValueError(
                f"positions {start}..{start + T - 1} exceed max_len={self.max_len} of the rotary table"
            )
        cos = self.cos[start : start + T].to(x.dtype)  # (T, head_dim/2)
        sin = self.sin[start : start + T].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)
