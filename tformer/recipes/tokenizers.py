"""How both sides of the language pair become ids, and back (:class:`Tokenizers`): Chinese is
always split by character; English by word (``kind="word"``) or by a byte-pair encoding learnt on
the English side of the training split (``kind="bpe"``)."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import tformer._checks as _checks
from tformer.data.batches import Batch, make_batches, too_long
from tformer.data.corpus import Pair
from tformer.data.text import SPECIALS, BPETokenizer, Vocab, detokenize_en, tokenize_en, tokenize_zh
from tformer.training.checkpoint import listed, read_json, verify_files

KINDS = ("word", "bpe")
BPE_FILE = "tgt_tokenizer.json"


class Tokenizers:
    """How both sides of the language pair become ids, and back: the one place that knows it.

    Args:
        kind: ``"word"`` (English words) or ``"bpe"`` (a trained :class:`BPETokenizer`).
        src_vocab, tgt_vocab: the vocabularies (for ``"bpe"``, ``tgt_vocab`` is ``bpe.vocab``).
        bpe: the English BPE tokenizer when ``kind == "bpe"``.
    """

    def __init__(self, kind: str, src_vocab: Vocab, tgt_vocab: Vocab, bpe: BPETokenizer | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"tokenizer={kind!r} must be one of {list(KINDS)}")
        if (kind == "bpe") != (bpe is not None):
            raise ValueError(f"tokenizer={kind!r} needs bpe={'a BPETokenizer' if kind == 'bpe' else 'None'}")
        self.kind, self.src_vocab, self.tgt_vocab, self.bpe = kind, src_vocab, tgt_vocab, bpe
        self.tokenize_src = tokenize_zh
        self.tokenize_tgt = tokenize_en if bpe is None else bpe.tokenize

    @classmethod
    def build(cls, train: Sequence[Pair], kind: str = "word", *, bpe_vocab_size: int = 8000,
              min_freq: int = 1) -> Tokenizers:
        """Learn the vocabularies (and, for ``"bpe"``, the merges) from the training pairs only."""
        if kind not in KINDS:
            raise ValueError(f"tokenizer={kind!r} must be one of {list(KINDS)}")
        src = Vocab.build([tokenize_zh(p.src) for p in train], min_freq=min_freq)
        if kind == "word":
            return cls(kind, src, Vocab.build([tokenize_en(p.tgt) for p in train], min_freq=min_freq))
        _checks.integer("bpe_vocab_size", bpe_vocab_size, minimum=len(SPECIALS) + 1, why=" (the special tokens)")
        bpe = BPETokenizer.train((p.tgt for p in train), vocab_size=bpe_vocab_size)
        return cls(kind, src, bpe.vocab, bpe)

    def detokenize_tgt(self, tokens: Sequence[str]) -> str:
        if self.bpe is None:
            return detokenize_en(tokens)
        # a lone word-start piece "▁" decodes to an extra space; BLEU wants single spaces
        return " ".join(self.bpe.detokenize(tokens).split())

    def files(self) -> dict[str, object]:
        """What a checkpoint stores: the vocabularies, and the BPE tokenizer's own file."""
        out: dict[str, object] = {"src_vocab.json": self.src_vocab, "tgt_vocab.json": self.tgt_vocab}
        if self.bpe is not None:
            out[BPE_FILE] = self.bpe
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, kind: str) -> Tokenizers:
        """Read back what :meth:`files` wrote into a checkpoint directory."""
        directory = Path(directory)
        if kind not in KINDS:
            raise ValueError(f"unsupported tokenizer {kind!r} in {directory / 'config.json'}; expected one of {list(KINDS)}")
        names = ["src_vocab.json", "tgt_vocab.json"] + ([BPE_FILE] if kind == "bpe" else [])
        verify_files(directory, [n for n in names if (directory / n).is_file()])  # listed and intact
        src, tgt = (Vocab.from_dict(read_json(directory / name)) for name in names[:2])
        if kind == "word":
            if (directory / BPE_FILE).is_file() and listed(directory, BPE_FILE):
                raise ValueError(f"config.json in {directory} says the English side is split by word, but the "
                                 f"checkpoint holds a BPE tokenizer ({BPE_FILE}); the config was changed after "
                                 "the save: set \"tokenizer\": \"bpe\" back, or train again")
            return cls(kind, src, tgt)
        path = directory / BPE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint file {path} is missing (config.json says the target side uses the BPE "
                f"tokenizer saved in {BPE_FILE})"
            )
        try:
            bpe = BPETokenizer.load(path)
        except Exception as error:  # tokenizers raises its own exception type for a bad file
            raise ValueError(f"checkpoint file {path} is corrupt (not a tokenizers JSON file: {error})") from None
        if bpe.vocab.itos != tgt.itos:
            what = (f"knows {len(bpe.vocab)} tokens but tgt_vocab.json holds {len(tgt)}" if len(bpe.vocab) != len(tgt)
                    else "numbers its tokens otherwise than tgt_vocab.json")
            raise ValueError(f"the BPE tokenizer in {directory} {what}; the files come from different runs")
        return cls(kind, src, tgt, bpe)

    def count_too_long(self, pairs: Sequence[Pair], max_len: int) -> int:
        """How many of ``pairs`` :meth:`batches` drops for ``max_len`` (see
        :func:`tformer.data.batches.too_long`)."""
        return sum(too_long(len(self.tokenize_src(p.src)), len(self.tokenize_tgt(p.tgt)) + 2, max_len)
                   for p in pairs)

    def batches(self, pairs: Sequence[Pair], *, bpe_dropout: float = 0.0, **kwargs) -> list[Batch]:
        """:func:`tformer.data.batches.make_batches` with these tokenizers and vocabularies.

        ``bpe_dropout`` > 0 splits the English side by BPE-dropout
        (:meth:`~tformer.data.text.BPETokenizer.tokenize`), with draws seeded by ``kwargs["seed"]``:
        each epoch's batches (a new seed) hold new segmentations, and the same seed gives the same ones."""
        tokenize_tgt = self.tokenize_tgt
        if bpe_dropout:
            _checks.probability("bpe_dropout", bpe_dropout)
            if self.bpe is None:
                raise ValueError(f"bpe_dropout={bpe_dropout} needs the BPE tokenizer; these tokenizers split "
                                 f"English by {self.kind}")
            rng, bpe = random.Random(f"bpe-dropout:{kwargs.get('seed', 0)}"), self.bpe

            def tokenize_tgt(text: str) -> list[str]:
                return bpe.tokenize(text, dropout=bpe_dropout, rng=rng)
        return make_batches(pairs, self.src_vocab, self.tgt_vocab, self.tokenize_src, tokenize_tgt, **kwargs)
