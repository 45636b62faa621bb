"""A BERT-style encoder built from tformer's encoder layers (Devlin et al., 2019).

Its pieces are the encoder of Vaswani et al. (2017), §3.1, with three changes around
:class:`tformer.nn.layers.EncoderLayer`:

* **learned positions and token types**: the input is word + position + segment embedding, then a
  LayerNorm (BERT §3, Figure 2), instead of the fixed sinusoids of §3.5;
* **GELU** in the feed-forward network instead of ReLU;
* LayerNorm epsilon 1e-12 instead of PyTorch's 1e-5.

The layers are **post-LN**, as in the paper (``norm_first=False``), so no final LayerNorm follows
the stack. Masks follow tformer's convention (bool, True = may attend); Hugging Face's
``attention_mask`` (1 = real token, 0 = padding) becomes the key-padding mask ``(B, 1, 1, T)``.
:mod:`tformer.pretrained` loads real weights into it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import tformer._checks as _checks
from tformer.masks import padding_mask
from tformer.nn.dropout import Dropout
from tformer.nn.layers import ACTIVATIONS, EncoderLayer
from tformer.nn.positional import LearnedPositionalEmbedding


@dataclass
class BertConfig:
    """The numbers that fix a BERT-style encoder's shapes, named like ``torch.nn``.

    ``from_json`` reads a Hugging Face ``config.json`` (``hidden_size`` → ``d_model``,
    ``num_attention_heads`` → ``num_heads``, ``intermediate_size`` → ``dim_feedforward``, …).
    """

    vocab_size: int = 30522
    d_model: int = 384
    num_layers: int = 6
    num_heads: int = 12
    dim_feedforward: int = 1536
    max_len: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    activation: str = "gelu"
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_layers", "dim_feedforward", "max_len", "type_vocab_size"):
            _checks.positive_int(name, getattr(self, name))
        _checks.heads_divide(self.d_model, self.num_heads)
        eps = self.layer_norm_eps
        _checks.real_between("layer_norm_eps", eps, 0, 1, "a small positive float such as 1e-12")
        _checks.probability("dropout", self.dropout)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} must be one of {ACTIVATIONS}")
        if isinstance(self.pad_id, bool) or not isinstance(self.pad_id, int) or not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id!r} must be a token id in [0, vocab_size={self.vocab_size})")

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Read and check a Hugging Face BERT ``config.json``; errors name the file and the key."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}")
        checks = {  # key: (allowed values, why)
            "model_type": (("bert",), "only BERT-style encoders are supported"),
            "position_embedding_type": (("absolute",), "tformer implements learned absolute positions"),
            "hidden_act": (ACTIVATIONS, "tformer's FeedForward implements these activations"),
        }
        for key, (allowed, why) in checks.items():
            if key in raw and raw[key] not in allowed:
                raise ValueError(f"{path}: {key}={raw[key]!r} is not supported ({why}: {allowed})")
        if raw.get("is_decoder") or raw.get("add_cross_attention"):
            raise ValueError(f"{path}: is_decoder/add_cross_attention must be false for an encoder")
        fields = {  # tformer name: config.json key
            "vocab_size": "vocab_size", "d_model": "hidden_size", "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads", "dim_feedforward": "intermediate_size",
            "max_len": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
        }
        kwargs: dict = {}
        for name, key in fields.items():
            if key not in raw:
                raise ValueError(f"{path} has no {key!r} (needed for {name})")
            kwargs[name] = raw[key]
        optional = {"layer_norm_eps": "layer_norm_eps", "dropout": "hidden_dropout_prob",
                    "activation": "hidden_act", "pad_id": "pad_token_id"}
        kwargs.update({name: raw[key] for name, key in optional.items() if raw.get(key) is not None})
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as error:
            keys = {**fields, **optional}
            message = str(error)
            for name, key in keys.items():  # speak the file's language: d_model → hidden_size
                if message.startswith(f"{name}=") or message.startswith(f"{name} "):
                    message = f"{key} (tformer's {name}): {message}"
                    break
            raise type(error)(f"{path}: {message}") from None


class BertEmbeddings(nn.Module):
    """LayerNorm(word + token type + position), then dropout (Devlin et al., 2019, §3, Figure 2).

    The position table is :class:`tformer.nn.positional.LearnedPositionalEmbedding` (one trained vector
    per position, the alternative to sinusoids of Vaswani et al. §3.5). Token types ("segments")
    tell the two sentences of a pair apart: 0 for the first, 1 for the second.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.d_model)
        self.token_type = nn.Embedding(config.type_vocab_size, config.d_model)
        self.position = LearnedPositionalEmbedding(config.max_len, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids``, ``token_type_ids`` (B, T) → (B, T, d_model)."""
        x = self.word(input_ids) + self.token_type(token_type_ids)  # (B, T, d_model)
        return self.dropout(self.norm(self.position(x)))


class BertEncoder(nn.Module):
    """Embeddings, then N post-LN :class:`~tformer.nn.layers.EncoderLayer` s (Vaswani et al. §3.1).

    ``forward`` returns the last hidden state, one vector per token; no pooling, no head.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(
            EncoderLayer(config.d_model, config.num_heads, config.dim_feedforward, config.dropout,
                         activation=config.activation, norm_first=False,  # post-LN, like BERT
                         layer_norm_eps=config.layer_norm_eps)
            for _ in range(config.num_layers)
        )

    def _check_ids(self, name: str, ids: torch.Tensor, high: int, shape: tuple[int, ...] | None) -> None:
        _checks.tensor(name, ids, ndim_min=2, floating=False)
        if ids.dim() != 2 or (shape is not None and tuple(ids.shape) != shape):
            want = "(B, T)" if shape is None else f"{shape}, the shape of input_ids"
            raise ValueError(f"{name} must have shape {want}, got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= high):
            bad = ids[(ids < 0) | (ids >= high)][0].item()
            raise ValueError(f"{name} holds {bad}, outside [0, {high}); check the tokenizer matches the model")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids ``(B, T)`` → last hidden state ``(B, T, d_model)``.

        Args:
            input_ids: token ids in ``[0, vocab_size)``, with ``T <= max_len``.
            attention_mask: ``(B, T)``, 1/True at real tokens and 0/False at padding (the Hugging
                Face meaning, the same as tformer's True = may attend); default: no padding.
                Padded positions still get a vector; ignore it (see :func:`mean_pool`).
            token_type_ids: ``(B, T)`` segment ids in ``[0, type_vocab_size)``; default all 0.
        """
        c = self.config
        self._check_ids("input_ids", input_ids, c.vocab_size, None)
        B, T = input_ids.shape
        if T > c.max_len:
            raise ValueError(f"input_ids has T={T} tokens, more than max_len={c.max_len} positions; truncate it")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        self._check_ids("token_type_ids", token_type_ids, c.type_vocab_size, (B, T))
        mask = None
        if attention_mask is not None:
            mask = key_padding_mask(attention_mask, (B, T))  # (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, d_model)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def key_padding_mask(attention_mask: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Hugging Face's ``attention_mask`` (B, T) of 1/0 → tformer's bool mask (B, 1, 1, T).

    Both say "1/True = a real token that may be attended to"; only the shape changes, so the
    mask broadcasts over heads and queries. (``torch.nn.MultiheadAttention``'s
    ``key_padding_mask`` is the opposite: True = ignore.)
    """
    _checks.tensor("attention_mask", attention_mask, ndim_min=2)
    if attention_mask.dim() != 2 or (shape is not None and tuple(attention_mask.shape) != shape):
        raise ValueError(
            f"attention_mask must have shape (B, T){'' if shape is None else f' = {shape}, like input_ids'}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype != torch.bool and not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask must hold only 0/1 (or False/True): 1 = real token, 0 = padding")
    empty = (~attention_mask.bool().any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask rows {empty} have no real token (all 0); every row needs at least one")
    return padding_mask(attention_mask.long(), pad_id=0)  # 0 = padding
