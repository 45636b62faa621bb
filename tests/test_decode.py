"""Greedy decoding, beam search, cross-attention maps, the Translator and BLEU."""

from __future__ import annotations

import itertools
import math

import pytest
import sacrebleu
import torch

from tformer.data.corpus import load_builtin
from tformer.data.text import Vocab, tokenize_en, tokenize_zh
from tformer.inference.attention_maps import cross_attention
from tformer.inference.generation import beam_search, greedy_decode, length_penalty
from tformer.metrics import bleu, corpus_bleu, sentence_bleu
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.recipes.translation import Tokenizers, Translator


def _model(V: int = 23, seed: int = 0, max_len: int = 32) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(19, V, d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                            dim_feedforward=64, dropout=0.1, max_len=max_len)
    model = Transformer(cfg)
    with torch.no_grad():  # spread the untrained model's preferences so decoding is not trivial
        model.generator.bias.normal_(0, 2.0)
    return model.eval()


def _src(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 19, (4, 7), generator=g)
    src[1, 5:] = 0
    src[3, 2:] = 0
    return src


def _finished(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


def test_greedy_with_kv_cache_equals_greedy_without_cache():
    model, src = _model(), _src()
    for eos in (2, 5, 7):
        a = greedy_decode(model, src, max_len=12, eos_id=eos)
        b = greedy_decode(model, src, max_len=12, eos_id=eos, use_cache=False)
        assert torch.equal(a, b)


def test_greedy_pads_after_eos_and_strips_bos():
    model, src = _model(), _src()
    out = greedy_decode(model, src, max_len=15, eos_id=5)
    for row in out.tolist():
        if 5 in row:
            assert all(t == 0 for t in row[row.index(5) + 1 :])
    # the first generated token is the argmax after <bos>, never <bos> itself
    memory = model.encode(src)
    first = model.decode(torch.full((4, 1), 1), memory, model.make_src_mask(src))[:, -1].argmax(-1)
    assert torch.equal(out[:, 0], first)


def test_beam_size_one_is_greedy_decoding():
    model, src = _model(), _src()
    for eos, alpha in ((2, 0.6), (5, 0.0), (6, 1.0)):
        g = greedy_decode(model, src, max_len=10, eos_id=eos)
        b = beam_search(model, src, beam_size=1, max_len=10, eos_id=eos, alpha=alpha)
        assert torch.equal(g, b)


def _logprob(model, src, seq, eos):
    """Sum of log p(y_t | y_<t, x) of ``seq`` (list of ids, no <bos>) under teacher forcing."""
    tgt_in = torch.tensor([[1] + seq[:-1]])
    logp = torch.log_softmax(model(src[None], tgt_in).float(), dim=-1)[0]
    return sum(logp[t, y].item() for t, y in enumerate(seq))


def test_wide_beam_search_finds_the_exact_best_sequence_by_brute_force():
    # V = 5 target tokens, at most 3 steps: a beam of 25 ≥ V² keeps every prefix, so it is exact.
    model = _model(V=5, seed=3)
    src = _src()[0]
    eos, L, alpha = 2, 3, 0.6
    best, best_score = None, -math.inf
    for n in range(1, L + 1):
        seqs = [list(s) for s in itertools.product(range(5), repeat=n)
                if eos not in s[:-1] and (n == L or s[-1] == eos)]  # eos ends a hypothesis
        ys = torch.tensor(seqs)  # (N, n), scored in one batch with teacher forcing
        tgt_in = torch.cat([torch.ones(len(seqs), 1, dtype=torch.long), ys[:, :-1]], dim=1)
        with torch.no_grad():
            logp = torch.log_softmax(model(src.expand(len(seqs), -1), tgt_in), dim=-1)
        scores = logp.gather(-1, ys[..., None]).squeeze(-1).sum(-1) / ((5 + n) / 6) ** alpha
        i = int(scores.argmax())
        if scores[i] > best_score:
            best, best_score = seqs[i], scores[i].item()
    got = beam_search(model, src[None], beam_size=25, max_len=L, eos_id=eos, alpha=alpha)[0].tolist()
    assert _finished(got, eos) == best


def test_beam_search_scores_at_least_as_well_as_greedy_here():
    model, src = _model(seed=4), _src(2)
    g = greedy_decode(model, src, max_len=8, eos_id=3)
    b = beam_search(model, src, beam_size=4, max_len=8, eos_id=3, alpha=0.0)
    for i in range(src.shape[0]):
        sg = _logprob(model, src[i], _finished(g[i].tolist(), 3), 3)
        sb = _logprob(model, src[i], _finished(b[i].tolist(), 3), 3)
        assert sb >= sg - 1e-4


def test_length_penalty_values_by_hand():
    lp = length_penalty(torch.tensor([1, 7]), 0.6)
    torch.testing.assert_close(lp, torch.tensor([1.0, 2.0**0.6]))
    assert length_penalty(torch.tensor([9]), 0.0).item() == 1.0


def test_decoding_rejects_bad_arguments():
    model, src = _model(max_len=16), _src()
    with pytest.raises(ValueError, match="max_len=40 exceeds"):
        greedy_decode(model, src, max_len=40)
    with pytest.raises(TypeError, match="integer token ids"):
        greedy_decode(model, src.float())
    with pytest.raises(ValueError, match="beam_size=0"):
        beam_search(model, src, beam_size=0)


def test_cross_attention_rows_are_distributions_over_real_source_tokens():
    model, src = _model(), _src()
    tgt_in = torch.tensor([[1, 4, 5, 6]] * 4)
    w = cross_attention(model, src, tgt_in)
    assert w.shape == (4, 4, 4, 7)  # (B, h, T, S)
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 4, 4))
    assert (w[1, :, :, 5:] == 0).all() and (w[3, :, :, 2:] == 0).all()
    assert not model.decoder.layers[-1].cross_attn.keep_weights  # switched back off


# ----------------------------------------------------------------------------- Translator


@pytest.fixture(scope="module")
def translator() -> Translator:
    pairs = load_builtin("train")[:50]
    sv = Vocab.build([tokenize_zh(p.src) for p in pairs])
    tv = Vocab.build([tokenize_en(p.tgt) for p in pairs])
    torch.manual_seed(0)
    cfg = TransformerConfig(len(sv), len(tv), d_model=16, num_heads=2, num_encoder_layers=1,
                            num_decoder_layers=1, dim_feedforward=32, max_len=24)
    return Translator(Transformer(cfg), Tokenizers("word", sv, tv), device="cpu")


def test_translator_maps_unknown_characters_to_unk_instead_of_crashing(translator):
    known = load_builtin("train")[0].src[:3]
    src = translator.encode([known + "龘龘"])
    assert (src == translator.src_vocab.unk_id).sum() == 2
    out = translator.translate([known + "龘龘", "他"], beam_size=2)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)


def test_translator_rejects_empty_and_too_long_sentences(translator):
    with pytest.raises(ValueError, match="is empty"):
        translator.translate(["我", "  "])
    with pytest.raises(ValueError, match="max_len is 24"):
        translator.translate("我" * 30)
    with pytest.raises(ValueError, match="sentences is empty"):
        translator.translate([])
    with pytest.raises(TypeError, match="must be a str"):
        translator.translate([3])


def test_alignment_returns_one_row_per_target_token(translator):
    w, src_tokens, tgt_tokens = translator.alignment("我买了书", "I bought books .")
    assert src_tokens == ["我", "买", "了", "书"]
    assert tgt_tokens[-1] == "<eos>" and w.shape == (len(tgt_tokens), 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(len(tgt_tokens)))


# ----------------------------------------------------------------------------- BLEU


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
