"""tformer.metrics: BLEU through sacrebleu."""

from __future__ import annotations

import pytest
import sacrebleu

from tformer.metrics import bleu, corpus_bleu, sentence_bleu


def test_bleu_is_sacrebleu_corpus_bleu():
    hyps = ["I bought three books in Beijing yesterday.", "He reads a book."]
    refs = ["I bought three books in Beijing yesterday.", "She reads books every day."]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert bleu(refs, refs) == pytest.approx(100.0)
    assert 0 < bleu(hyps, refs) < 100
    assert corpus_bleu(hyps, refs).bp <= 1.0
    assert sentence_bleu(hyps[0], refs[0]) == pytest.approx(100.0)


def test_bleu_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="same length"):
        bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        bleu([], [])
    with pytest.raises(TypeError, match="list of strings"):
        bleu("a b c", "a b c")


def test_chrf_matches_sacrebleu_and_checks_its_input():
    import sacrebleu

    from tformer.metrics import chrf

    hyps, refs = ["He apologized.", "the cat sat"], ["He apologised.", "the cat sat on the mat"]
    assert chrf(refs, refs) == 100.0
    assert chrf(hyps, refs) == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert 0 < chrf(hyps, refs) < 100
    with pytest.raises(ValueError, match="same length"):
        chrf(hyps, refs[:1])
