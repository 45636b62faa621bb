"""Batches: padded id tensors and their masks, grouped by length (Vaswani et al., 2017, §5.1).

The paper batches "sentence pairs ... together by approximate sequence length" and feeds the
decoder the target shifted right (§3.1, "the output embeddings are offset by one position").
:func:`make_batches` does both and builds the two masks once per batch with :mod:`tformer.masks`
(bool, **True = may attend**). A language model instead trains on random windows of one long
text (:func:`random_windows`, :class:`RandomWindows`).

Every batch type here says what the model reads (``inputs``), what it must predict (``target``)
and how many target tokens count (``n_tokens``), so one training loop
(:mod:`tformer.training.loop`) serves the translator and the GPT.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

import tformer._checks as _checks
from tformer.data.corpus import Pair
from tformer.data.text import Vocab
from tformer.masks import causal_mask, padding_mask


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

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        """What the Transformer reads (teacher forcing): ``model(*batch.inputs)`` → logits (B, T, V)."""
        return self.src, self.tgt_in, self.src_mask, self.tgt_mask

    @property
    def target(self) -> torch.Tensor:
        """What it must predict: ``tgt_out`` (B, T)."""
        return self.tgt_out


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Rows of ids of different lengths → one ``(len(rows), longest)`` long tensor, padded on the right."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)


def collate(src_ids: list[list[int]], tgt_ids: list[list[int]], index: Sequence[int] | None = None,
            pad_id: int = 0) -> Batch:
    """Pad one group of encoded pairs into a :class:`Batch`.

    ``tgt_ids`` must already hold ``<bos>`` ... ``<eos>``; the masks use
    :func:`tformer.masks.padding_mask` and :func:`tformer.masks.causal_mask`.
    """
    src = pad_rows(src_ids, pad_id)  # (B, S)
    # shift each row before padding, so no <eos> is left inside a shorter row's tgt_in
    tgt_in = pad_rows([t[:-1] for t in tgt_ids], pad_id)  # (B, T)  <bos> y1 .. yn
    tgt_out = pad_rows([t[1:] for t in tgt_ids], pad_id)  # (B, T)  y1 .. yn <eos>
    src_mask = padding_mask(src, pad_id=pad_id)  # (B, 1, 1, S)
    tgt_mask = padding_mask(tgt_in, pad_id=pad_id) & causal_mask(tgt_in.shape[1])  # (B, 1, T, T)
    index = torch.tensor(list(index) if index is not None else range(len(src_ids)), dtype=torch.long)
    return Batch(src, tgt_in, tgt_out, src_mask, tgt_mask, int((tgt_out != pad_id).sum()), index)


def make_batches(
    pairs: Sequence[Pair | tuple[str, str]],
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    src_tokenize: Callable[[str], list[str]],
    tgt_tokenize: Callable[[str], list[str]],
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
    _checks.int_at_least("batch_size", batch_size, 1, "a positive int (sentences per batch)")
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
        if max_len is not None and too_long(len(s), len(t), max_len):
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


def too_long(src_len: int, tgt_len: int, max_len: int) -> bool:
    """Whether :func:`make_batches` drops a pair for ``max_len``: its source ids, or its target ids
    (``<bos>`` and ``<eos>`` included) less one (the length of ``tgt_in`` and ``tgt_out``), are more
    than ``max_len``."""
    return src_len > max_len or tgt_len - 1 > max_len


def padding_fraction(batches: Iterable[Batch]) -> float:
    """Share of the source and target positions in ``batches`` that are padding."""
    pad = total = 0
    for b in batches:
        pad += int((~b.src_mask).sum()) + int((b.tgt_out == 0).sum())
        total += b.src.numel() + b.tgt_out.numel()
    return pad / max(total, 1)


def random_windows(
    ids: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: ``batch_size`` random windows of ``ids`` (1-D) and the same windows
    shifted by one token, ``(x, y)`` each ``(batch_size, block_size)``; y[b, t] follows x[b, t]."""
    _checks.tensor("ids", ids, floating=False)
    if ids.dim() != 1 or len(ids) <= block_size:
        raise ValueError(
            f"ids must be a 1-D tensor longer than block_size={block_size}, got shape {tuple(ids.shape)}"
        )
    windows = ids.unfold(0, block_size + 1, 1)  # (N - block_size, block_size + 1), a view
    xy = windows[torch.randint(len(windows), (batch_size,), generator=generator)]
    return xy[:, :-1], xy[:, 1:]




@dataclass
class Windows:
    """A language-model batch: windows ``x`` (B, T) and the same windows shifted by one, ``y``."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.x,)

    @property
    def target(self) -> torch.Tensor:
        return self.y

    @property
    def n_tokens(self) -> int:
        return self.y.numel()

    def to(self, device: torch.device | str) -> Windows:
        return Windows(self.x.to(device), self.y.to(device))

    def __len__(self) -> int:
        return self.x.shape[0]


class RandomWindows(Sequence):
    """``steps`` batches of :func:`random_windows`, drawn in order from one seeded generator.

    It behaves like a list of :class:`Windows` (``len``, indexing, iteration) without holding them:
    batch i is drawn when it is asked for, and asking for batches in order gives exactly the draws
    of a loop that calls ``random_windows(ids, block_size, batch_size, generator)`` ``steps``
    times — nanoGPT's ``get_batch``. Skipping ahead (a resumed run) replays the draws in between.
    """

    def __init__(self, ids: torch.Tensor, block_size: int, batch_size: int, steps: int, seed: int = 0) -> None:
        _checks.positive_int("block_size", block_size)
        _checks.positive_int("batch_size", batch_size)
        _checks.positive_int("steps", steps)
        random_windows(ids, block_size, 1)  # validates ids against block_size once, here
        self.ids, self.block_size, self.batch_size = ids, block_size, batch_size
        self.steps, self.seed = steps, seed
        self._generator = torch.Generator().manual_seed(seed)
        self._next = 0  # index of the batch the generator draws next

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.steps))]
        if not -self.steps <= i < self.steps:
            raise IndexError(f"batch {i} of {self.steps}")
        i %= self.steps
        if i < self._next:  # going back: start the draws again
            self._generator.manual_seed(self.seed)
            self._next = 0
        while True:
            x, y = random_windows(self.ids, self.block_size, self.batch_size, self._generator)
            self._next += 1
            if self._next > i:
                return Windows(x, y)
