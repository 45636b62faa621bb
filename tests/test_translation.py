"""tformer.recipes.translation: tokenizers of the language pair, settings, the Translator."""

from __future__ import annotations

import pytest
import torch

from tformer.data.corpus import load_builtin
from tformer.data.text import Vocab, tokenize_en, tokenize_zh
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.recipes.translation import Settings, Tokenizers, Translator
from tformer.training.checkpoint import save_checkpoint


class _Tiny(torch.nn.Module):
    """The smallest model with a config, for checkpoints that only carry tokenizer files."""

    class config:  # noqa: N801
        @staticmethod
        def to_dict() -> dict:
            return {}

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


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


def test_tokenizers_save_and_load_both_kinds_and_refuse_an_unknown_kind(tmp_path):
    pairs = load_builtin("train")[:200]
    for kind in ("word", "bpe"):
        tok = Tokenizers.build(pairs, kind, bpe_vocab_size=300)
        folder = tmp_path / kind
        save_checkpoint(folder, _Tiny(), files=tok.files())
        back = Tokenizers.load(folder, kind)
        sentence = pairs[3].tgt
        assert back.kind == kind and back.src_vocab == tok.src_vocab and back.tgt_vocab == tok.tgt_vocab
        assert back.tokenize_tgt(sentence) == tok.tokenize_tgt(sentence)
        assert back.detokenize_tgt(back.tokenize_tgt(sentence)) == sentence
    assert not (tmp_path / "word" / "tgt_tokenizer.json").exists()
    with pytest.raises(ValueError, match="tokenizer='char' must be one of"):
        Tokenizers.build(pairs, "char")
    with pytest.raises(ValueError, match="unsupported tokenizer 'char'"):
        Tokenizers.load(tmp_path / "word", "char")


def test_settings_check_the_model_sizes_once_through_transformer_config():
    s = Settings(model={"d_model": 64, "num_heads": 8})
    assert s.model["num_encoder_layers"] == 2  # the small defaults fill the rest
    assert s.model_config(10, 12).d_model == 64
    with pytest.raises(ValueError, match="d_model=30 must be divisible by num_heads=4"):
        Settings(model={"d_model": 30})
    with pytest.raises(ValueError, match="must not set"):
        Settings(model={"src_vocab_size": 5})
    with pytest.raises(ValueError, match="smoothing=1.0 must lie in"):
        Settings(smoothing=1.0)
    assert Settings.from_dict(s.to_dict()) == s


def test_bpe_dropout_is_a_training_setting_that_needs_the_bpe_tokenizer(tmp_path):
    from tformer.recipes.translation import train_translation

    with pytest.raises(ValueError, match=r"bpe_dropout=1.0 must lie in \[0, 1\)"):
        Settings(bpe_dropout=1.0)
    assert Settings.from_dict({k: v for k, v in Settings().to_dict().items() if k != "bpe_dropout"}).bpe_dropout == 0.0
    tiny = Settings(model={"d_model": 16, "num_heads": 2, "dim_feedforward": 32}, bpe_dropout=0.1, epochs=1)
    pairs = load_builtin("train")[:40]
    # refused by the first epoch's batches, before any step or checkpoint
    with pytest.raises(ValueError, match="bpe_dropout=0.1 needs the BPE tokenizer; these tokenizers split English by word"):
        train_translation({"train": pairs, "valid": []}, tmp_path / "run", tiny, progress=False, log=lambda m: None)
    assert not (tmp_path / "run" / "config.json").exists()
    _, state = train_translation({"train": pairs, "valid": []}, tmp_path / "bpe", tiny, tokenizer="bpe",
                                 bpe_vocab_size=120, max_steps=2, progress=False, log=lambda m: None)
    assert state.step == 2
