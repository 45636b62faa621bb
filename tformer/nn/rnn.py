"""Recurrent encoder–decoders: the translators the Transformer replaced (chapter 9b).

Both models read the source with one bidirectional GRU (Cho et al., 2014) and write the target
with one GRU, one token per step; they differ in what the decoder may look at:

* ``attention="none"``: one summary vector c of the whole source, the same at every step
  (the encoder–decoder of Cho et al., 2014, §2.2; Sutskever et al., 2014 keep only the final state).
* ``attention="additive"``: at every step a fresh context c_i, the encoder states h_j averaged with
  weights α_ij = softmax_j(vᵀ tanh(W s_{i-1} + U h_j)) (Bahdanau et al., 2015, §3.1 and
  Appendix A.1.2) — the idea the Transformer keeps, while it drops the recurrence.

:class:`RNNSeq2Seq` has the interface of :class:`tformer.nn.transformer.Transformer` (``config``,
``forward``, ``make_src_mask``, ``encode``, ``decode``, ``new_caches``), so the training loop,
greedy and beam decoding and the ``Translator`` serve it unchanged. Source padding never leaks:
the encoder runs on packed sequences, the summary is read at each row's last real token, and the
attention gives padded positions weight zero. The decoder only looks back, so ``tgt_mask`` is
accepted and not needed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import tformer._checks as _checks
from tformer.masks import check_mask, padding_mask
from tformer.nn.attention import KVCache
from tformer.nn.dropout import Dropout

ATTENTIONS = ("none", "additive")


@dataclass
class RNNConfig:
    """Every size and switch of an :class:`RNNSeq2Seq`; checked once, when it is built."""

    src_vocab_size: int
    tgt_vocab_size: int
    attention: str = "additive"  # "none" (one summary vector) or "additive" (Bahdanau et al., 2015)
    embed_dim: int = 128  # token embedding width, both sides
    hidden_size: int = 256  # GRU state size; the bidirectional encoder's states are twice this
    dropout: float = 0.1  # on embeddings and on the output layer's input
    max_len: int = 128  # longest sequence batching and decoding allow (the recurrence has no limit)
    tie_output: bool = True  # the output projection reuses the target embedding matrix
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "embed_dim", "hidden_size", "max_len"):
            _checks.positive_int(name, getattr(self, name))
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention={self.attention!r} must be one of {ATTENTIONS}")
        _checks.probability("dropout", self.dropout)
        _checks.boolean("tie_output", self.tie_output)
        _checks.integer("pad_id", self.pad_id)
        smallest = min(self.src_vocab_size, self.tgt_vocab_size)
        if not 0 <= self.pad_id < smallest:
            raise ValueError(
                f"pad_id={self.pad_id} must be a token id of both vocabularies, i.e. in [0, {smallest})"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RNNConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing ones take defaults."""
        return _checks.config_from_dict(cls, d)


class RecurrentState(KVCache):
    """The decoder's state s_t between decoding steps: what a recurrent decoder carries forward
    where a Transformer decoder keeps every earlier key and value.

    It subclasses :class:`~tformer.nn.attention.KVCache` only so that
    :func:`tformer.inference.generation.reorder_caches`, which reorders every growing (non-static)
    ``KVCache`` when beam search reorders its hypotheses, reorders this state too.
    """

    def __init__(self) -> None:
        super().__init__(static=False)
        self.h: torch.Tensor | None = None  # (B, H)
        self.steps = 0  # target tokens consumed so far

    def __len__(self) -> int:
        return self.steps

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows in ``index``."""
        if self.h is not None:
            self.h = self.h.index_select(0, index)


def source_lengths(mask: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` bool mask, True at real tokens, all before any padding → lengths ``(B,)``."""
    lengths = mask.sum(dim=-1)  # (B,)
    prefix = torch.arange(mask.shape[-1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask):
        raise ValueError(
            "src_mask must mark a prefix of each row (real tokens first, padding at the end): a GRU "
            "reads the tokens in order and cannot skip padding in the middle"
        )
    if (lengths == 0).any():
        row = int((lengths == 0).nonzero()[0])
        raise ValueError(f"source row {row} has no real token (all padding); there is nothing to encode")
    return lengths


def final_states(memory: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The two last states of a bidirectional encoder, ``[→h_len ; ←h_1]`` → ``(B, 2H)``.

    The forward GRU ends at each row's last real token, the backward GRU at position 0.
    """
    H = memory.shape[-1] // 2
    rows = torch.arange(memory.shape[0], device=memory.device)
    forward_last = memory[rows, lengths - 1, :H]  # (B, H)
    backward_last = memory[:, 0, H:]  # (B, H)
    return torch.cat([forward_last, backward_last], dim=-1)


class GRUEncoder(nn.Module):
    """Embedding + one bidirectional GRU over packed sequences, so padding is never read."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.dropout = Dropout(dropout)
        self.rnn = nn.GRU(embed_dim, hidden_size, batch_first=True, bidirectional=True)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``src`` (B, S) ids, ``lengths`` (B,) → memory (B, S, 2H), zeros at padded positions."""
        x = self.dropout(self.embed(src))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        return memory  # (B, S, 2H): [→h_j ; ←h_j] at every position j


class AdditiveAttention(nn.Module):
    """e_ij = vᵀ tanh(W s_{i-1} + U h_j), α_ij = softmax_j(e_ij), c_i = Σ_j α_ij h_j
    (Bahdanau et al., 2015, Eq. 5–6 and Appendix A.1.2).

    ``U h_j`` does not depend on the decoder step, so :meth:`project_keys` computes it once per
    sentence; each step then costs one small product ``W s_{i-1}`` and a sum over the source.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.w_query = nn.Linear(query_dim, attn_dim, bias=False)  # W
        self.w_key = nn.Linear(key_dim, attn_dim)  # U (its bias is the alignment model's bias)
        self.v = nn.Linear(attn_dim, 1, bias=False)  # v

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        """``memory`` (B, S, key_dim) → U h_j (B, S, attn_dim)."""
        return self.w_key(memory)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` s_{i-1} (B, Hq), ``keys`` U h_j (B, S, A), ``values`` h_j (B, S, Dv), ``mask``
        (B, S) bool, True at real tokens → (context (B, Dv), weights (B, S))."""
        scores = self.v(torch.tanh(self.w_query(query)[:, None, :] + keys)).squeeze(-1)  # (B, S)
        # as in tformer.nn.attention: the most negative finite number, then zeros, never NaN
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).masked_fill(~mask, 0.0)  # (B, S)
        context = (weights[:, :, None] * values).sum(dim=1)  # (B, Dv)
        return context, weights


class GRUDecoder(nn.Module):
    """One GRU step per target token: s_i = GRU([E y_{i-1} ; c_i], s_{i-1}), then the output
    layer reads [s_i ; c_i ; E y_{i-1}] (Bahdanau et al., 2015, Eq. 4, without the maxout).

    With ``attention=None`` the context c_i is the same summary vector at every step, so teacher
    forcing runs all steps in one call of the GRU; with attention c_i depends on s_{i-1}, and the
    steps must run one after another even in training — the sequential chain of chapter 1.
    """

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        E, H = config.embed_dim, config.hidden_size
        self.embed = nn.Embedding(config.tgt_vocab_size, E)
        self.dropout = Dropout(config.dropout)
        self.init_state = nn.Linear(2 * H, H)  # s_0 = tanh(W_s [→h_S ; ←h_1])
        self.attention = AdditiveAttention(H, 2 * H, H) if config.attention == "additive" else None
        self.rnn = nn.GRU(E + 2 * H, H, batch_first=True)
        self.pre_output = nn.Linear(H + 2 * H + E, E)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        state: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``tgt`` (B, T) ids from ``state`` s (B, H) on (None: s_0) → (out (B, T, E), last state
        (B, H), attention weights: T tensors (B, S), empty without attention)."""
        y = self.dropout(self.embed(tgt))  # (B, T, E): E y_{i-1}
        B, T, _ = y.shape
        summary = final_states(memory, lengths)  # (B, 2H)
        s = torch.tanh(self.init_state(summary)) if state is None else state  # (B, H)
        weights: list[torch.Tensor] = []
        if self.attention is None:
            c = summary[:, None, :].expand(B, T, summary.shape[-1])  # (B, T, 2H): same c every step
            states, s_last = self.rnn(torch.cat([y, c], dim=-1), s[None])  # (B, T, H), (1, B, H)
            s = s_last[0]
        else:
            keys = self.attention.project_keys(memory) if keys is None else keys  # (B, S, H)
            outs, contexts = [], []
            for t in range(T):  # c_t needs s_{t-1}: one step after another
                c_t, w_t = self.attention(s, keys, memory, mask)  # (B, 2H), (B, S)
                _, s_new = self.rnn(torch.cat([y[:, t], c_t], dim=-1)[:, None], s[None])
                s = s_new[0]  # (B, H)
                outs.append(s)
                contexts.append(c_t)
                weights.append(w_t)
            states, c = torch.stack(outs, dim=1), torch.stack(contexts, dim=1)  # (B, T, H), (B, T, 2H)
        out = torch.tanh(self.pre_output(torch.cat([states, c, y], dim=-1)))  # (B, T, E)
        return self.dropout(out), s, weights


class RNNSeq2Seq(nn.Module):
    """A GRU encoder–decoder, with or without additive attention, that plugs into everything a
    :class:`~tformer.nn.transformer.Transformer` plugs into.

    Masks are the Transformer's: ``src_mask`` ``(B, 1, 1, S)`` bool, True at real tokens, with the
    padding at the end of each row. ``memory`` is the encoder's states ``(B, S, 2H)``; the model
    without attention reads only its summary (the two final states) from it.

    Initialisation: PyTorch's defaults, except the embeddings, N(0, embed_dim^-0.5) as in the
    Transformer, so that tied output logits start near unit scale.
    """

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        if not isinstance(config, RNNConfig):
            raise TypeError(f"config must be an RNNConfig, got {type(config).__name__}")
        c = self.config = config
        self.encoder = GRUEncoder(c.src_vocab_size, c.embed_dim, c.hidden_size, c.dropout)
        self.decoder = GRUDecoder(c)
        self.generator = nn.Linear(c.embed_dim, c.tgt_vocab_size)
        for table in (self.encoder.embed, self.decoder.embed):
            nn.init.normal_(table.weight, std=c.embed_dim**-0.5)
        if c.tie_output:
            self.generator.weight = self.decoder.embed.weight
        self.keep_weights = False  # True: keep the last attention weights at .attn_weights
        self.attn_weights: torch.Tensor | None = None  # (B, T, S)

    # ---- input checks -------------------------------------------------------------------
    def _check_ids(self, name: str, ids: torch.Tensor, vocab_size: int) -> None:
        _checks.tensor(name, ids, ndim_min=1, floating=False)
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"{name} must be token ids of shape (B, T) with T >= 1, got shape {tuple(ids.shape)}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size})")

    def _source_mask(self, src_mask: torch.Tensor | None, B: int, S: int, device) -> torch.Tensor:
        """Any mask broadcastable to (B, 1, 1, S) → (B, S); None → every position is real."""
        if src_mask is None:
            return torch.ones(B, S, dtype=torch.bool, device=device)
        check_mask(src_mask, (B, 1, 1, S), "src_mask")
        return src_mask.expand(B, 1, 1, S).reshape(B, S)

    # ---- masks --------------------------------------------------------------------------
    def make_src_mask(self, src: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 1, S)`` bool, True at real (non-pad) source tokens."""
        return padding_mask(src, pad_id=self.config.pad_id)

    # ---- the three entry points -----------------------------------------------------------
    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids ``(B, S)`` → memory ``(B, S, 2H)``, zeros at padding; ``src_mask`` defaults
        to the non-pad tokens."""
        self._check_ids("src", src, self.config.src_vocab_size)
        if src_mask is None:
            src_mask = self.make_src_mask(src)
        mask = self._source_mask(src_mask, *src.shape, src.device)
        return self.encoder(src, source_lengths(mask))

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        caches: list[tuple[RecurrentState, KVCache]] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """Target ids ``(B, T)`` and ``memory`` ``(B, S, 2H)`` → logits ``(B, T, tgt_vocab)``.

        Args:
            src_mask: the mask given to :meth:`encode`; None means no source position is padding.
            tgt_mask: accepted for the Transformer's interface and not needed: step t of a
                recurrence has only seen tokens 0..t, and padding at the end of a row changes
                only positions the loss ignores.
            caches: from :meth:`new_caches`, for step-by-step decoding; then ``tgt`` holds only the
                new tokens and ``start`` must equal the number already consumed.
        """
        c = self.config
        self._check_ids("tgt", tgt, c.tgt_vocab_size)
        _checks.tensor("memory", memory, ndim_min=3, floating=True)
        B, T = tgt.shape
        if memory.dim() != 3 or memory.shape[0] != B or memory.shape[2] != 2 * c.hidden_size:
            raise ValueError(
                f"memory must have shape (B={B}, S, 2*hidden_size={2 * c.hidden_size}) from encode(), "
                f"got {tuple(memory.shape)}"
            )
        check_mask(tgt_mask, (B, 1, T, start + T), "tgt_mask")
        mask = self._source_mask(src_mask, B, memory.shape[1], memory.device)
        lengths = source_lengths(mask)
        state, keys = None, None
        if caches is not None:
            if (not isinstance(caches, list) or len(caches) != 1 or len(caches[0]) != 2
                    or not isinstance(caches[0][0], RecurrentState)):
                raise ValueError("caches must be the list [(RecurrentState, KVCache)] from new_caches()")
            _checks.integer("start", start)
            recurrent, projected = caches[0]
            if start != len(recurrent):
                raise ValueError(f"start={start} must equal the number of target tokens already decoded ({len(recurrent)})")
            state = recurrent.h
            if self.decoder.attention is not None:  # U h_j: once per sentence, then reused
                if projected.k is None:
                    projected.update(self.decoder.attention.project_keys(memory), memory)
                keys = projected.k
        elif start != 0:
            raise ValueError(f"start={start} needs caches holding the {start} earlier steps (from new_caches())")
        out, s, weights = self.decoder(tgt, memory, mask, lengths, state, keys)
        if caches is not None:
            caches[0][0].h, caches[0][0].steps = s, start + T
        if self.keep_weights and weights:
            self.attn_weights = torch.stack(weights, dim=1).detach()  # (B, T, S)
        return self.generator(out)  # (B, T, tgt_vocab)

    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``src`` (B, S) and ``tgt`` (B, T) token ids → logits ``(B, T, tgt_vocab)``.

        Teacher forcing, as for the Transformer: ``tgt`` starts with <bos> and the logits at t
        predict token t+1.
        """
        self._check_ids("src", src, self.config.src_vocab_size)
        if isinstance(tgt, torch.Tensor) and tgt.dim() >= 1 and tgt.shape[0] != src.shape[0]:
            raise ValueError(f"src and tgt must have the same batch size, got {src.shape[0]} and {tgt.shape[0]}")
        if src_mask is None:
            src_mask = self.make_src_mask(src)
        memory = self.encode(src, src_mask)
        return self.decode(tgt, memory, src_mask, tgt_mask)

    # ---- helpers ------------------------------------------------------------------------
    def new_caches(self) -> list[tuple[RecurrentState, KVCache]]:
        """``[(decoder state, projected keys U h_j)]``: the state grows with the hypothesis (beam
        search reorders it); the keys are fixed per sentence (static)."""
        return [(RecurrentState(), KVCache(static=True))]
