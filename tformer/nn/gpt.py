"""A decoder-only Transformer language model (GPT): the model only, as in nanoGPT's ``model.py``.

GPT keeps only the decoder of Vaswani et al. (2017): masked self-attention (§3.2.3) and the
position-wise feed-forward network (§3.3), with no encoder and no cross-attention. The causal mask
is what makes it a language model: position t sees tokens 0..t and is trained to predict token
t + 1, so one forward pass gives T predictions at once (Radford et al., 2018; 2019).

The blocks are **pre-LN**, as in GPT-2: ``x + Attn(LN(x))`` then ``x + FFN(LN(x))``, and a final
LayerNorm before the output projection. (The paper, and tformer's encoder–decoder by default, use
post-LN: ``LN(x + Sublayer(x))``.) Names follow nanoGPT where it has one: ``n_layer`` is
``num_layers``, ``n_head`` is ``num_heads``, ``n_embd`` is ``d_model``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

import tformer._checks as _checks
from tformer.masks import causal_mask
from tformer.nn.attention import KVCache, MultiHeadAttention, cache_start
from tformer.nn.layers import FeedForward
from tformer.nn.positional import LearnedPositionalEmbedding, PositionalEncoding


@dataclass
class GPTConfig:
    """Shape of a :class:`GPT`. ``dim_feedforward=None`` means ``4 * d_model`` (§3.3, GPT-2)."""

    vocab_size: int
    block_size: int = 256  # the longest context, in tokens
    num_layers: int = 4
    num_heads: int = 4
    d_model: int = 128
    dim_feedforward: int | None = None
    dropout: float = 0.0
    bias: bool = True  # biases in the Linear layers and LayerNorms
    positions: str = "learned"  # "learned" (GPT) or "sinusoidal" (§3.5)
    tie_weights: bool = True  # the output projection shares the token embedding (§3.4)
    activation: str = "gelu"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "num_layers"):
            _checks.positive_int(name, getattr(self, name))
        _checks.heads_divide(self.d_model, self.num_heads)
        if self.dim_feedforward is None:
            self.dim_feedforward = 4 * self.d_model
        _checks.positive_int("dim_feedforward", self.dim_feedforward)
        _checks.probability("dropout", self.dropout)
        for name in ("bias", "tie_weights"):
            _checks.boolean(name, getattr(self, name))
        if self.positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions={self.positions!r} must be 'learned' or 'sinusoidal'")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation={self.activation!r} must be 'gelu' or 'relu'")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        return _checks.config_from_dict(cls, d, unknown_error=TypeError)


class Block(nn.Module):
    """One pre-LN decoder block without cross-attention: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.d_model
        self.ln_1 = nn.LayerNorm(d, bias=config.bias)
        self.attn = MultiHeadAttention(d, config.num_heads, config.dropout, config.bias)
        self.ln_2 = nn.LayerNorm(d, bias=config.bias)
        self.ffn = FeedForward(d, config.dim_feedforward, config.dropout, config.activation, config.bias)
        self.dropout = nn.Dropout(config.dropout)  # on each sub-layer's output (§5.4)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        h = self.ln_1(x)  # (B, T, d_model)
        if cache is None or len(cache) == 0:
            # No earlier positions: the fused kernel applies the causal mask without reading one.
            a = self.attn(h, h, h, cache=cache, is_causal=True)
        elif x.shape[1] == 1:
            a = self.attn(h, h, h, cache=cache)  # one new token may see every cached position
        else:
            mask = causal_mask(x.shape[1], offset=len(cache), device=x.device)  # (T, cached + T)
            a = self.attn(h, h, h, mask=mask, cache=cache)
        x = x + self.dropout(a)
        return x + self.dropout(self.ffn(self.ln_2(x)))


class GPT(nn.Module):
    """Token embedding + positions → N pre-LN blocks → LayerNorm → logits over the vocabulary."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        if c.positions == "learned":
            self.pos = LearnedPositionalEmbedding(c.block_size, c.d_model, c.dropout)
        else:
            self.pos = PositionalEncoding(c.d_model, c.block_size, c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.ln_f = nn.LayerNorm(c.d_model, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(self._init_weights)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight  # one (vocab, d_model) matrix, two uses
        # GPT-2 scales the init of the projections that write into the residual stream by
        # 1/sqrt(2N), so the variance of the sum of 2N residual branches stays O(1).
        for block in self.blocks:
            for proj in (block.attn.w_o, block.ffn.linear2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * c.num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_caches(self) -> list[KVCache]:
        """One empty :class:`~tformer.nn.attention.KVCache` per block, for :meth:`forward`."""
        return [KVCache() for _ in self.blocks]

    def _check_idx(self, idx: object, name: str = "idx") -> torch.Tensor:
        _checks.tensor(name, idx, floating=False)
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"{name} must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
        lo, hi = (int(v) for v in torch.aminmax(idx))
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name} holds token id {bad}, outside the vocabulary 0..{self.config.vocab_size - 1}"
            )
        return idx

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        start: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits for every position, and the cross-entropy loss if ``targets`` is given.

        Args:
            idx: token ids ``(B, T)``, ``torch.long``.
            targets: ``(B, T)`` ids of the next tokens (``idx`` shifted left by one).
            caches: from :meth:`new_caches`; keys/values of ``idx`` are appended, earlier ones reused.
            start: position of ``idx[:, 0]``; by default 0, or the cached length with ``caches``.

        Returns:
            ``(logits (B, T, vocab_size), loss or None)``.
        """
        self._check_idx(idx)
        B, T = idx.shape
        start = cache_start(caches, len(self.blocks), start)
        if start + T > self.config.block_size:
            raise ValueError(
                f"positions {start}..{start + T - 1} exceed block_size={self.config.block_size}; "
                f"crop idx to its last {self.config.block_size - start} tokens"
            )
        x = self.pos(self.tok_emb(idx), start=start)  # (B, T, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        _checks.tensor("targets", targets, floating=False)
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss
