"""Data for translation: tokenizers, vocabularies, length-bucketed batches with masks, TSV corpora.

The paper batches "sentence pairs ... together by approximate sequence length" (Vaswani et al.,
2017, §5.1) and feeds the decoder the target shifted right (§3.1, "the output embeddings are
offset by one position"). :func:`make_batches` does both and builds the two masks once per batch,
in the package's convention: bool, **True = may attend** (the opposite of the ``key_padding_mask``
of ``torch.nn.MultiheadAttention``, where True means "ignore").

The built-in Chinese→English corpus lives in :mod:`tformer.corpus` and is re-exported here
(``tformer.data.load_builtin("train")``).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from tformer.attention import causal_mask, padding_mask
from tformer.corpus import Pair, builtin_splits, generate_pairs, load_builtin

__all__ = [
    "Pair", "load_builtin", "builtin_splits", "generate_pairs",
    "tokenize_zh", "tokenize_en", "detokenize_en", "detokenize_zh",
    "SPECIALS", "Vocab", "BPETokenizer", "Batch", "make_batches", "TranslationData",
    "collate", "padding_fraction", "PairList", "read_tsv_pairs", "download_tatoeba", "TATOEBA_URL",
]

# --------------------------------------------------------------------------- tokenizers

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
        if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq={min_freq!r} must be an int >= 1")
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

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> BPETokenizer:
        """Learn merges from an iterable of sentences."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

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

    def tokenize(self, text: str) -> list[str]:
        return self.tokenizer.encode(_check_text(text), add_special_tokens=False).tokens

    def detokenize(self, tokens: Iterable[str]) -> str:
        return self.tokenizer.decoder.decode(list(tokens))

    def __len__(self) -> int:
        return len(self.vocab)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """One mini-batch of padded id tensors and the masks built from them (True = may attend).

    Attributes:
        src: ``(B, S)`` source ids, padded with ``<pad>`` = 0.
        tgt_in: ``(B, T)`` decoder input: ``<bos>`` y1 … yn (the target shifted right, §3.1).
        tgt_out: ``(B, T)`` what the decoder must predict: y1 … yn ``<eos>``.
        src_mask: ``(B, 1, 1, S)``, False at source padding (used by encoder self-attention and
            by the decoder's cross-attention).
        tgt_mask: ``(B, 1, T, T)``, causal AND False at target padding (decoder self-attention, §3.2.3).
        n_tokens: number of non-pad tokens in ``tgt_out`` (what the loss is averaged over).
        index: ``(B,)`` position of each row's pair in the list given to :func:`make_batches`.
    """

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    src_mask: torch.Tensor
    tgt_mask: torch.Tensor
    n_tokens: int
    index: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device),
                     self.src_mask.to(device), self.tgt_mask.to(device), self.n_tokens, self.index)

    def __len__(self) -> int:
        return self.src.shape[0]


def _pad(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)


@lru_cache(maxsize=64)
def _causal(size: int) -> torch.Tensor:
    # one (T, T) mask per length, reused: batches of a bucketed epoch share a few lengths
    return causal_mask(size)


def collate(src_ids: list[list[int]], tgt_ids: list[list[int]], index: Sequence[int] | None = None,
            pad_id: int = 0) -> Batch:
    """Pad one group of encoded pairs into a :class:`Batch`.

    ``tgt_ids`` must already hold ``<bos>`` ... ``<eos>``; the masks use
    :func:`tformer.attention.padding_mask` and :func:`tformer.attention.causal_mask`.
    """
    src = _pad(src_ids, pad_id)  # (B, S)
    # shift each row before padding, so no <eos> is left inside a shorter row's tgt_in
    tgt_in = _pad([t[:-1] for t in tgt_ids], pad_id)  # (B, T)  <bos> y1 .. yn
    tgt_out = _pad([t[1:] for t in tgt_ids], pad_id)  # (B, T)  y1 .. yn <eos>
    src_mask = padding_mask(src, pad_id=pad_id)  # (B, 1, 1, S)
    tgt_mask = padding_mask(tgt_in, pad_id=pad_id) & _causal(tgt_in.shape[1])  # (B, 1, T, T)
    index = torch.tensor(list(index) if index is not None else range(len(src_ids)), dtype=torch.long)
    return Batch(src, tgt_in, tgt_out, src_mask, tgt_mask, int((tgt_out != pad_id).sum()), index)


def make_batches(
    pairs: Sequence[Pair | tuple[str, str]],
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    src_tokenize: Callable[[str], list[str]] = tokenize_zh,
    tgt_tokenize: Callable[[str], list[str]] = tokenize_en,
    batch_size: int = 64,
    max_tokens: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    max_len: int | None = None,
    bucket: bool = True,
    chunk_batches: int = 50,
) -> list[Batch]:
    """Encode, group by length and pad ``pairs`` into batches (Vaswani et al., 2017, §5.1).

    Bucketing: the pairs are shuffled (``seed``), cut into chunks of ``chunk_batches`` batches,
    each chunk is sorted by length and cut into batches, and the batches are shuffled again. Pairs
    in one batch then have similar lengths, so little of each batch is padding, while every
    epoch still sees a different order. ``shuffle=False`` keeps the order of ``pairs`` (sorted
    only within each chunk); ``bucket=False`` makes plain batches in (shuffled) order.

    Args:
        batch_size: sentences per batch (ignored when ``max_tokens`` is given).
        max_tokens: instead, fill each batch up to this many padded tokens (the paper's batches
            held about 25000 source and 25000 target tokens).
        max_len: drop pairs whose source, or target plus ``<bos>`` (= the length of ``tgt_in``
            and ``tgt_out``), has more tokens than this, e.g. the model's ``max_len``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int (sentences per batch)")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens={max_tokens!r} must be None or a positive int")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 2):
        raise ValueError(f"max_len={max_len!r} must be None or an int >= 2")
    if src_vocab.pad_id != tgt_vocab.pad_id:
        raise ValueError("src_vocab and tgt_vocab must use the same pad id")
    encoded = []
    for i, pair in enumerate(pairs):
        s = src_vocab.encode(src_tokenize(pair[0]))
        t = tgt_vocab.encode(tgt_tokenize(pair[1]), add_bos=True, add_eos=True)
        if not s or len(t) < 3:
            continue  # an empty side has nothing to learn from
        if max_len is not None and (len(s) > max_len or len(t) - 1 > max_len):
            continue
        encoded.append((i, s, t))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(encoded)
    if bucket:
        size = chunk_batches * (batch_size if max_tokens is None else max(1, max_tokens // 16))
        chunks = [encoded[k:k + size] for k in range(0, len(encoded), size)]
        encoded = [e for c in chunks for e in sorted(c, key=lambda e: (len(e[1]), len(e[2])))]
    groups: list[list[tuple[int, list[int], list[int]]]] = []
    current: list[tuple[int, list[int], list[int]]] = []
    longest = 0
    for e in encoded:
        width = max(longest, len(e[1]), len(e[2]) - 1)
        full = (len(current) >= batch_size if max_tokens is None
                else current and width * (len(current) + 1) > max_tokens)
        if full:
            groups.append(current)
            current, width = [], max(len(e[1]), len(e[2]) - 1)
        current.append(e)
        longest = width
    if current:
        groups.append(current)
    if shuffle:
        rng.shuffle(groups)
    return [collate([e[1] for e in g], [e[2] for e in g], [e[0] for e in g], src_vocab.pad_id)
            for g in groups]


def padding_fraction(batches: Iterable[Batch]) -> float:
    """Share of the source and target positions in ``batches`` that are padding."""
    pad = total = 0
    for b in batches:
        pad += int((~b.src_mask).sum()) + int((b.tgt_out == 0).sum())
        total += b.src.numel() + b.tgt_out.numel()
    return pad / max(total, 1)


class TranslationData:
    """Pairs, tokenizers and vocabularies in one place, for the training and inference chapters.

    Vocabularies are built from the training pairs only; anything else becomes ``<unk>``.
    """

    def __init__(
        self,
        train: Sequence[Pair],
        valid: Sequence[Pair] = (),
        test: Sequence[Pair] = (),
        src_tokenize: Callable[[str], list[str]] = tokenize_zh,
        tgt_tokenize: Callable[[str], list[str]] = tokenize_en,
        tgt_detokenize: Callable[[Iterable[str]], str] = detokenize_en,
        min_freq: int = 1,
        src_vocab: Vocab | None = None,
        tgt_vocab: Vocab | None = None,
    ) -> None:
        self.train, self.valid, self.test = list(train), list(valid), list(test)
        self.src_tokenize, self.tgt_tokenize = src_tokenize, tgt_tokenize
        self.tgt_detokenize = tgt_detokenize
        self.src_vocab = src_vocab or Vocab.build((src_tokenize(p[0]) for p in self.train), min_freq)
        self.tgt_vocab = tgt_vocab or Vocab.build((tgt_tokenize(p[1]) for p in self.train), min_freq)

    @classmethod
    def builtin(cls, **kwargs) -> TranslationData:
        """The built-in Chinese→English corpus with character / word tokens."""
        s = builtin_splits()
        return cls(s["train"], s["valid"], s["test"], **kwargs)

    def batches(self, split: str = "train", **kwargs) -> list[Batch]:
        """:func:`make_batches` over one split ("train", "valid", "test") with these vocabularies."""
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split={split!r} must be 'train', 'valid' or 'test'")
        return make_batches(getattr(self, split), self.src_vocab, self.tgt_vocab,
                            self.src_tokenize, self.tgt_tokenize, **kwargs)

    def encode_src(self, text: str) -> torch.Tensor:
        """One source sentence → ids ``(1, S)``, ready for ``model.encode``."""
        return torch.tensor([self.src_vocab.encode(self.src_tokenize(text))], dtype=torch.long)

    def decode_tgt(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Target ids (with or without ``<bos>``/``<eos>``) → an English sentence."""
        return self.tgt_detokenize(self.tgt_vocab.decode(ids))


# --------------------------------------------------------------------------- real corpora

TATOEBA_URL = "https://www.manythings.org/anki/cmn-eng.zip"


class PairList(list):
    """A list of :class:`Pair` that also says how many malformed lines were skipped."""

    skipped: int = 0


def read_tsv_pairs(path: str | Path, src_col: int = 1, tgt_col: int = 0,
                   errors: str = "raise") -> PairList:
    """Read a tab-separated parallel file, e.g. Tatoeba's ``cmn-eng`` (``English<TAB>Chinese<TAB>
    attribution``; the defaults read it as Chinese→English).

    A UTF-8 BOM, ``\\r\\n`` line ends and blank lines are tolerated. Columns other than the two
    sides are kept, tab-joined, as the pair's ``attribution``. Every line must have as many
    columns as the first one and two non-empty sides; otherwise ``errors="raise"`` raises a
    ``ValueError`` naming the file and line, and ``errors="skip"`` drops the line, counts it in
    ``.skipped`` of the result and warns once with the count.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors={errors!r} must be 'raise' or 'skip'")
    for name, col in (("src_col", src_col), ("tgt_col", tgt_col)):
        if isinstance(col, bool) or not isinstance(col, int) or col < 0:
            raise ValueError(f"{name}={col!r} must be a column index >= 0")
    if src_col == tgt_col:
        raise ValueError(f"src_col and tgt_col are both {src_col}; they must be different columns")
    path = Path(path)
    out = PairList()
    width = None
    with path.open(encoding="utf-8-sig", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = [c.strip() for c in line.split("\t")]
            if width is None:
                width = len(cols)
            problem = None
            if len(cols) != width or len(cols) <= max(src_col, tgt_col):
                need = max(width, max(src_col, tgt_col) + 1)
                problem = f"expected {need} tab-separated columns, got {len(cols)}"
            elif not cols[src_col] or not cols[tgt_col]:
                side = "source" if not cols[src_col] else "target"
                problem = f"the {side} column is empty"
            if problem is not None:
                if errors == "raise":
                    raise ValueError(f"{path}, line {lineno}: {problem}: {line[:80]!r}")
                out.skipped += 1
                continue
            rest = "\t".join(c for i, c in enumerate(cols) if i not in (src_col, tgt_col))
            out.append(Pair(cols[src_col], cols[tgt_col], rest))
    if out.skipped:
        warnings.warn(f"read_tsv_pairs skipped {out.skipped} malformed line(s) in {path}",
                      stacklevel=2)
    return out


def download_tatoeba(dest_dir: str | Path, url: str = TATOEBA_URL, overwrite: bool = False,
                     timeout: float = 60.0) -> Path:
    """Fetch a Tatoeba pair file (zip or plain TSV) into ``dest_dir``; return the TSV's path.

    For readers who are online: tests and notebooks never call it. From a zip only the
    ``.txt`` files other than ``_about.txt`` are extracted (by base name, so no member can write
    outside ``dest_dir``). An existing file is reused unless ``overwrite``.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "pairs.tsv"
    target = dest / name
    if overwrite or not target.exists():
        req = urllib.request.Request(url, headers={"User-Agent": "tformer (course data helper)"})
        with urllib.request.urlopen(req, timeout=timeout) as r, \
                tempfile.NamedTemporaryFile(dir=dest, delete=False) as tmp:
            shutil.copyfileobj(r, tmp)
        Path(tmp.name).replace(target)
    if not zipfile.is_zipfile(target):
        return target
    with zipfile.ZipFile(target) as z:
        members = [m for m in z.namelist()
                   if m.endswith(".txt") and Path(m).name != "_about.txt" and not m.endswith("/")]
        if not members:
            raise ValueError(f"{url} holds no .txt pair file (found {z.namelist()})")
        paths = []
        for m in members:
            out = dest / Path(m).name
            if overwrite or not out.exists():
                out.write_bytes(z.read(m))
            paths.append(out)
    return paths[0]
