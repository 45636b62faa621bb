"""tformer.metrics.paired_bootstrap_bleu: two systems on the same sentences, with an interval."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import sacrebleu
from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from tformer.data.corpus import load_builtin
from tformer.metrics import (
    PairedBootstrap,
    _interval,
    _resample_scores,
    bleu,
    bootstrap_bleu_over_runs,
    paired_bootstrap_bleu,
    sentence_statistics,
)


def _systems(n: int = 200):
    """References (English sentences of the built-in corpus) and two damaged copies: ``a`` loses one
    word in 30% of the sentences, ``b`` in 60%, so ``a`` is better but not on every sentence."""
    refs = [p.tgt for p in load_builtin("train")[:n]]
    rng = random.Random(0)

    def damage(sentence: str, p: float) -> str:
        words = sentence.split()
        if len(words) > 1 and rng.random() < p:
            del words[rng.randrange(len(words))]
        return " ".join(words)

    return refs, [damage(r, 0.3) for r in refs], [damage(r, 0.6) for r in refs]


def test_sentence_statistics_sum_to_sacrebleus_corpus_counts_and_the_score_equals_bleu_exactly():
    # this fails if sacrebleu's per-sentence score stops carrying the counts this module sums
    refs, a, b = _systems()
    stats = sentence_statistics(a, refs)
    assert stats.shape == (len(refs), 10) and stats.dtype == np.int64
    corpus = sacrebleu.corpus_bleu(a, [refs])
    total = stats.sum(0).tolist()
    assert total[:2] == [corpus.sys_len, corpus.ref_len]
    assert total[2:6] == list(corpus.counts) and total[6:] == list(corpus.totals)
    result = paired_bootstrap_bleu(a, b, refs, resamples=10)
    assert result.bleu_a == bleu(a, refs) and result.bleu_b == bleu(b, refs)  # exact, not approx
    assert result.difference == bleu(a, refs) - bleu(b, refs)


def test_identical_systems_differ_by_exactly_zero():
    refs, a, _ = _systems()
    result = paired_bootstrap_bleu(a, list(a), refs, resamples=200)
    assert (result.difference, result.low, result.high, result.share_a_better) == (0.0, 0.0, 0.0, 0.0)
    assert not result.excludes_zero


def test_the_references_beat_a_damaged_system_with_an_interval_above_zero():
    refs, _, bad = _systems()
    result = paired_bootstrap_bleu(refs, bad, refs, resamples=500)
    assert result.bleu_a == pytest.approx(100.0) and result.difference > 0  # 100 up to rounding
    assert 0 < result.low <= result.difference <= result.high
    assert result.excludes_zero and result.share_a_better == 1.0
    flipped = paired_bootstrap_bleu(bad, refs, refs, resamples=500)
    assert flipped.high < 0 and flipped.excludes_zero and flipped.share_a_better == 0.0


def test_hand_computed_two_sentence_case():
    # sentence 1: a is the reference; b gets 3/4 unigrams, 2/3 bigrams, 1/2 trigrams, 0/1 4-grams.
    # sentence 2: both equal the reference (4/4, 3/3, 2/2, 1/1). Equal lengths: no brevity penalty.
    refs = ["the cat sat down", "a dog ran off"]
    a, b = list(refs), ["the cat sat up", "a dog ran off"]
    mixed = 100 * (7 / 8 * 5 / 6 * 3 / 4 * 1 / 2) ** 0.25  # b on {1, 2}: 72.31
    # b on {1, 1}: 6/8, 4/6, 2/4 and 0/2, whose zero becomes 100 / (2 * 2) % ('exp' smoothing):
    # (75 * 66.67 * 50 * 25) ** (1/4) = 50 exactly; b on {2, 2} is 100
    assert bleu(b, refs) == pytest.approx(mixed, abs=1e-9)
    assert bleu(b[:1] * 2, refs[:1] * 2) == pytest.approx(50.0, abs=1e-9)
    result = paired_bootstrap_bleu(a, b, refs, resamples=1000, seed=3)
    assert result.difference == pytest.approx(100 - mixed, abs=1e-9)
    # a resample draws {1,1} (difference 50), {1,2} (27.69) or {2,2} (0) with probability 1/4, 1/2,
    # 1/4: far more than 2.5% of the resamples are {2,2} and far more than 2.5% are {1,1}
    assert (result.low, result.high) == (0.0, pytest.approx(50.0, abs=1e-9))
    assert abs(result.share_a_better - 0.75) < 0.06  # 4.4 binomial standard deviations of 1000 draws


def test_agrees_with_sacrebleus_paired_bootstrap_on_the_same_resamples(monkeypatch):
    # sacrebleu's PairedTest (the engine of `sacrebleu REF -i B A --paired-bs`) draws its resamples
    # with numpy.random.default_rng(SACREBLEU_SEED).choice(n, (resamples, n)) for both systems, as
    # this module does, so both score the very same resamples. It reports each system's mean over the
    # resamples, the half-width of its 95% interval, and a p-value; computed from our resampled
    # scores they must agree up to rounding: sacrebleu sums the statistics in float32 and, under
    # NumPy 2's promotion rules, divides them in float32 too (relative error ~6e-8, i.e. ~5e-6 BLEU
    # at BLEU 80), hence 1e-4 BLEU.
    seed, resamples = 12345, 1000  # more than one chunk of resamples, so the chunked draw is checked
    refs, a, b = _systems()
    monkeypatch.setenv("SACREBLEU_SEED", str(seed))
    _, table = PairedTest([("b", b), ("a", a)], {"BLEU": BLEU()}, [refs], test_type="bs",
                          n_samples=resamples)()
    base, system = table["BLEU"]
    scores_a, scores_b = _resample_scores(sentence_statistics(a, refs), sentence_statistics(b, refs),
                                          resamples, seed)
    for ours, theirs in ((scores_a, system), (scores_b, base)):
        low, high = _interval(ours)
        assert np.mean(ours) == pytest.approx(theirs.mean, abs=1e-4)
        assert (high - low) / 2 == pytest.approx(theirs.ci, abs=1e-4)
    result = paired_bootstrap_bleu(a, b, refs, resamples=resamples, seed=seed)
    assert (result.bleu_a, result.bleu_b) == (system.score, base.score)
    # sacrebleu's p-value: resamples whose |a - b|, centred on its mean, exceeds the observed |a - b|
    spread = np.abs(scores_a - scores_b)
    p = (np.sum(spread - spread.mean() > abs(result.difference)) + 1) / (resamples + 1)
    assert p == pytest.approx(system.p_value, abs=2 / (resamples + 1))
    assert (result.low, result.high) == _interval(scores_a - scores_b)
    assert result.share_a_better == np.mean(scores_a > scores_b)
    assert result.difference > 0 and result.excludes_zero  # a loses words half as often as b


def test_same_seed_same_result_other_seed_other_interval():
    refs, a, b = _systems()
    first = paired_bootstrap_bleu(a, b, refs, resamples=300, seed=7)
    assert paired_bootstrap_bleu(a, b, refs, resamples=300, seed=7) == first
    other = paired_bootstrap_bleu(a, b, refs, resamples=300, seed=8)
    assert other.difference == first.difference
    assert (other.low, other.high, other.share_a_better) != (first.low, first.high, first.share_a_better)
    assert isinstance(first, PairedBootstrap) and (first.resamples, first.seed, first.sentences) == (300, 7, 200)
    with pytest.raises(AttributeError):
        first.low = 0.0  # frozen


@pytest.mark.parametrize("kwargs, error, match", [
    ({"hyps_b": ["a b", "c d"]}, ValueError, r"hyps_a \(1\), hyps_b \(2\) and refs \(1\)"),
    ({"hyps_a": [], "hyps_b": [], "refs": []}, ValueError, "refs is empty"),
    ({"hyps_a": ["a b", 3], "hyps_b": ["a b", "c"], "refs": ["a b", "c"]}, TypeError, r"hyps_a\[1\] must be a str"),
    ({"refs": "a b"}, TypeError, "refs must be a list of strings"),
    ({"hyps_b": [b"a b"]}, TypeError, r"hyps_b\[0\] must be a str"),
    ({"resamples": 0}, ValueError, "resamples=0"),
    ({"resamples": -3}, ValueError, "resamples=-3"),
    ({"resamples": 10.0}, TypeError, "resamples must be an int"),
    ({"seed": -1}, ValueError, "seed=-1"),
])
def test_bad_input_is_refused_naming_the_argument(kwargs, error, match):
    args = {"hyps_a": ["a b"], "hyps_b": ["a c"], "refs": ["a b"]} | kwargs
    with pytest.raises(error, match=match):
        paired_bootstrap_bleu(**args)


def test_one_resample_and_one_sentence_work():
    result = paired_bootstrap_bleu(["a b c d"], ["a b c e"], ["a b c d"], resamples=1)
    assert result.low == result.high == result.difference > 0
    assert not math.isnan(result.share_a_better)


# --------------------------------------------------------------------------- several runs per recipe


def _damaged(refs: list[str], p: float, seed: int) -> list[str]:
    """``refs`` with one word dropped from a share ``p`` of the sentences: a "run" of a recipe."""
    rng = random.Random(seed)
    out = []
    for r in refs:
        words = r.split()
        if len(words) > 1 and rng.random() < p:
            del words[rng.randrange(len(words))]
        out.append(" ".join(words))
    return out


def test_one_run_each_or_identical_runs_is_exactly_the_paired_bootstrap():
    refs, a, b = _systems()
    single = paired_bootstrap_bleu(a, b, refs, resamples=300, seed=4)
    assert bootstrap_bleu_over_runs([a], [b], refs, resamples=300, seed=4) == single
    # three copies of a and two of b: every count scaled alike, so every BLEU and interval the same
    assert bootstrap_bleu_over_runs([a, list(a), list(a)], [b, list(b)], refs, resamples=300, seed=4) == single


def test_a_recipe_scores_the_pool_of_its_runs_and_disagreeing_runs_widen_the_interval():
    refs, _, _ = _systems()
    runs_a = [_damaged(refs, 0.2, seed) for seed in (1, 2, 3)]
    runs_b = [_damaged(refs, 0.5, seed) for seed in (4, 5, 6)]
    result = bootstrap_bleu_over_runs(runs_a, runs_b, refs, resamples=400)
    assert result.bleu_a == bleu([h for run in runs_a for h in run], refs * 3)  # corpus BLEU of the pool
    assert result.bleu_b == bleu([h for run in runs_b for h in run], refs * 3)
    assert result.excludes_zero and result.low > 0  # 20% damaged beats 50%, whatever the draw
    # a recipe whose runs disagree (one perfect, one damaged in 80% of sentences): the interval over
    # runs is much wider than the sentence-only interval of the same pooled translations
    wild = [list(refs), _damaged(refs, 0.8, 7)]
    over_runs = bootstrap_bleu_over_runs(wild, runs_b[:2], refs, resamples=400)
    pooled = paired_bootstrap_bleu(wild[0] + wild[1], runs_b[0] + runs_b[1], refs * 2, resamples=400)
    assert math.isclose(over_runs.difference, pooled.difference)
    assert over_runs.high - over_runs.low > 2 * (pooled.high - pooled.low)


@pytest.mark.parametrize("runs_a, error, match", [
    ([], ValueError, "runs_a must be a non-empty list of runs"),
    ("a b", ValueError, "runs_a must be a non-empty list of runs"),
    ([["x"]], ValueError, r"runs_a\[0\] holds 1 translations but refs holds 2"),
    ([["x", 3]], TypeError, r"runs_a\[0\]\[1\] must be a str"),
])
def test_over_runs_bad_input_names_the_run(runs_a, error, match):
    with pytest.raises(error, match=match):
        bootstrap_bleu_over_runs(runs_a, [["a b", "c d"]], ["a b", "c d"])
