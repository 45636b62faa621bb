"""Beam search keeps what it finished: finished hypotheses are set apart from the k open ones, the
search stops when no open hypothesis can beat the best finished one, and the best finished one is
returned. The models are hand-built tables: the next-token distribution depends on the position
and the last token only, so every sentence's score can be computed exactly."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import StepTable, padded_src, small_transformer

from tformer.inference.generation import beam_search, greedy_decode

PAD, BOS, EOS, A, B, C = 0, 1, 2, 3, 4, 5


def lp(n: int, alpha: float) -> float:
    return ((5 + n) / 6) ** alpha


def decode(model, beam, max_len, alpha, n=1):
    out = beam_search(model, torch.full((n, 1), 7), beam_size=beam, max_len=max_len, alpha=alpha,
                      bos_id=BOS, eos_id=EOS)
    return [tuple(row[: row.index(EOS) + 1]) if EOS in row else tuple(row) for row in out.tolist()]


# --------------------------------------------------------------------------- the issue's toy model

ISSUE_TABLE = [{BOS: {A: 0.9, B: 0.1}, A: {A: 0.5, C: 0.5}, C: {A: 0.5, C: 0.5}, B: {EOS: 1.0}}]


@pytest.mark.parametrize("max_len", [3, 10])
def test_a_finished_hypothesis_pushed_out_of_the_top_k_is_still_returned(max_len):
    # beam 2, α 0: at step 2 [B <eos>] (log .1 = -2.30) ranks below [A A] and [A C] (log .45 each);
    # it is set apart as finished, the open beams decay by log .5 a step and can never beat it.
    model = StepTable(ISSUE_TABLE)
    out = beam_search(model, torch.tensor([[7, 8]]), beam_size=2, max_len=max_len, alpha=0.0,
                      bos_id=BOS, eos_id=EOS)
    assert out[0, :2].tolist() == [B, EOS]
    assert (out[0, 2:] == PAD).all()


def test_the_search_stops_once_no_open_hypothesis_can_beat_the_best_finished_one():
    # after step 4 the open hypotheses have log(.9 · .5³) = -2.18 > -2.30: still possible; after
    # step 5, log(.9 · .5⁴) = -2.88 < -2.30: done, so 5 steps are run (T = 5) even with max_len 12.
    model = StepTable(ISSUE_TABLE)
    out = beam_search(model, torch.tensor([[7]]), beam_size=2, max_len=12, alpha=0.0, bos_id=BOS, eos_id=EOS)
    assert out.shape == (1, 5)


def test_with_a_length_penalty_the_bound_divides_by_the_penalty_of_max_len():
    # α = 1: the open hypothesis log(.9 · .5^(t-1)) may still end at max_len and be divided by
    # lp(max_len) = (5 + max_len) / 6, so the search runs longer than with α = 0.
    model = StepTable(ISSUE_TABLE)
    alpha, max_len = 1.0, 12
    best = math.log(0.1) / lp(2, alpha)
    # the first t after which log(.9 · .5^(t-1)) / lp(max_len) <= best: the number of steps run
    t = next(t for t in range(1, max_len + 1) if math.log(0.9 * 0.5 ** (t - 1)) / lp(max_len, alpha) <= best)
    out = beam_search(model, torch.tensor([[7]]), beam_size=2, max_len=max_len, alpha=alpha,
                      bos_id=BOS, eos_id=EOS)
    assert out.shape == (1, t) and t > 5
    assert out[0, :2].tolist() == [B, EOS]


# --------------------------------------------------------------------------- fairseq-style cases


def test_the_best_sentence_is_found_only_because_a_finished_one_is_kept():
    # step 1: A .6, <eos> .25, C .15 → [<eos>] finishes (log .25 = -1.39); step 2: [A A] and [A C]
    # (.3 each, -1.20) take the two open slots; from then on every step halves them.
    model = StepTable([{BOS: {A: 0.6, EOS: 0.25, C: 0.15}}, {A: {A: 0.5, C: 0.5}, C: {A: 0.5, C: 0.5}}])
    for max_len in (2, 3, 8):
        assert decode(model, 2, max_len, 0.0) == [(EOS,)]


def test_the_length_penalty_changes_the_winner():
    # [B <eos>]: log .4 = -0.916 at length 2; [A A A <eos>]: log(.6 · .6) = -1.022 at length 4.
    # α = 0: the short one wins and, after step 2, the open [A A] (-1.022) cannot beat it: done.
    # α = 1: -0.916 / (7/6) = -0.785 < -1.022 / (9/6) = -0.681: the long one wins.
    model = StepTable([
        {BOS: {A: 0.6, B: 0.4}},
        {A: {A: 0.6, C: 0.4}, B: {EOS: 1.0}},
        {A: {A: 1.0}, C: {C: 1.0}},
        {A: {EOS: 1.0}, C: {C: 1.0}},
    ])
    assert decode(model, 2, 6, 0.0) == [(B, EOS)]
    assert decode(model, 2, 6, 1.0) == [(A, A, A, EOS)]
    assert decode(model, 2, 3, 1.0) == [(B, EOS)]  # the long one does not fit under max_len = 3


def test_beam_two_keeps_an_eos_that_greedy_decoding_passes_over():
    # step 1 ranks A .6 first, <eos> .4 second. Beams 2 and 3 keep [<eos>] as finished and the
    # open [A B] (.36) cannot beat it; beam 1 is greedy decoding: it follows A to [A B <eos>].
    model = StepTable([{BOS: {A: 0.6, EOS: 0.4}}, {A: {EOS: 0.3, B: 0.6, C: 0.1}, B: {EOS: 1.0}}])
    assert decode(model, 2, 4, 0.0) == [(EOS,)]
    assert decode(model, 3, 4, 0.0) == [(EOS,)]
    assert decode(model, 1, 4, 0.0) == [(A, B, EOS)]


# --------------------------------------------------------------------------- against exhaustive search


def reference_beam(model: StepTable, k: int, max_len: int, alpha: float):
    """The documented algorithm, one sentence, plain Python: returns the result and every finished
    hypothesis it found, as ``(tokens, penalised score)``. Beam 1 is greedy decoding."""
    if k == 1:
        seq = ()
        while len(seq) < max_len and (not seq or seq[-1] != EOS):
            seq += (int(model.table(len(seq))[seq[-1] if seq else BOS].argmax()),)
        return seq, ([(seq, model.logprob(seq) / lp(len(seq), alpha))] if seq[-1] == EOS else [])
    V = model.config.tgt_vocab_size
    beams, finished, counted = [((), 0.0)], [], 0
    for t in range(max_len):
        cands = [(seq + (tok,), s + model.logprob(seq + (tok,)) - model.logprob(seq))
                 for seq, s in beams for tok in range(V)]
        cands = sorted(cands, key=lambda c: -c[1])[: 2 * k]
        finished += [(seq, s / lp(t + 1, alpha)) for seq, s in cands if seq[-1] == EOS and s > -math.inf]
        counted += sum(seq[-1] == EOS for seq, _ in cands[:k])  # fairseq's count: ranked within k
        beams = [(seq, s) for seq, s in cands if seq[-1] != EOS][:k]
        if t + 1 == max_len:
            break
        best = max((s for _, s in finished), default=-math.inf)
        if counted >= k or best >= max(s for _, s in beams) / lp(max_len, alpha):
            break
    if finished:
        return max(finished, key=lambda f: f[1])[0], finished
    return max(beams, key=lambda b: b[1])[0], finished


def exhaustive_best(model: StepTable, max_len: int, alpha: float):
    """The best finished sentence of at most ``max_len`` tokens over every possible sequence."""
    V = model.config.tgt_vocab_size
    best, best_score = None, -math.inf
    for n in range(1, max_len + 1):
        for body in itertools.product([t for t in range(V) if t != EOS], repeat=n - 1):
            seq = body + (EOS,)
            score = model.logprob(seq) / lp(n, alpha)
            if score > best_score:
                best, best_score = seq, score
    return best, best_score


def random_table(seed: int, V: int = 5, positions: int = 4) -> StepTable:
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(positions, V, V, generator=gen, dtype=torch.float64)
    return StepTable(torch.softmax(logits, dim=-1), V=V)


def test_never_returns_an_open_or_worse_hypothesis_when_a_better_finished_one_was_found():
    for seed in range(30):
        model = random_table(seed)
        for max_len, alpha in itertools.product((1, 3, 5), (0.0, 0.6, 1.5)):
            optimum = exhaustive_best(model, max_len, alpha)[1]
            for k in (1, 2, 3):
                got = decode(model, k, max_len, alpha)[0]
                want, found = reference_beam(model, k, max_len, alpha)
                assert got == want, (seed, k, max_len, alpha)
                if found:  # a finished hypothesis was found: the result is finished, the best of them
                    assert got[-1] == EOS
                    score = model.logprob(got) / lp(len(got), alpha)
                    assert score >= max(s for _, s in found) - 1e-9
                    assert score <= optimum + 1e-9


def test_a_beam_that_holds_every_candidate_finds_the_exhaustive_optimum():
    V, max_len = 4, 4
    for seed in range(8):
        model = random_table(100 + seed, V=V)
        for alpha in (0.0, 0.6, 2.0):
            want, _ = exhaustive_best(model, max_len, alpha)
            assert decode(model, V**max_len, max_len, alpha)[0] == want, (seed, alpha)


# --------------------------------------------------------------------------- batches and greedy


def test_beam_size_one_is_greedy_decoding_on_tables_and_transformers():
    for seed in range(20):
        model = random_table(200 + seed)
        for alpha in (0.0, 0.6, 2.0):
            src = torch.full((1, 1), 7)
            g = greedy_decode(model, src, max_len=6, bos_id=BOS, eos_id=EOS)
            b = beam_search(model, src, beam_size=1, max_len=6, alpha=alpha, bos_id=BOS, eos_id=EOS)
            assert torch.equal(g, b)
    for seed in (0, 1, 2):
        model, src = small_transformer(seed=seed), padded_src(seed)
        for eos, alpha in ((2, 0.6), (5, 0.0), (6, 2.0)):
            g = greedy_decode(model, src, max_len=10, eos_id=eos)
            assert torch.equal(g, beam_search(model, src, beam_size=1, max_len=10, eos_id=eos, alpha=alpha))


def test_each_sentence_of_a_batch_gets_what_it_would_get_alone():
    def trim(row: list[int], eos: int) -> list[int]:
        return row[: row.index(eos) + 1] if eos in row else row

    for seed in (0, 3):
        model, src = small_transformer(seed=seed), padded_src(seed)
        for k, eos, alpha in ((2, 3, 0.6), (4, 5, 0.0), (3, 2, 1.0)):
            batch = beam_search(model, src, beam_size=k, max_len=9, eos_id=eos, alpha=alpha)
            for i in range(src.shape[0]):
                alone = beam_search(model, src[i : i + 1], beam_size=k, max_len=9, eos_id=eos, alpha=alpha)
                assert trim(batch[i].tolist(), eos) == trim(alone[0].tolist(), eos)
    # the same for tables, where every sentence runs the same distribution: identical rows
    model = StepTable(ISSUE_TABLE)
    assert decode(model, 2, 10, 0.0, n=3) == [(B, EOS)] * 3


def test_a_negative_length_penalty_is_rejected():
    with pytest.raises(ValueError, match=r"alpha=-0.5 must be a finite length-penalty exponent >= 0"):
        beam_search(StepTable(ISSUE_TABLE), torch.tensor([[7]]), alpha=-0.5, bos_id=BOS, eos_id=EOS)
