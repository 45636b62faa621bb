"""The full encoder–decoder Transformer (Vaswani et al., 2017, §3, Figure 1).

``Transformer(config)`` = token embeddings scaled by √d_model (§3.4) + sinusoidal positions (§3.5)
+ dropout, an :class:`Encoder` (N encoder layers), a :class:`Decoder` (N decoder layers) and a
linear ``generator`` that maps each decoder output to logits over the target vocabulary (the
softmax is left to the loss). Post-LN by default, as in the paper; ``norm_first=True`` gives
pre-LN, and then each stack ends with one extra LayerNorm (as ``torch.nn.Transformer`` does).

Masks: bool, **True = may attend** (``torch.nn``'s padding masks mean the opposite).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import tformer._checks as _checks
from tformer.masks import causal_mask, check_mask, padding_mask
from tformer.nn.attention import KVCache, MultiHeadAttention
from tformer.nn.layers import ACTIVATIONS, DecoderLayer, EncoderLayer
from tformer.nn.positional import PositionalEncoding


@dataclass
class TransformerConfig:
    """Every size and switch of a :class:`Transformer`; checked when it is built.

    The defaults are the paper's base model (Table 3) apart from the vocabulary sizes, which the
    data decide. ``share_embeddings`` makes source and target use one embedding table (a shared
    vocabulary, as the paper's BPE vocabulary was); ``tie_output`` makes the pre-softmax linear
    map reuse the target embedding matrix (§3.4).
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    attention_dropout: float | None = None  # None: `dropout` (the paper: 0.0)
    activation_dropout: float | None = None  # inside the FFN; None: `dropout` (the paper: 0.0)
    max_len: int = 512
    norm_first: bool = False
    activation: str = "relu"
    layer_norm_eps: float = 1e-5
    share_embeddings: bool = False
    tie_output: bool = True
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "num_encoder_layers", "num_decoder_layers",
                     "dim_feedforward", "max_len"):
            _checks.positive_int(name, getattr(self, name))
        _checks.heads_divide(self.d_model, self.num_heads)
        _checks.probability("dropout", self.dropout)
        for name in ("attention_dropout", "activation_dropout"):
            if getattr(self, name) is not None:
                _checks.probability(name, getattr(self, name))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} must be one of {ACTIVATIONS}")
        _checks.positive_float("layer_norm_eps", self.layer_norm_eps, "1e-5")
        for name in ("norm_first", "share_embeddings", "tie_output"):
            _checks.boolean(name, getattr(self, name))
        _checks.integer("pad_id", self.pad_id)
        smallest = min(self.src_vocab_size, self.tgt_vocab_size)
        if not 0 <= self.pad_id < smallest:
            raise ValueError(
                f"pad_id={self.pad_id} must be a token id of both vocabularies, i.e. in [0, {smallest})"
            )
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                "share_embeddings=True needs one shared vocabulary, but src_vocab_size="
                f"{self.src_vocab_size} != tgt_vocab_size={self.tgt_vocab_size}"
            )

    @classmethod
    def base(cls, src_vocab_size: int = 37000, tgt_vocab_size: int | None = None,
             **overrides: Any) -> TransformerConfig:
        """The paper's base model (Table 3): N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1.

        With one vocabulary (``tgt_vocab_size`` omitted or equal) the two embeddings and the
        output projection share one matrix, as in the paper (§3.4); ~37000 BPE tokens for En–De.
        """
        return cls._preset(src_vocab_size, tgt_vocab_size, dict(
            d_model=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6,
            dim_feedforward=2048, dropout=0.1), overrides)

    @classmethod
    def big(cls, src_vocab_size: int = 37000, tgt_vocab_size: int | None = None,
            **overrides: Any) -> TransformerConfig:
        """The paper's big model (Table 3): N=6, d_model=1024, d_ff=4096, h=16, P_drop=0.3."""
        return cls._preset(src_vocab_size, tgt_vocab_size, dict(
            d_model=1024, num_heads=16, num_encoder_layers=6, num_decoder_layers=6,
            dim_feedforward=4096, dropout=0.3), overrides)

    @classmethod
    def _preset(cls, src_vocab_size: int, tgt_vocab_size: int | None, sizes: dict[str, Any],
                overrides: dict[str, Any]) -> TransformerConfig:
        tgt = src_vocab_size if tgt_vocab_size is None else tgt_vocab_size
        sizes.update(share_embeddings=tgt == src_vocab_size, tie_output=True)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown TransformerConfig fields: {sorted(unknown)}")
        sizes.update(overrides)
        return cls(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt, **sizes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing ones take defaults."""
        return _checks.config_from_dict(cls, d)


class Encoder(nn.Module):
    """N encoder layers (§3.1); a final LayerNorm only when pre-LN (``norm_first=True``).

    ``forward`` takes *embedded* inputs (B, S, d_model) — embeddings and positions are the
    :class:`Transformer`'s job — like ``torch.nn.TransformerEncoder``.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.layers = nn.ModuleList(
            EncoderLayer(c.d_model, c.num_heads, c.dim_feedforward, c.dropout, c.activation,
                         c.norm_first, c.layer_norm_eps, attention_dropout=c.attention_dropout,
                         activation_dropout=c.activation_dropout)
            for _ in range(c.num_encoder_layers)
        )
        self.norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, S, d_model), ``mask`` bool (True = may attend) → memory (B, S, d_model)."""
        for layer in self.layers:
            x = layer(x, mask)
        return x if self.norm is None else self.norm(x)


class Decoder(nn.Module):
    """N decoder layers (§3.1); a final LayerNorm only when pre-LN (``norm_first=True``).

    ``forward`` takes *embedded* targets (B, T, d_model) and the encoder output ``memory``.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.layers = nn.ModuleList(
            DecoderLayer(c.d_model, c.num_heads, c.dim_feedforward, c.dropout, c.activation,
                         c.norm_first, c.layer_norm_eps, attention_dropout=c.attention_dropout,
                         activation_dropout=c.activation_dropout)
            for _ in range(c.num_decoder_layers)
        )
        self.norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else None

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        caches: list[tuple[KVCache, KVCache]] | None = None,
    ) -> torch.Tensor:
        """``x`` (B, T, d_model) → (B, T, d_model); ``caches`` holds one (self, cross) pair per layer."""
        for i, layer in enumerate(self.layers):
            self_cache, cross_cache = caches[i] if caches is not None else (None, None)
            x = layer(x, memory, tgt_mask, memory_mask, self_cache, cross_cache)
        return x if self.norm is None else self.norm(x)


class Transformer(nn.Module):
    """The encoder–decoder Transformer of Vaswani et al. (2017), Figure 1.

    Default masks (built from the token ids when you pass None):

    * ``src_mask`` = ``src != pad_id`` as ``(B, 1, 1, S)``: no query looks at a padded source token.
    * ``tgt_mask`` = causal AND ``tgt != pad_id`` as ``(B, 1, T, T)``: position t sees the
      non-padded target positions 0..t only.

    Initialisation (the paper does not give one): Xavier-uniform for every linear weight, zero
    biases, and N(0, d_model^-0.5) for the embeddings, so that embeddings × √d_model have unit
    scale and tied output logits start near unit scale too.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        c = self.config = config
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embed = self.src_embed if c.share_embeddings else nn.Embedding(c.tgt_vocab_size, c.d_model)
        self.pos = PositionalEncoding(c.d_model, c.max_len, c.dropout)  # dropout on embedding + PE
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.generator = nn.Linear(c.d_model, c.tgt_vocab_size)
        self._reset_parameters()
        if c.tie_output:
            self.generator.weight = self.tgt_embed.weight  # §3.4: one matrix for both

    def _reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.config.d_model**-0.5)

    # ---- input checks -------------------------------------------------------------------
    def _check_ids(self, name: str, ids: torch.Tensor, vocab_size: int, start: int = 0) -> None:
        _checks.tensor(name, ids, ndim_min=1, floating=False)
        if ids.dim() != 2:
            raise ValueError(f"{name} must be token ids of shape (B, T), got shape {tuple(ids.shape)}")
        if ids.shape[1] == 0:
            raise ValueError(f"{name} must hold at least one token per row, got shape {tuple(ids.shape)}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size})")
        if start + ids.shape[1] > self.config.max_len:
            raise ValueError(
                f"{name} reaches position {start + ids.shape[1] - 1}, beyond max_len={self.config.max_len} "
                "of the positional table; use shorter sequences or a config with a larger max_len"
            )

    # ---- masks --------------------------------------------------------------------------
    def make_src_mask(self, src: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 1, S)`` bool, True at real (non-pad) source tokens."""
        return padding_mask(src, pad_id=self.config.pad_id)

    def make_tgt_mask(self, tgt: torch.Tensor) -> torch.Tensor:
        """``(B, 1, T, T)`` bool: causal (t sees 0..t) AND not padding."""
        return padding_mask(tgt, pad_id=self.config.pad_id) & causal_mask(tgt.shape[1], device=tgt.device)

    # ---- the three entry points -----------------------------------------------------------
    def embed(self, ids: torch.Tensor, table: nn.Embedding, start: int = 0) -> torch.Tensor:
        """Embedding × √d_model (§3.4) + positions (§3.5), then dropout → (B, T, d_model)."""
        return self.pos(table(ids) * math.sqrt(self.config.d_model), start=start)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids ``(B, S)`` → memory ``(B, S, d_model)``; ``src_mask`` defaults to non-pad keys."""
        self._check_ids("src", src, self.config.src_vocab_size)
        B, S = src.shape
        if src_mask is None:
            src_mask = self.make_src_mask(src)
        check_mask(src_mask, (B, self.config.num_heads, S, S), "src_mask")
        return self.encoder(self.embed(src, self.src_embed), src_mask)

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        caches: list[tuple[KVCache, KVCache]] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """Target ids ``(B, T)`` and ``memory`` ``(B, S, d_model)`` → logits ``(B, T, tgt_vocab)``.

        Args:
            src_mask: mask over memory positions, normally ``make_src_mask(src)``; the decoder
                never sees ``src``, so None means *no* source position is masked.
            tgt_mask: None → causal AND target padding (no cache), or, with caches, "the new
                tokens see every cached position and the new ones up to their own" (padding is
                not tracked across steps).
            caches: from :meth:`new_caches`, for step-by-step decoding; then ``tgt`` holds only
                the new tokens, and ``start`` is the position of ``tgt[:, 0]`` (= tokens cached).
        """
        c = self.config
        self._check_ids("tgt", tgt, c.tgt_vocab_size, start)
        _checks.tensor("memory", memory, ndim_min=3, floating=True)
        B, T = tgt.shape
        if memory.dim() != 3 or memory.shape[0] != B or memory.shape[2] != c.d_model:
            raise ValueError(
                f"memory must have shape (B={B}, S, d_model={c.d_model}) from encode(), got {tuple(memory.shape)}"
            )
        if caches is not None:
            if not isinstance(caches, list) or len(caches) != len(self.decoder.layers):
                raise ValueError(
                    f"caches must be a list of {len(self.decoder.layers)} (self, cross) KVCache pairs "
                    "from new_caches()"
                )
            cached = len(caches[0][0])
            if start != cached:
                raise ValueError(f"start={start} must equal the number of cached positions ({cached})")
        if tgt_mask is None:
            if caches is None:
                tgt_mask = self.make_tgt_mask(tgt)
            elif T > 1:  # new query t (at position start+t) sees keys 0..start+t
                tgt_mask = causal_mask(T, offset=start, device=tgt.device)
        check_mask(tgt_mask, (B, c.num_heads, T, start + T), "tgt_mask")
        check_mask(src_mask, (B, c.num_heads, T, memory.shape[1]), "src_mask")
        x = self.decoder(self.embed(tgt, self.tgt_embed, start), memory, tgt_mask, src_mask, caches)
        return self.generator(x)  # (B, T, tgt_vocab)

    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``src`` (B, S) and ``tgt`` (B, T) token ids → logits ``(B, T, tgt_vocab)``.

        Teacher forcing: ``tgt`` is the target shifted right (starting with BOS); the logits at t
        predict token t+1. Masks default as described in the class docstring.
        """
        self._check_ids("src", src, self.config.src_vocab_size)
        if src_mask is None:
            src_mask = self.make_src_mask(src)
        if isinstance(tgt, torch.Tensor) and tgt.dim() >= 1 and tgt.shape[0] != src.shape[0]:
            raise ValueError(f"src and tgt must have the same batch size, got {src.shape[0]} and {tgt.shape[0]}")
        memory = self.encode(src, src_mask)
        return self.decode(tgt, memory, src_mask, tgt_mask)

    # ---- helpers ------------------------------------------------------------------------
    def new_caches(self) -> list[tuple[KVCache, KVCache]]:
        """One (self-attention, cross-attention) cache pair per decoder layer, all empty."""
        return [(KVCache(), KVCache(static=True)) for _ in self.decoder.layers]

    def keep_attention_weights(self, flag: bool = True) -> None:
        """Make every attention module keep its last weights at ``.attn_weights`` (math path)."""
        for module in self.modules():
            if isinstance(module, MultiHeadAttention):
                module.keep_weights = bool(flag)

    def attention_weights(self) -> dict[str, torch.Tensor]:
        """The kept weights ``(B, h, T_q, T_k)`` by module name, e.g. ``decoder.layers.0.cross_attn``."""
        return {
            name: m.attn_weights
            for name, m in self.named_modules()
            if isinstance(m, MultiHeadAttention) and m.attn_weights is not None
        }


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters; a tensor shared by several modules (tied weights) counts once."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # .parameters() already yields a shared Parameter only once
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

