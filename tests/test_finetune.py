"""tformer.recipes.finetune: chapter 11c's two experiments, on tiny models and budgets."""

from __future__ import annotations

import math

import pytest
import torch

from tformer.data.corpus import builtin_splits
from tformer.nn.llama import Llama, LlamaConfig
from tformer.nn.transformer import Transformer, TransformerConfig, count_parameters
from tformer.recipes import finetune as ft
from tformer.recipes.translation import Settings, Translator, train_translation

TINY = dict(d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=64,
            dropout=0.1, max_len=64)


# --------------------------------------------------------------------------- statistics


def test_wilson_interval_matches_the_hand_computed_interval_for_8_of_10():
    # p = .8, z = 1.96: centre (0.8 + z²/20) / (1 + z²/10) = 0.71676, half 1.96·sqrt(.016 + z²/400) / 1.38416
    lo, hi = ft.wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
    lo, hi = ft.wilson_interval(0, 20)  # never below 0, and not the degenerate [0, 0] of p ± z·se
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.16113, abs=1e-4)


@pytest.mark.parametrize("args, error, words", [((11, 10), ValueError, "at most n=10"),
                                                ((1, 0), ValueError, "n"), ((-1, 5), ValueError, "correct"),
                                                ((1.5, 5), TypeError, "correct")])
def test_wilson_interval_refuses_impossible_counts(args, error, words):
    with pytest.raises(error, match=words):
        ft.wilson_interval(*args)


def test_paired_bootstrap_of_equal_systems_is_zero_and_of_opposite_ones_is_one():
    a = [True, False, True, True] * 25
    assert ft.paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    assert ft.paired_bootstrap([True] * 50, [False] * 50) == (1.0, 1.0, 1.0)


def test_paired_bootstrap_centres_on_the_accuracy_difference_and_brackets_it():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(400, generator=g) < 0.8).tolist()
    b = (torch.rand(400, generator=g) < 0.7).tolist()
    diff, lo, hi = ft.paired_bootstrap(a, b, resamples=1000)
    assert diff == pytest.approx(sum(a) / 400 - sum(b) / 400)
    assert lo < diff < hi and hi - lo < 0.2
    assert ft.paired_bootstrap(a, b, resamples=1000) == (diff, lo, hi)  # seeded


def test_paired_bootstrap_refuses_test_sets_of_different_sizes():
    with pytest.raises(ValueError, match="same, non-empty test set; got 3 and 2"):
        ft.paired_bootstrap([True] * 3, [True] * 2)


# --------------------------------------------------------------------------- the classifier


def _transformer(**changes) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(src_vocab_size=30, tgt_vocab_size=20, **{**TINY, **changes}))


def test_classifier_shares_the_translators_source_side_and_leaves_the_decoder_out():
    t = _transformer()
    clf = ft.SentimentClassifier(t)
    assert clf.src_embed is t.src_embed and clf.encoder is t.encoder and clf.pos is t.pos
    own = {id(p) for p in clf.parameters()}
    assert not any(id(p) in own for p in t.decoder.parameters())
    assert count_parameters(clf) == (sum(p.numel() for p in t.src_embed.parameters())
                                            + sum(p.numel() for p in t.encoder.parameters()) + 32 * 2 + 2)


def test_classifier_features_are_the_mean_of_the_encoder_states_at_real_tokens():
    t = _transformer().eval()
    clf = ft.SentimentClassifier(t).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    memory = t.encode(ids)  # (2, 5, 32), padding masked as keys
    want = torch.stack([memory[0, :3].mean(0), memory[1].mean(0)])
    torch.testing.assert_close(clf.features(ids), want)
    # more padding changes nothing
    torch.testing.assert_close(clf.features(torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], 1)), want)


@pytest.mark.parametrize("ids, error, words", [
    (torch.tensor([[1, 30]]), ValueError, r"\[0, 30\)"),
    (torch.tensor([[0, 0], [4, 5]]), ValueError, "all padding"),
    (torch.ones(1, 65, dtype=torch.long), ValueError, "max_len is 64"),
    (torch.ones(1, 3), TypeError, "ids"),
    (torch.ones(3, dtype=torch.long), ValueError, r"\(batch, length\)"),
])
def test_classifier_refuses_bad_ids_with_their_name(ids, error, words):
    with pytest.raises(error, match=words):
        ft.SentimentClassifier(_transformer())(ids)


def test_classifier_needs_a_transformer():
    with pytest.raises(TypeError, match="tformer Transformer, got Linear"):
        ft.SentimentClassifier(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------- data


def test_splits_are_fixed_disjoint_and_sized():
    reviews = [(f"评论{i}", i % 2) for i in range(100)]
    a = ft.sentiment_splits(reviews, test_size=20, seed=3)
    assert a == ft.sentiment_splits(reviews, test_size=20, seed=3)
    assert len(a["test"]) == 20 and len(a["train"]) == 80
    assert not {t for t, _ in a["test"]} & {t for t, _ in a["train"]}
    small = ft.sentiment_splits(reviews, test_size=20, train_size=10, seed=3)
    assert small["test"] == a["test"] and small["train"] == a["train"][:10]
    with pytest.raises(ValueError, match="test_size=100 leaves nothing"):
        ft.sentiment_splits(reviews, test_size=100)
    with pytest.raises(ValueError, match="train_size=81 but only 80"):
        ft.sentiment_splits(reviews, test_size=20, train_size=81)


@pytest.fixture(scope="module")
def translator_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("translator")
    s = builtin_splits()
    splits = {"train": s["train"][:64], "valid": s["valid"][:16], "test": s["test"][:8]}
    torch.manual_seed(0)
    train_translation(splits, out, Settings(model=TINY, batch_tokens=200, warmup=4, max_minutes=None, epochs=1),
                      progress=False, log=None)
    return out


def test_encode_texts_uses_the_translators_characters_cuts_and_counts_unknowns(translator_dir):
    tok = Translator.from_checkpoint(translator_dir).tokenizers
    known = next(c for c in tok.src_vocab.itos[4:] if len(c) == 1)
    rows, unk = ft.encode_texts(tok, [known * 10, "\u4dc0\u4dc1"], max_tokens=4)
    assert rows[0] == [tok.src_vocab.stoi[known]] * 4
    assert rows[1] == [tok.src_vocab.unk_id] * 2
    assert unk == pytest.approx(2 / 6)


@pytest.mark.parametrize("arm", ft.SENTIMENT_ARMS)
def test_each_sentiment_arm_trains_what_it_should_and_reports_a_curve(translator_dir, arm):
    settings = ft.SentimentSettings(seconds=1.0, batch_size=16, max_tokens=32, test_size=100, train_size=200,
                                    evals=2, warmup=2)
    r = ft.sentiment_run(arm, translator_dir, settings, log=None)
    assert r["test_reviews"] == 100 and r["train_reviews"] == 200 and len(r["right"]) == 100
    assert [c["seconds"] for c in r["curve"]][0] == 0.0 and len(r["curve"]) == 3
    assert r["curve"][-1]["accuracy"] == r["accuracy"] == sum(r["right"]) / 100
    assert r["interval"] == list(ft.wilson_interval(sum(r["right"]), 100))
    assert r["steps"] > 0 and 0 < r["peak_rss_bytes"]
    encoder = sum(p.numel() for p in Translator.from_checkpoint(translator_dir).model.encoder.parameters())
    head = 32 * 2 + 2
    if arm == "frozen":
        assert r["trainable_parameters"] == head
    else:
        assert r["trainable_parameters"] > encoder + head


def test_frozen_arm_leaves_the_encoder_as_loaded_and_finetuned_changes_it(translator_dir, monkeypatch):
    seen = {}
    real = ft.SentimentClassifier

    class Spy(real):
        def __init__(self, transformer, *a, **k):
            super().__init__(transformer, *a, **k)
            seen["model"] = self
            seen["start"] = {k: v.clone() for k, v in self.encoder.state_dict().items()}

    monkeypatch.setattr(ft, "SentimentClassifier", Spy)
    settings = ft.SentimentSettings(seconds=0.5, batch_size=16, max_tokens=32, test_size=50, train_size=100,
                                    evals=1, warmup=1)
    for arm, changed in (("frozen", False), ("finetuned", True)):
        ft.sentiment_run(arm, translator_dir, settings, log=None)
        end = seen["model"].encoder.state_dict()
        assert any(not torch.equal(end[k], v) for k, v in seen["start"].items()) == changed, arm


def test_sentiment_run_refuses_an_unknown_arm_and_a_cut_longer_than_the_encoder(translator_dir):
    with pytest.raises(ValueError, match="arm='lora' must be one of finetuned, frozen, scratch"):
        ft.sentiment_run("lora", translator_dir)
    with pytest.raises(ValueError, match="max_tokens=100 exceeds the encoder's max_len 64"):
        ft.sentiment_run("frozen", translator_dir, ft.SentimentSettings(max_tokens=100))


# --------------------------------------------------------------------------- the language model


class CharTokenizer:
    """Characters as ids, the two calls lm_run makes of a Hugging Face tokenizer."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    def __call__(self, text: str) -> dict:
        return {"input_ids": [self.stoi[c] for c in text if c in self.stoi]}

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


@pytest.fixture(scope="module")
def char_tokenizer():
    from tformer.data.sources import tiny_shakespeare

    return CharTokenizer(tiny_shakespeare())


def _llama(vocab: int) -> Llama:
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=vocab, block_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             d_model=32, dim_feedforward=64))


LM = dict(seconds=1.0, batch_size=4, seq_len=32, valid_windows=4, new_tokens=5, precision="float32", warmup=1)


def test_lora_run_trains_only_adapters_and_counts_adams_two_moments(char_tokenizer):
    model = _llama(len(char_tokenizer.chars))
    r = ft.lm_run("lora", ft.LMSettings(lora_rank=2, **LM), model=model, tokenizer=char_tokenizer, log=None)
    # w_q: 32 -> 32, w_v: 32 -> 16 (2 KV heads of 8) in each of 2 layers, rank 2: 2·(64 + 48)·2
    assert r["lora_layers"] == 4 and r["trainable_parameters"] == 2 * (64 + 48) * 2 == 448
    # AdamW keeps exp_avg and exp_avg_sq (float32) and a scalar step per trained tensor
    assert r["optimizer_state_bytes"] == 448 * 2 * 4 + 8 * 4
    assert r["steps"] > 0 and r["precision"] == "float32"
    assert r["valid_perplexity"] == pytest.approx(math.exp(r["valid_loss"]))
    assert r["valid_loss"] != r["valid_loss_before"]
    assert r["tokens_seen"] == r["steps"] * 4 * 32
    assert isinstance(r["generation"], str) and isinstance(r["generation_before"], str)


def test_full_run_trains_every_parameter_and_frozen_trains_none(char_tokenizer):
    model = _llama(len(char_tokenizer.chars))
    total = sum(p.numel() for p in model.parameters())
    full = ft.lm_run("full", ft.LMSettings(**LM), model=model, tokenizer=char_tokenizer, log=None)
    assert full["trainable_parameters"] == total == full["total_parameters"]
    assert full["optimizer_state_bytes"] == total * 8 + 4 * len(list(model.parameters()))
    frozen = ft.lm_run("frozen", ft.LMSettings(**LM), model=_llama(len(char_tokenizer.chars)),
                       tokenizer=char_tokenizer, log=None)
    assert frozen["steps"] == 0 and frozen["trainable_parameters"] == 0 and frozen["optimizer_state_bytes"] == 0
    assert frozen["valid_loss"] == frozen["valid_loss_before"]
    assert frozen["generation"] == frozen["generation_before"]


def test_lm_loss_is_the_mean_cross_entropy_of_every_next_token(char_tokenizer):
    model = _llama(len(char_tokenizer.chars)).eval()
    ids = torch.arange(40) % len(char_tokenizer.chars)
    w = ft.lm_windows(ids, 3, 8)  # (3, 9)
    assert w.shape == (3, 9) and torch.equal(w[0], ids[:9]) and torch.equal(w[-1], ids[-9:])
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten()).item()
    assert ft.lm_loss(model, w, batch_size=2) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(seconds=0), ValueError, "seconds"), (dict(lora_rank=0), ValueError, "lora_rank"),
    (dict(valid_fraction=0.7), ValueError, "valid_fraction"), (dict(warmup=-1), ValueError, "warmup"),
])
def test_lm_settings_refuse_bad_values_by_name(kwargs, error, words):
    with pytest.raises(error, match=words):
        ft.LMSettings(**kwargs)


def test_lm_run_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="mode='adapter' must be one of frozen, lora, full"):
        ft.lm_run("adapter")


def test_optimizer_state_bytes_counts_nothing_before_the_first_step():
    p = torch.nn.Parameter(torch.zeros(10))
    opt = torch.optim.Adam([p])
    assert ft.optimizer_state_bytes(opt) == 0
    p.grad = torch.ones(10)
    opt.step()
    assert ft.optimizer_state_bytes(opt) == 10 * 4 * 2 + 4
