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
from functools import cache

import tformer._checks as _checks
from tformer.data.corpus import Pair
from tformer.data.sources import PairList, parse_tsv_lines

FILE = "tatoeba-cmn-eng.tsv.gz"
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
