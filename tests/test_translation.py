"""Tests of translation."""

from __future__ import annotations

import pytest
import torch

from tformer.data.corpus import load_builtin
from tformer.data.text import Vocab, tokenize_en, tokenize_zh
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.recipes.translation import Tokenizers, Translator


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
