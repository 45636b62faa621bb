"""Inference: greedy decoding, beam search and cross-attention alignments (Vaswani et al., 2017, §6.1).

The decoder is auto-regressive: it predicts one token, appends it and predicts the next. With
KV caches (:class:`tformer.attention.KVCache`) each step projects only the new token, instead of
re-running the whole prefix; the result is the same. The paper decodes with beam search
(beam size 4, length penalty α = 0.6, §6.1, after Wu et al. 2016); :func:`beam_search` does that
for a whole batch at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from tformer import _checks
from tformer.gpt import sample, top_k_filter, top_p_filter  # noqa: F401  (chapter 10's sampling)


def _prepare(model: nn.Module, src: torch.Tensor, src_mask: torch.Tensor | None, max_len: int | None):
    _checks.tensor("src", src, ndim_min=2, floating=False)
    if src_mask is None:
        src_mask = model.make_src_mask(src)  # (B, 1, 1, S)
    limit = model.config.max_len - 1  # position 0 holds <bos>
    if max_len is None:
        max_len = min(2 * src.shape[1] + 10, limit)
    _checks.positive_int("max_len", max_len)
    if max_len > limit:
        raise ValueError(
            f"max_len={max_len} exceeds what the positional table allows ({limit} = config.max_len - 1)"
        )
    return src_mask, max_len


@torch.no_grad()
def greedy_decode(
    model: nn.Module,
    src: torch.Tensor,
    src_mask: torch.Tensor | None = None,
    *,
    max_len: int | None = None,
    bos_id: int = 1,
    eos_id: int = 2,
    use_cache: bool = True,
) -> torch.Tensor:
    """Pick the most probable next token at every step until <eos> (or ``max_len`` tokens).

    Args:
        model: a :class:`tformer.model.Transformer` (switched to eval mode while decoding).
        src: source ids ``(B, S)``.
        src_mask: ``(B, 1, 1, S)`` bool, True at real tokens; built from ``pad_id`` when None.
        max_len: most tokens to generate (default ``2·S + 10``, capped by ``config.max_len - 1``).
        use_cache: decode step by step with KV caches (same result, less work).

    Returns:
        ``(B, T)`` token ids without the leading <bos>; a finished row holds its <eos> and then
        ``pad_id``.
    """
    src_mask, max_len = _prepare(model, src, src_mask, max_len)
    pad_id = model.config.pad_id
    was_training = model.training
    model.eval()
    memory = model.encode(src, src_mask)  # (B, S, d_model)
    B = src.shape[0]
    ys = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    caches = model.new_caches() if use_cache else None
    for t in range(max_len):
        if use_cache:
            logits = model.decode(ys[:, -1:], memory, src_mask, caches=caches, start=t)
        else:
            logits = model.decode(ys, memory, src_mask)
        nxt = logits[:, -1].argmax(dim=-1).masked_fill(done, pad_id)  # (B,)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == eos_id
        if done.all():
            break
    model.train(was_training)
    return ys[:, 1:]


def length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT's lp(Y) = ((5 + \\|Y\\|) / 6)^α (Wu et al., 2016, Eq. 14); α = 0 means no normalisation.

    Beam search ranks hypotheses by log P(Y | X) / lp(Y): without it, every extra token lowers
    the summed log-probability and short translations win.
    """
    return ((5.0 + length.float()) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: nn.Module,
    src: torch.Tensor,
    src_mask: torch.Tensor | None = None,
    *,
    beam_size: int = 4,
    max_len: int | None = None,
    alpha: float = 0.6,
    bos_id: int = 1,
    eos_id: int = 2,
) -> torch.Tensor:
    """Keep the ``beam_size`` best partial translations per sentence, for a whole batch at once.

    Every step extends each of the k hypotheses by every token, scores the k·V candidates by
    their summed log-probability divided by :func:`length_penalty` (α = 0.6 as in §6.1), and keeps
    the k best. A hypothesis that has produced <eos> stays in the beam with its score frozen. At
    the end the best-scoring hypothesis wins. ``beam_size=1`` is greedy decoding.

    Returns:
        ``(B, T)`` ids without <bos>, like :func:`greedy_decode`.
    """
    _checks.positive_int("beam_size", beam_size)
    src_mask, max_len = _prepare(model, src, src_mask, max_len)
    V, pad_id = model.config.tgt_vocab_size, model.config.pad_id
    was_training = model.training
    model.eval()
    B, k, dev = src.shape[0], beam_size, src.device
    memory = model.encode(src, src_mask).repeat_interleave(k, dim=0)  # (B·k, S, d_model)
    src_mask = src_mask.repeat_interleave(k, dim=0)
    scores = torch.full((B, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all k beams start identical: expand only the first
    scores = scores.view(-1)  # (B·k,) summed log-probabilities
    ys = torch.full((B * k, 1), bos_id, dtype=torch.long, device=dev)
    lengths = torch.zeros(B * k, dtype=torch.long, device=dev)
    done = torch.zeros(B * k, dtype=torch.bool, device=dev)
    caches = model.new_caches()
    offsets = (torch.arange(B, device=dev) * k)[:, None]  # (B, 1) first row of each sentence
    for t in range(max_len):
        logits = model.decode(ys[:, -1:], memory, src_mask, caches=caches, start=t)
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (B·k, V)
        # a finished hypothesis may only be extended by padding, at no cost
        logp[done] = float("-inf")
        logp[done, pad_id] = 0.0
        cand = scores[:, None] + logp  # (B·k, V)
        new_len = (lengths + (~done).long())[:, None].expand(-1, V)  # (B·k, V)
        ranked = cand / length_penalty(new_len, alpha)
        _, idx = ranked.view(B, k * V).topk(k, dim=-1)  # (B, k)
        beam, tok = idx // V, idx % V
        rows = (offsets + beam).view(-1)  # (B·k,) which old hypothesis each new one extends
        tok = tok.view(-1)
        scores = cand[rows, tok]
        lengths = new_len[rows, tok]
        ys = torch.cat([ys[rows], tok[:, None]], dim=1)
        done = done[rows] | (tok == eos_id)
        for self_cache, _ in caches:  # cross-attention caches are equal across a sentence's beams
            self_cache.reorder(rows)
        if done.all():
            break
    final = (scores / length_penalty(lengths, alpha)).view(B, k)
    best = (offsets.squeeze(1) + final.argmax(dim=-1))  # (B,)
    model.train(was_training)
    out = ys[best, 1:]
    return out


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
    layers = model.decoder.layers
    attn = layers[layer].cross_attn
    was_training, kept = model.training, attn.keep_weights
    model.eval()
    attn.keep_weights = True
    try:
        model(src, tgt_in, src_mask)
        weights = attn.attn_weights
    finally:
        attn.keep_weights = kept
        model.train(was_training)
    return weights


# --------------------------------------------------------------------------- text in, text out

TOKENIZERS = ("zh_char", "en_word")


class Translator:
    """A trained model plus its vocabularies and tokenizers: sentences in, sentences out.

    Chinese is always tokenized by character. English is tokenized by word
    (:func:`tformer.data.tokenize_en` / :func:`tformer.data.detokenize_en`) unless a trained
    ``tgt_tokenizer`` is given (:class:`tformer.data.BPETokenizer`, the option for real corpora;
    the paper uses BPE / word pieces, §5.1); outputs are always detokenized text.

    Args:
        model: a :class:`tformer.model.Transformer`.
        src_vocab, tgt_vocab: :class:`tformer.data.Vocab`.
        device: where to run (default: the model's device).
        tgt_tokenizer: ``None`` for English words, or an object with ``tokenize(text)`` and
            ``detokenize(tokens)`` whose tokens are those of ``tgt_vocab``.
    """

    def __init__(self, model: nn.Module, src_vocab, tgt_vocab, device: torch.device | str | None = None,
                 *, tgt_tokenizer=None):
        from tformer import data

        self.model, self.src_vocab, self.tgt_vocab = model, src_vocab, tgt_vocab
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.tgt_tokenizer = tgt_tokenizer
        self.src_tokenize = data.tokenize_zh
        if tgt_tokenizer is None:
            self.tgt_tokenize, self.detokenize = data.tokenize_en, data.detokenize_en
        else:
            self.tgt_tokenize, self.detokenize = tgt_tokenizer.tokenize, tgt_tokenizer.detokenize

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, device: torch.device | str | None = None):
        """Load a checkpoint directory written by ``python -m tformer train`` (or ``save_checkpoint``).

        A BPE checkpoint (``--tokenizer bpe``) also loads the tokenizer file its ``config.json``
        names; a missing file is a ``FileNotFoundError`` naming it.
        """
        from tformer.checkpoint import load_checkpoint, load_target_tokenizer
        from tformer.train import default_device

        ckpt = load_checkpoint(directory, restore_rng=False)
        if ckpt.src_vocab is None or ckpt.tgt_vocab is None:
            raise FileNotFoundError(f"checkpoint {directory} has no src_vocab.json / tgt_vocab.json")
        tgt_tokenizer = load_target_tokenizer(directory, ckpt.config)
        if tgt_tokenizer is not None and len(tgt_tokenizer.vocab) != len(ckpt.tgt_vocab):
            raise ValueError(
                f"the BPE tokenizer in {directory} knows {len(tgt_tokenizer.vocab)} tokens but "
                f"tgt_vocab.json holds {len(ckpt.tgt_vocab)}; the files come from different runs"
            )
        return cls(ckpt.model.eval(), ckpt.src_vocab, ckpt.tgt_vocab, device or default_device(),
                   tgt_tokenizer=tgt_tokenizer)

    def encode(self, sentences: Sequence[str]) -> torch.Tensor:
        """Tokenize and pad source sentences → ids ``(B, S)`` (unknown characters → <unk>)."""
        rows = []
        limit = self.model.config.max_len
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise TypeError(f"sentence {i} must be a str, got {type(s).__name__}")
            ids = self.src_vocab.encode(self.src_tokenize(s))  # as in training: no <bos>/<eos>
            if not ids:
                raise ValueError(f"sentence {i} ({s!r}) is empty; there is nothing to translate")
            if len(ids) > limit:
                raise ValueError(
                    f"sentence {i} has {len(ids)} tokens but the model's max_len is {limit}; "
                    "split it into shorter sentences"
                )
            rows.append(ids)
        width = max(len(r) for r in rows)
        pad = self.src_vocab.pad_id
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)

    def ids_to_text(self, ids: Sequence[int]) -> str:
        """Target ids → detokenized English, stopping at <eos>."""
        ids = list(ids)
        if self.tgt_vocab.eos_id in ids:
            ids = ids[: ids.index(self.tgt_vocab.eos_id)]
        text = self.detokenize(self.tgt_vocab.decode(ids, strip_special=True))
        if self.tgt_tokenizer is not None:
            # a lone word-start piece "▁" decodes to an extra space; BLEU wants single spaces
            text = " ".join(text.split())
        return text

    def translate(
        self,
        sentences: str | Sequence[str],
        *,
        beam_size: int = 1,
        alpha: float = 0.6,
        max_len: int | None = None,
        batch_size: int = 128,
    ) -> list[str]:
        """Translate one sentence or a list; ``beam_size=1`` is greedy decoding."""
        if isinstance(sentences, str):
            sentences = [sentences]
        if len(sentences) == 0:
            raise ValueError("sentences is empty; give at least one sentence to translate")
        out: list[str] = []
        kw = {"bos_id": self.tgt_vocab.bos_id, "eos_id": self.tgt_vocab.eos_id, "max_len": max_len}
        for i in range(0, len(sentences), batch_size):
            src = self.encode(sentences[i : i + batch_size])
            if beam_size == 1:
                ids = greedy_decode(self.model, src, **kw)
            else:
                ids = beam_search(self.model, src, beam_size=beam_size, alpha=alpha, **kw)
            out += [self.ids_to_text(row) for row in ids.tolist()]
        return out

    def alignment(self, sentence: str, translation: str | None = None):
        """Cross-attention of the last decoder layer, averaged over heads, for one sentence.

        Returns:
            ``(weights (T, S), source tokens, target tokens)``, where row t is the attention while
            producing target token t (the last target token is <eos>).
        """
        src = self.encode([sentence])
        if translation is None:
            translation = self.translate(sentence)[0]
        tgt_tokens = self.tgt_tokenize(translation)
        ids = self.tgt_vocab.encode(tgt_tokens, add_bos=True, add_eos=True)
        tgt_in = torch.tensor([ids[:-1]], device=self.device)
        w = cross_attention(self.model, src, tgt_in)[0].mean(dim=0)  # (T, S)
        src_tokens = self.src_tokenize(sentence)
        return w.cpu(), src_tokens, tgt_tokens + ["<eos>"]
