"""BLEU and chrF through sacrebleu (Papineni et al., 2002; Popović, 2015; Post, 2018).

BLEU is the score of Table 2 of the paper.

BLEU is computed over a whole test set (corpus level): clipped n-gram precisions for n = 1..4 are
pooled over all sentences, combined by a geometric mean and multiplied by a brevity penalty.
Averaging per-sentence BLEU gives a different, lower number, so report :func:`bleu`.
We never compute BLEU by hand: sacrebleu fixes the tokenization (``13a``) so scores are comparable.

Two systems scored on the same sentences differ by chance as well as by quality: another sample of
sentences would rank them with another gap. :func:`paired_bootstrap_bleu` measures that spread
(Koehn, 2004): it resamples the sentences with replacement, scores both systems on every resample,
and reports the interval that holds the middle 95% of the differences. When each recipe was
trained several times, :func:`bootstrap_bleu_over_runs` resamples the runs as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sacrebleu
from sacrebleu.metrics import BLEU

from tformer import _checks


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


# corpus_bleu's settings (sacrebleu.corpus_bleu's defaults), so a resample is scored as bleu() scores
_SMOOTHING = {"smooth_method": "exp", "smooth_value": None, "effective_order": False}
_ORDER = 4  # n-grams up to 4 words, as in BLEU (and sacrebleu's default)
# resamples whose counts are summed in one matrix product (bounds the memory: rows x sentences)
_CHUNK = 256


def _strings(name: str, seq: object) -> list[str]:
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
        raise TypeError(f"{name} must be a list of strings (one detokenized sentence each), "
                        f"got {type(seq).__name__}")
    for i, s in enumerate(seq):
        if not isinstance(s, str):
            raise TypeError(f"{name}[{i}] must be a str (a detokenized sentence), got {type(s).__name__} ({s!r})")
    return list(seq)


def sentence_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """BLEU's sufficient statistics of every sentence, an int64 array of shape ``(n, 2 + 2·4)``:
    hypothesis length, reference length, matched n-grams for n = 1..4 (clipped by the reference's
    counts), hypothesis n-grams for n = 1..4. Corpus BLEU is a function of their sums, so the sums
    over any subset of rows give that subset's corpus BLEU.

    They come from sacrebleu's public per-sentence score (``BLEU.sentence_score``, whose result
    carries ``counts``, ``totals``, ``sys_len`` and ``ref_len``), with the tokenization and
    preprocessing of :func:`bleu`; ``effective_order`` only changes that score, not its counts."""
    _check(hypotheses, references)
    metric = BLEU(effective_order=True)  # effective order: no sentence-level warning, same counts
    rows = []
    for hyp, ref in zip(hypotheses, references):
        score = metric.sentence_score(hyp, [ref])
        rows.append([score.sys_len, score.ref_len, *score.counts, *score.totals])
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), 2 + 2 * _ORDER)


def _score(summed: Sequence[int]) -> float:
    """Corpus BLEU of summed :func:`sentence_statistics`, by sacrebleu's ``BLEU.compute_bleu``."""
    values = [int(v) for v in summed]
    return float(BLEU.compute_bleu(correct=values[2:2 + _ORDER], total=values[2 + _ORDER:],
                                   sys_len=values[0], ref_len=values[1], max_ngram_order=_ORDER,
                                   **_SMOOTHING).score)


def _resample_scores(stats_a: np.ndarray, stats_b: np.ndarray, resamples: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Corpus BLEU of both systems on each of ``resamples`` resamples of the sentence indices (the
    same indices for both). Resample r draws n indices with replacement; ``weights[r, i]`` is how
    often sentence i was drawn, so ``weights @ stats`` sums every resample's statistics in one matrix
    product (float64: exact for counts below 2**53). The indices are ``numpy.random.default_rng(seed).choice(n, (resamples, n))``, drawn
    in chunks of rows, which gives the same indices as one draw: those of sacrebleu's own paired
    bootstrap for the same seed.

    ``stats_a`` is ``(n, width)`` for one system, or ``(runs, n, width)`` for a recipe trained
    several times: then each resample also draws the recipe's runs with replacement (from a stream
    of its own, so the sentence indices stay sacrebleu's) and sums the drawn runs' statistics. One
    run draws only itself, which is the one-system case exactly."""
    stacks = [np.asarray(x, dtype=np.float64).reshape(-1, *np.shape(x)[-2:]) for x in (stats_a, stats_b)]
    scores = [np.empty(resamples) for _ in stacks]
    n, rng, run_rng = stacks[0].shape[1], np.random.default_rng(seed), np.random.default_rng([seed, 1])
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        idx = rng.choice(n, size=(rows, n), replace=True)
        weights = np.bincount((idx + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n)
        weights = weights.reshape(rows, n).astype(np.float64)
        for out, stats in zip(scores, stacks):
            per_run = np.einsum("rn,knw->rkw", weights, stats)  # each run's statistics on each resample
            picks = run_rng.integers(len(stats), size=(rows, len(stats)))
            summed = np.rint(np.take_along_axis(per_run, picks[:, :, None], axis=1).sum(1)).astype(np.int64)
            for r in range(rows):
                out[start + r] = _score(summed[r])
    return scores[0], scores[1]


def _interval(values: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of ``values`` as order statistics: the (k+1)-th smallest and
    the (k+1)-th largest with k = len // 40, sacrebleu's rule (resamples 25 and 974 of 1000)."""
    ordered = np.sort(values)
    k = len(ordered) // 40
    return float(ordered[k]), float(ordered[len(ordered) - k - 1])


@dataclass(frozen=True)
class PairedBootstrap:
    """The result of :func:`paired_bootstrap_bleu` or :func:`bootstrap_bleu_over_runs`: BLEU of both
    systems on all sentences, their difference ``bleu_a - bleu_b``, the 95% interval ``[low, high]``
    of that difference over the resamples, and the share of resamples on which a scored higher than
    b."""

    bleu_a: float
    bleu_b: float
    difference: float
    low: float
    high: float
    share_a_better: float
    sentences: int
    resamples: int
    seed: int

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0: the sign of the difference is more
        than the noise of the sample of sentences."""
        return self.low > 0 or self.high < 0


def _check_draws(refs: list[str], resamples: int, seed: int) -> None:
    if not refs:
        raise ValueError("refs is empty; the bootstrap needs at least one sentence")
    _checks.positive_int("resamples", resamples)
    _checks.integer("seed", seed, minimum=0)


def _compare(stats_a: np.ndarray, stats_b: np.ndarray, resamples: int, seed: int) -> PairedBootstrap:
    """:class:`PairedBootstrap` of two systems' int64 :func:`sentence_statistics`, ``(n, width)``
    each or ``(runs, n, width)`` for recipes trained several times (see :func:`_resample_scores`).
    A system's BLEU is that of all its statistics summed: of all its runs' translations together."""
    bleu_a, bleu_b = (_score(s.reshape(-1, s.shape[-1]).sum(0)) for s in (stats_a, stats_b))
    scores_a, scores_b = _resample_scores(stats_a, stats_b, resamples, seed)
    low, high = _interval(scores_a - scores_b)
    return PairedBootstrap(bleu_a=bleu_a, bleu_b=bleu_b, difference=bleu_a - bleu_b, low=low, high=high,
                           share_a_better=float(np.mean(scores_a > scores_b)), sentences=stats_a.shape[-2],
                           resamples=resamples, seed=seed)


def paired_bootstrap_bleu(hyps_a: Sequence[str], hyps_b: Sequence[str], refs: Sequence[str],
                          resamples: int = 1000, seed: int = 0) -> PairedBootstrap:
    """Compare two systems' translations of the same sentences by paired bootstrap resampling
    (Koehn, 2004).

    Each resample draws ``len(refs)`` sentence indices with replacement and scores BOTH systems on
    those same sentences by corpus BLEU, so the spread measures the difference between the systems,
    not each system's own spread (which is larger: a hard sample of sentences lowers both). The
    interval holds the middle 95% of the resampled differences; when it excludes 0, the sign of the
    difference would hold on most other samples of such sentences. It says nothing about other
    training seeds: a second run of the same recipe is another source of noise.

    ``bleu_a`` and ``bleu_b`` equal :func:`bleu` of each system exactly. The indices are those of
    sacrebleu's paired bootstrap (``sacrebleu -i A B --paired-bs``) for the same seed, and
    ``resamples`` of 1000 on 1,500 sentences take well under a second."""
    hyps_a, hyps_b, refs = _strings("hyps_a", hyps_a), _strings("hyps_b", hyps_b), _strings("refs", refs)
    if not len(hyps_a) == len(hyps_b) == len(refs):
        raise ValueError(f"hyps_a ({len(hyps_a)}), hyps_b ({len(hyps_b)}) and refs ({len(refs)}) must "
                         "have the same length: both systems translate the same sentences")
    _check_draws(refs, resamples, seed)
    return _compare(sentence_statistics(hyps_a, refs), sentence_statistics(hyps_b, refs), resamples, seed)


def bootstrap_bleu_over_runs(runs_a: Sequence[Sequence[str]], runs_b: Sequence[Sequence[str]],
                             refs: Sequence[str], resamples: int = 1000, seed: int = 0) -> PairedBootstrap:
    """Compare two recipes, each trained several times (seeds), on the same sentences: a bootstrap
    over sentences *and* runs.

    ``runs_a`` holds the translations of ``refs`` by each run of recipe a (likewise ``runs_b``).
    A recipe's BLEU is corpus BLEU of all its runs' translations together. Each resample draws the
    sentence indices as :func:`paired_bootstrap_bleu` does (the same for both recipes), and also
    draws each recipe's runs with replacement, so the interval widens when the runs of a recipe
    disagree: it covers another sample of sentences and another draw of training runs. With a few
    runs per recipe the second part is coarse (three runs give three values to draw from).

    One run each gives exactly :func:`paired_bootstrap_bleu`; so do several identical runs (BLEU
    of the summed statistics does not change when every count is multiplied by the same number)."""
    refs = _strings("refs", refs)
    _check_draws(refs, resamples, seed)
    stats = []
    for name, runs in (("runs_a", runs_a), ("runs_b", runs_b)):
        if isinstance(runs, (str, bytes)) or not isinstance(runs, Sequence) or not runs:
            raise ValueError(f"{name} must be a non-empty list of runs, each a list of translations; "
                             f"got {type(runs).__name__}")
        hyps = [_strings(f"{name}[{i}]", run) for i, run in enumerate(runs)]
        for i, run in enumerate(hyps):
            if len(run) != len(refs):
                raise ValueError(f"{name}[{i}] holds {len(run)} translations but refs holds {len(refs)}: "
                                 "every run translates the same sentences")
        stats.append(np.stack([sentence_statistics(run, refs) for run in hyps]))
    return _compare(stats[0], stats[1], resamples, seed)
