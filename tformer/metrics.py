"""BLEU and chrF through sacrebleu (Papineni et al., 2002; Popović, 2015; Post, 2018).

BLEU is the score of Table 2 of the paper.

BLEU is computed over a whole test set (corpus level): clipped n-gram precisions for n = 1..4 are
pooled over all sentences, combined by a geometric mean and multiplied by a brevity penalty.
Averaging per-sentence BLEU gives a different, lower number, so report :func:`bleu`.
We never compute BLEU by hand: sacrebleu fixes the tokenization (``13a``) so scores are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    for name, seq in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(seq, str) or not all(isinstance(s, str) for s in seq):
            raise TypeError(f"{name} must be a list of strings (one detokenized sentence each)")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses ({len(hypotheses)}) and references ({len(references)}) must have the same length"
        )
    if len(hypotheses) == 0:
        raise ValueError("hypotheses and references are empty; BLEU needs at least one sentence")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> sacrebleu.metrics.bleu.BLEUScore:
    """The full sacrebleu result (``.score``, ``.precisions``, ``.bp``, ...) for one reference each."""
    _check(hypotheses, references)
    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)])


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus-level BLEU in [0, 100] of detokenized ``hypotheses`` against one reference each."""
    return float(corpus_bleu(hypotheses, references).score)


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """BLEU of one sentence (smoothed, as sacrebleu does); for error analysis, not for reporting."""
    _check([hypothesis], [reference])
    return float(sacrebleu.sentence_bleu(hypothesis, [reference]).score)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus-level chrF in [0, 100] (Popović, 2015): the F-score (β = 2) of character n-grams up to
    6, through sacrebleu. It gives partial credit to a word with the right stem, so it moves more
    smoothly than BLEU on short sentences; report it beside BLEU."""
    _check(hypotheses, references)
    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)
