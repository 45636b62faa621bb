"""Tokenizers and vocabularies: text ↔ tokens ↔ ids (Vaswani et al., 2017, §5.1).

Chinese is split by character (:func:`tokenize_zh`), English by word (:func:`tokenize_en`) or by a
trained byte-pair encoding (:class:`BPETokenizer`, the paper's choice for real corpora); a
:class:`Vocab` maps tokens to ids with the four special tokens first. :class:`CharTokenizer` is the
character-level tokenizer of the GPT chapter. Which tokenizer each side of the translator uses is
decided in one place, :mod:`tformer.recipes.translation`.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

import tformer._checks as _checks

_ZH_TOKEN = re.compile(r"[A-Za-z0-9]+|\S")
_EN_TOKEN = re.compile(
    r"""\d+(?:[.,:]\d+)*                 # 3.5  10,000  7:30
      | [^\W\d_]+(?=n['’]t\b)            # "do" of don't, "ca" of can't
      | n['’]t\b
      | ['’](?:s|re|ve|ll|m|d)\b         # clitics: friend's, you're, I'll
      | [^\W\d_]+(?:-[^\W\d_]+)*         # words, hyphenated words
      | \S                               # any other single character: . , ? ! " ( ...
    """,
    re.VERBOSE | re.IGNORECASE,
)
_NO_SPACE_BEFORE = set(".,!?;:%)]}…") | {"n't", "n’t"}
_NO_SPACE_AFTER = set("([{$")


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__} ({text!r})")
    return text


def tokenize_zh(text: str) -> list[str]:
    """Chinese by character: 我买了书。→ ['我', '买', '了', '书', '。'].

    Runs of Latin letters or digits (iPhone, 2017) stay one token; whitespace is dropped.
    """
    return _ZH_TOKEN.findall(_check_text(text))


def detokenize_zh(tokens: Iterable[str]) -> str:
    """Characters back to Chinese text (no spaces), the inverse of :func:`tokenize_zh`."""
    return "".join(tokens)


def tokenize_en(text: str) -> list[str]:
    """English by word, punctuation and clitics split off, as BLEU's tokenizers do.

    "My friend's cat didn't eat." → ['My', 'friend', "'s", 'cat', 'did', "n't", 'eat', '.']
    """
    return _EN_TOKEN.findall(_check_text(text))


def detokenize_en(tokens: Iterable[str]) -> str:
    """Words back to ordinary English text (the inverse of :func:`tokenize_en`), for BLEU.

    ['I', 'bought', 'my', 'friend', "'s", 'book', '.'] → "I bought my friend's book."
    """
    out: list[str] = []
    glue_next = True  # no space before the first token or after an opening bracket/quote
    quote_open = False
    for tok in tokens:
        if tok == '"':
            glue = quote_open  # a closing quote sticks to the word before it
            quote_open = not quote_open
            out.append(tok if glue or glue_next else " " + tok)
            glue_next = quote_open
            continue
        clitic = tok.lower().startswith(("'", "’")) and len(tok) > 1
        if glue_next or tok in _NO_SPACE_BEFORE or clitic:
            out.append(tok)
        else:
            out.append(" " + tok)
        glue_next = tok in _NO_SPACE_AFTER
    return "".join(out)


# --------------------------------------------------------------------------- vocabulary

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


class Vocab:
    """Token ↔ id table. Ids 0..3 are ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``.

    Tokens not in the table encode to ``<unk>``; nothing raises on unseen text.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"tokens must start with the specials {list(SPECIALS)}, "
                             f"got {tokens[: len(SPECIALS)]}")
        if len(set(tokens)) != len(tokens):
            dup = [t for t, c in Counter(tokens).items() if c > 1]
            raise ValueError(f"tokens must be distinct, got duplicates {dup[:5]}")
        self.itos: list[str] = tokens
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(tokens)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1,
              max_size: int | None = None) -> Vocab:
        """Count tokens; keep those seen at least ``min_freq`` times, most frequent first.

        ``max_size`` caps the whole table, the four specials included. Ties are broken
        alphabetically, so the same data always gives the same ids.
        """
        _checks.int_at_least("min_freq", min_freq, 1)
        if max_size is not None and (not isinstance(max_size, int) or max_size < len(SPECIALS)):
            raise ValueError(f"max_size={max_size!r} must be None or an int >= {len(SPECIALS)} "
                             "(the specials count towards it)")
        counts = Counter(t for tokens in token_lists for t in tokens)
        for s in SPECIALS:
            counts.pop(s, None)
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max_size - len(SPECIALS)]
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, first={self.itos[4:9]})"

    def encode(self, tokens: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Tokens → ids; unknown tokens → ``unk_id``."""
        ids = [self.stoi.get(t, self.unk_id) for t in tokens]
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def decode(self, ids: Iterable[int] | torch.Tensor, strip_special: bool = True) -> list[str]:
        """Ids → tokens. With ``strip_special``, stop at the first ``<eos>`` and drop
        ``<pad>``/``<bos>`` (``<unk>`` is kept: it stands for a real word)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if not 0 <= i < len(self.itos):
                raise ValueError(f"id {i} is outside the vocabulary (size {len(self)})")
            if strip_special:
                if i == self.eos_id:
                    break
                if i in (self.pad_id, self.bos_id):
                    continue
            out.append(self.itos[i])
        return out

    def to_dict(self) -> dict:
        return {"format": "tformer.Vocab", "tokens": self.itos}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        if not isinstance(d, dict) or "tokens" not in d:
            raise ValueError("a Vocab dict needs a 'tokens' list (as written by Vocab.to_dict)")
        return cls(d["tokens"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


class BPETokenizer:
    """Byte-pair encoding (Sennrich et al., 2016) through Hugging Face ``tokenizers``.

    The paper uses shared BPE / word-piece vocabularies of 37k/32k tokens (§5.1); word and
    character tokens are enough for the built-in corpus, BPE is for real corpora. Ids 0..3 are
    the same specials as :class:`Vocab`, and :attr:`vocab` gives a :class:`Vocab` with the
    same ids, so BPE tokens go through :func:`make_batches` unchanged.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        self.vocab = Vocab(sorted(vocab, key=vocab.__getitem__))

    # bounds checked before the Rust library allocates anything (it aborts the process on an
    # absurd request): real systems use 30k-260k tokens, this course 4k-8k
    MAX_VOCAB_SIZE = 262_144
    MAX_FILE_BYTES = 32 * 2**20  # a 260k-token tokenizer file is about 10 MB

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> BPETokenizer:
        """Learn merges from an iterable of sentences (at most :attr:`MAX_VOCAB_SIZE` tokens)."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 0 < vocab_size <= cls.MAX_VOCAB_SIZE:
            raise ValueError(f"vocab_size={vocab_size!r} must be an int in [1, {cls.MAX_VOCAB_SIZE}] "
                             "(a few thousand tokens suit the course's corpora)")

        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.NFKC()
        # "▁" marks a word start so detokenize can put the spaces back
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIALS), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def tokenize(self, text: str, dropout: float = 0.0, rng: random.Random | None = None) -> list[str]:
        """The BPE pieces of ``text``. With ``dropout`` > 0 this is BPE-dropout (Provilkov et al.,
        2020): while a word is merged, each merge that could apply is skipped with probability
        ``dropout``, so the same word comes out in different, finer pieces from one call to the
        next; ``rng`` (a :class:`random.Random`, required then) makes the draws reproducible.
        Training uses it on the English side as data augmentation; translation never does."""
        text = _check_text(text)
        if dropout == 0.0:
            return self.tokenizer.encode(text, add_special_tokens=False).tokens
        _checks.probability("dropout", dropout, upper_inclusive=True)
        if not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random when dropout > 0 (so the pieces are reproducible), "
                            f"got {type(rng).__name__}")
        return self._sample(text, dropout, rng)

    @functools.cached_property
    def _merge_ranks(self) -> dict[tuple[str, str], int]:
        """``(left, right) -> rank`` of every merge, in the order training learnt them."""
        merges = json.loads(self.tokenizer.to_str())["model"]["merges"]
        return {tuple(m.split(" ") if isinstance(m, str) else m): rank for rank, m in enumerate(merges)}

    def _sample(self, text: str, dropout: float, rng: random.Random) -> list[str]:
        """BPE in Python, one word at a time: the lowest-ranked mergeable pair (leftmost on a tie) is
        merged until none is left; a pair skipped by ``dropout`` stays skipped for that step only.
        With ``dropout=0`` it gives the Rust library's pieces (a test checks every training sentence)."""
        ranks, known, unk = self._merge_ranks, self.vocab.stoi, SPECIALS[3]
        words = self.tokenizer.pre_tokenizer.pre_tokenize_str(self.tokenizer.normalizer.normalize_str(text))
        out: list[str] = []
        for word, _ in words:
            symbols = list(word)
            while len(symbols) > 1:
                best, at = None, -1
                for i in range(len(symbols) - 1):
                    r = ranks.get((symbols[i], symbols[i + 1]))
                    if r is not None and (best is None or r < best) and not rng.random() < dropout:
                        best, at = r, i
                if best is None:
                    break
                symbols[at:at + 2] = [symbols[at] + symbols[at + 1]]
            out.extend(t if t in known else unk for t in symbols)
        return out

    def detokenize(self, tokens: Iterable[str]) -> str:
        return self.tokenizer.decoder.decode(list(tokens))

    def __len__(self) -> int:
        return len(self.vocab)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        size = Path(path).stat().st_size
        if size > cls.MAX_FILE_BYTES:
            raise ValueError(f"{path} is {size / 2**20:.0f} MiB, more than the {cls.MAX_FILE_BYTES // 2**20} MiB "
                             f"a tokenizer of at most {cls.MAX_VOCAB_SIZE} tokens needs; it is not a file "
                             "tformer wrote")
        tok = cls(Tokenizer.from_file(str(path)))
        if len(tok.vocab) > cls.MAX_VOCAB_SIZE:
            raise ValueError(f"{path} holds {len(tok.vocab)} tokens, more than {cls.MAX_VOCAB_SIZE}")
        return tok


class CharTokenizer:
    """Character-level tokenizer: one id per distinct character of the text it was built from."""

    def __init__(self, chars: str | list[str]) -> None:
        self.chars = sorted(set(chars))
        if not self.chars:
            raise ValueError("a CharTokenizer needs at least one character")
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """``str`` → 1-D ``torch.long`` tensor of ids."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown[:10]!r}")
        return torch.tensor([self.stoi[ch] for ch in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if any(not 0 <= i < len(self.chars) for i in ids):
            raise ValueError(f"ids must lie in 0..{len(self.chars) - 1}")
        return "".join(self.chars[i] for i in ids)


