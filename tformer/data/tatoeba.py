"""Real Chinese→English sentences: the Tatoeba ``cmn-eng`` pairs, shipped inside the package.

27,655 pairs of short everyday sentences written and translated by the volunteers of the Tatoeba
project (tatoeba.org), licensed CC-BY 2.0 FR; every pair keeps its attribution (sentence ids and
authors) in :attr:`~tformer.data.corpus.Pair.attribution`. The file is the widely used ``cmn.txt``
export (``English<TAB>Chinese<TAB>attribution``) minus 1,500 pairs set aside as a test set the
project never sees.

Many English sentences have several Chinese translations and the reverse, so a random split by
line would put one translation of a sentence in training and another in the test set, and the
test would measure memory rather than translation. :func:`tatoeba_splits` therefore joins every
pair that shares a sentence, on either side, into one group and assigns whole groups to a split.
"""

from __future__ import annotations

import gzip
import importlib.resources
import random
import re
from collections.abc import Sequence
from functools import cache

import tformer._checks as _checks
from tformer.data.corpus import Pair
from tformer.data.sources import PairList, parse_tsv_lines

FILE = "tatoeba-cmn-eng.tsv.gz"
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # CJK ideographs (and extension A)
CREDIT = "Tatoeba (tatoeba.org), cmn-eng sentence pairs, CC-BY 2.0 FR; authors in each pair's attribution"


@cache
def _text() -> str:
    with importlib.resources.files("tformer.data").joinpath(FILE).open("rb") as f:
        return gzip.decompress(f.read()).decode("utf-8")


def load_tatoeba() -> PairList:
    """All 27,655 shipped pairs, in the file's order (sorted by English length)."""
    return parse_tsv_lines(_text().splitlines(), FILE)


def _groups(pairs: list[Pair]) -> list[list[int]]:
    """Indices of ``pairs`` joined into groups that share a Chinese or an English sentence."""
    parent = list(range(len(pairs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, p in enumerate(pairs):
        for key in (("zh", p.src), ("en", p.tgt)):
            j = first.setdefault(key, i)
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(pairs)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def tatoeba_splits(seed: int = 0, valid: float = 0.05, test: float = 0.05) -> dict[str, list[Pair]]:
    """Fixed train/valid/test splits of :func:`load_tatoeba` in which no valid or test sentence,
    Chinese or English, appears in train (nor between valid and test).

    Groups of pairs that share a sentence are shuffled with ``seed`` and dealt out until the valid
    and test splits hold about ``valid`` and ``test`` of the pairs; the rest train.
    """
    _checks.integer("seed", seed)
    for name, share in (("valid", valid), ("test", test)):
        _checks.probability(name, share)
    if valid + test >= 1:
        raise ValueError(f"valid={valid} + test={test} must leave something to train on (< 1)")
    pairs = load_tatoeba()
    groups = _groups(pairs)
    random.Random(seed).shuffle(groups)
    want = {"test": test * len(pairs), "valid": valid * len(pairs)}
    out: dict[str, list[Pair]] = {"train": [], "valid": [], "test": []}
    for group in groups:
        split = next((s for s in ("test", "valid") if len(out[s]) < want[s]), "train")
        out[split] += [pairs[i] for i in sorted(group)]
    return out


def check_direction(pairs: Sequence[Pair], name: str = "the data") -> None:
    """Refuse pairs whose columns look swapped: the Chinese in the English column and the reverse.

    A Tatoeba file is ``English<TAB>Chinese<TAB>attribution``; a file written the other way round
    parses just as well, and a model trained on it would learn English→Chinese while every score
    looked plausible. The check counts the pairs whose source (Chinese) side holds no Chinese
    character while their target (English) side does; when those outnumber the pairs the right
    way round, it raises a ``ValueError`` saying so.
    """
    right = wrong = 0
    for p in pairs:
        src, tgt = bool(_HAN.search(p.src)), bool(_HAN.search(p.tgt))
        right += src and not tgt
        wrong += tgt and not src
    if wrong > right:
        raise ValueError(
            f"{name}: the columns look swapped: in {wrong} of {len(pairs)} pairs the first column "
            f"holds Chinese and the second does not (the right way round: {right}); expected "
            "English<TAB>Chinese<TAB>attribution, the order of Tatoeba's cmn.txt"
        )
