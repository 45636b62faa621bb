"""Beam search at the length cap: a hypothesis still open at ``max_len`` never paid for an ending,
so it must not beat a finished translation; it is returned only when nothing finished. The model is
a hand-built probability table: the next-token distribution depends only on the last token."""

from __future__ import annotations

import itertools
import math

import torch
from helpers import StepTable, padded_src, small_transformer

from tformer.inference.generation import beam_search
from tformer.masks import causal_mask

PAD, BOS, EOS, A, B = 0, 1, 2, 3, 4
V = 5


def TableModel(table: dict[int, dict[int, float]], max_len: int = 16) -> StepTable:
    """The next-token distribution depends only on the last token: one table for every position."""
    return StepTable([table], V=V, max_len=max_len)


def test_an_open_hypothesis_at_the_cap_cannot_beat_a_finished_one():
    # after <bos>: "a" 0.55, "b" 0.45; "a" repeats itself (0.95) and rarely ends (0.05); "b" ends (0.9).
    model = TableModel({BOS: {A: 0.55, B: 0.45}, A: {A: 0.95, EOS: 0.05}, B: {EOS: 0.9, B: 0.1}})
    src = torch.tensor([[5, 6]])
    # by hand, beam 2, α = 0: step 1 keeps [a] .55, [b] .45 open; step 2's four best candidates
    # are [a a] .5225, [b <eos>] .405, [b b] .045, [a <eos>] .0275: [b <eos>] and [a <eos>] finish,
    # [a a] (which could still beat them) and [b b] stay open; step 3, the cap, ends with [a a a]
    # .496 open. [a a a] scores higher only because it never paid for ending: [b <eos>] wins.
    out = beam_search(model, src, beam_size=2, max_len=3, alpha=0.0, bos_id=BOS, eos_id=EOS)
    assert out.tolist() == [[B, EOS, PAD]]
    # with room to end naturally, the same table gives the same answer
    out = beam_search(model, src, beam_size=2, max_len=10, alpha=0.0, bos_id=BOS, eos_id=EOS)
    assert out[0, :2].tolist() == [B, EOS]


def test_a_finished_hypothesis_wins_even_with_a_much_lower_score():
    # step 2 (the cap) keeps [a a] .588 (open) and [b <eos>] .24 (finished): the finished one wins.
    model = TableModel({BOS: {A: 0.6, B: 0.4}, A: {A: 0.98, EOS: 0.02}, B: {EOS: 0.6, B: 0.4}})
    out = beam_search(model, torch.tensor([[5]]), beam_size=2, max_len=2, alpha=0.0, bos_id=BOS, eos_id=EOS)
    assert out.tolist() == [[B, EOS]]


def test_when_nothing_finishes_the_best_open_hypothesis_is_returned():
    # <eos> (1e-12) ranks below every other token, so it never enters the 2k = 4 best candidates:
    # nothing finishes (with V = 5, a beam of 3 would rank every candidate of step 1, <eos> too)
    model = TableModel({BOS: {A: 0.7, B: 0.3, EOS: 1e-12}, A: {A: 0.8, B: 0.2, EOS: 1e-12},
                        B: {A: 0.6, B: 0.4, EOS: 1e-12}})
    src = torch.tensor([[5], [6]])
    for max_len in (1, 2, 5):
        out = beam_search(model, src, beam_size=2, max_len=max_len, alpha=0.6, bos_id=BOS, eos_id=EOS)
        assert out.tolist() == [[A] * max_len] * 2  # the most probable path, cut at the cap


def test_sentences_of_a_batch_are_decided_independently():
    # row 0 finishes ([b <eos>]), row 1's table is the same but its beam of 1 can only keep [a a]
    model = TableModel({BOS: {A: 0.6, B: 0.4}, A: {A: 0.98, EOS: 0.02}, B: {EOS: 0.6, B: 0.4}})
    src = torch.tensor([[5], [6]])
    wide = beam_search(model, src, beam_size=2, max_len=2, alpha=0.0, bos_id=BOS, eos_id=EOS)
    narrow = beam_search(model, src, beam_size=1, max_len=2, alpha=0.0, bos_id=BOS, eos_id=EOS)
    assert wide.tolist() == [[B, EOS], [B, EOS]]
    assert narrow.tolist() == [[A, A], [A, A]]  # beam 1 is greedy: nothing finished, keep the open one


def test_a_beam_wide_enough_for_every_candidate_finds_the_best_finished_sentence():
    # V = 5, cap L = 3: a beam of 125 = V³ keeps every candidate, so the search is exact over the
    # sentences that end with <eos>. Token 0 is <pad>, which the beam may emit like any other
    # token: score with a causal mask only.
    model = small_transformer(V=5, seed=3)
    src = padded_src()[0]
    eos, L, alpha = 2, 3, 0.6
    best, best_score = None, -math.inf
    for n in range(1, L + 1):
        seqs = [list(s) + [eos] for s in itertools.product([t for t in range(5) if t != eos], repeat=n - 1)]
        ys = torch.tensor(seqs)
        tgt_in = torch.cat([torch.ones(len(seqs), 1, dtype=torch.long), ys[:, :-1]], dim=1)
        with torch.no_grad():
            causal = causal_mask(n)[None, None]
            logp = torch.log_softmax(model(src.expand(len(seqs), -1), tgt_in, tgt_mask=causal), dim=-1)
        scores = logp.gather(-1, ys[..., None]).squeeze(-1).sum(-1) / ((5 + n) / 6) ** alpha
        i = int(scores.argmax())
        if scores[i] > best_score:
            best, best_score = seqs[i], scores[i].item()
    got = beam_search(model, src[None], beam_size=125, max_len=L, eos_id=eos, alpha=alpha)[0].tolist()
    assert got[: got.index(eos) + 1] == best
