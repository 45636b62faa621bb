"""The shipped Tatoeba pairs: their fixed, leak-free splits, their attribution, and bad input files."""

from __future__ import annotations

import re

import pytest

from tformer.__main__ import main
from tformer.data.corpus import Pair
from tformer.data.tatoeba import CREDIT, check_direction, load_tatoeba, tatoeba_splits
from tformer.recipes.translation import Settings, load_data, train_translation


@pytest.fixture(scope="module")
def splits():
    return tatoeba_splits()


def _sides(pairs):
    return {p.src for p in pairs}, {p.tgt for p in pairs}


def test_the_shipped_file_holds_27655_pairs_and_the_splits_share_them_out(splits):
    assert len(load_tatoeba()) == 27655
    assert {k: len(v) for k, v in splits.items()} == {"train": 24889, "valid": 1383, "test": 1383}
    every = sorted((p.src, p.tgt, p.attribution) for v in splits.values() for p in v)
    assert every == sorted((p.src, p.tgt, p.attribution) for p in load_tatoeba())  # each pair once


def test_no_valid_or_test_sentence_appears_in_train_on_either_side(splits):
    train_zh, train_en = _sides(splits["train"])
    for name in ("valid", "test"):
        zh, en = _sides(splits[name])
        assert not zh & train_zh, name
        assert not en & train_en, name
    valid_zh, valid_en = _sides(splits["valid"])
    test_zh, test_en = _sides(splits["test"])
    assert not valid_zh & test_zh and not valid_en & test_en


def test_the_file_really_repeats_sentences_so_a_split_by_line_would_leak():
    pairs = load_tatoeba()
    zh, en = _sides(pairs)
    assert len(zh) < len(pairs) and len(en) < len(pairs)  # why the splits group pairs first


def test_the_splits_are_fixed_by_the_seed_and_leak_free_for_any_seed(splits):
    again = tatoeba_splits(seed=0)
    assert all(again[k] == splits[k] for k in splits)
    other = tatoeba_splits(seed=1)
    assert other["test"] != splits["test"]
    train_zh, train_en = _sides(other["train"])
    zh, en = _sides(other["test"])
    assert not zh & train_zh and not en & train_en


def test_load_data_tatoeba_gives_the_same_splits(splits):
    got = load_data("tatoeba")
    assert all(got[k] == splits[k] for k in splits)


def test_every_pair_keeps_its_attribution_and_the_licence_is_credited(splits):
    pattern = re.compile(r"^CC-BY 2\.0 \(France\) Attribution: tatoeba\.org #\d+ \(.+\) & #\d+ \(.+\)$")
    for p in load_tatoeba():
        assert pattern.match(p.attribution), p
    assert "CC-BY 2.0 FR" in CREDIT and "tatoeba.org" in CREDIT


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"seed": "0"}, TypeError, "seed"),
    ({"valid": 1.5}, ValueError, "valid"),
    ({"valid": 0.6, "test": 0.5}, ValueError, "must leave something to train on"),
])
def test_bad_split_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        tatoeba_splits(**kwargs)


def _write_tsv(path, pairs, swapped=False):
    rows = [f"{p.src}\t{p.tgt}" if swapped else f"{p.tgt}\t{p.src}" for p in pairs]
    path.write_text("".join(f"{r}\tCC-BY 2.0 (France) Attribution: test #{i}\n" for i, r in enumerate(rows)),
                    encoding="utf-8")
    return path


def test_swapped_columns_are_detected_and_reported(tmp_path, splits, capsys):
    pairs = splits["train"][:200]
    check_direction(pairs)  # the right way round passes
    swapped = [Pair(p.tgt, p.src, p.attribution) for p in pairs]
    with pytest.raises(ValueError, match=r"columns look swapped: in 200 of 200 pairs"):
        check_direction(swapped, "x.tsv")
    path = _write_tsv(tmp_path / "swapped.tsv", pairs, swapped=True)
    with pytest.raises(ValueError, match="swapped.tsv: the columns look swapped"):
        load_data(str(path))
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "out"), "--threads", "1"]) == 2
    assert "columns look swapped" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was trained


def test_a_few_english_names_in_the_chinese_column_are_not_a_swap(splits):
    pairs = splits["train"][:50]
    mixed = pairs + [Pair("Tom", "Tom", "")] * 10 + [Pair("我爱 Tom", "I love Tom", "")]
    check_direction(mixed)  # Chinese sentences outnumber the rest


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, splits):
    out = tmp_path_factory.mktemp("tatoeba") / "ckpt"
    tiny = Settings(model=dict(d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                               dim_feedforward=64, dropout=0.0), epochs=1, max_minutes=None)
    train_translation({"train": splits["train"][:300], "valid": []}, out, tiny, max_steps=3,
                      progress=False, log=None, device="cpu")
    return out


def test_an_evaluation_file_of_unseen_characters_works_through_unknown_tokens(tmp_path, tiny_checkpoint, capsys):
    # characters far from the 300 training pairs: rare ideographs the vocabulary cannot hold
    unseen = [Pair(f"龘靐齉{i}爩", f"Sentence {i}.", "") for i in range(40)]
    path = _write_tsv(tmp_path / "unseen.tsv", unseen)
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(path), "--split", "all",
                 "--threads", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.match(r"BLEU = \d+\.\d\d \(all split of .*unseen.tsv, 40 sentences, greedy, last weights\)", last), last


def test_an_empty_evaluation_file_is_a_clear_error(tmp_path, tiny_checkpoint, capsys):
    path = tmp_path / "empty.tsv"
    path.write_text("", encoding="utf-8")
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(path), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "empty.tsv holds only 0 usable sentence pairs" in err


def test_train_data_tatoeba_takes_the_recipe_defaults_and_typed_flags_still_win(monkeypatch):
    import tformer.__main__ as cli
    from tformer.recipes.translation import DATA_DEFAULTS, tokenizer_for

    seen = []
    monkeypatch.setattr(cli, "_train", lambda args, *rest: seen.append(args) or 0)
    preset = DATA_DEFAULTS["tatoeba"]
    assert main(["train", "--data", "tatoeba", "--threads", "1"]) == 0
    args = seen[-1]
    assert (args.tokenizer, args.bpe_vocab_size) == tokenizer_for("tatoeba") == ("bpe", preset["bpe_vocab_size"])
    assert args.max_minutes == preset["max_minutes"] == 15.0
    assert args.d_model == Settings.for_data("tatoeba").model["d_model"]
    assert main(["train", "--data", "tatoeba", "--tokenizer", "word", "--max-minutes", "2", "--threads", "1"]) == 0
    assert (seen[-1].tokenizer, seen[-1].max_minutes) == ("word", 2.0)
    assert main(["train", "--threads", "1"]) == 0  # the built-in corpus keeps the class defaults
    assert (seen[-1].tokenizer, seen[-1].max_minutes) == ("word", Settings().max_minutes)


def test_settings_for_data_merges_the_preset_and_the_changes():
    from tformer.recipes.translation import DATA_DEFAULTS

    s = Settings.for_data("tatoeba", epochs=2, model={"dropout": 0.0})
    preset = DATA_DEFAULTS["tatoeba"]
    assert s.epochs == 2 and s.max_minutes == preset["max_minutes"]
    assert s.model["dropout"] == 0.0 and s.model["d_model"] == preset["model"]["d_model"]
    assert Settings.for_data("builtin") == Settings() == Settings.for_data("some/file.tsv")
