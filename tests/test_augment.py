"""Joined training pairs (tformer.data.augment) and the recipe's ``concat`` setting."""

from __future__ import annotations

import pytest

from tformer.data.augment import concatenate_pairs, join
from tformer.data.corpus import Pair, load_builtin
from tformer.recipes.translation import Settings

PAIRS = [Pair("你好。", "Hello.", "#1"), Pair("谢谢！", "Thanks!", "#2"), Pair("走吧。", "Let's go.", "#3"),
         Pair("下雨了。", "It's raining.", "#4")]


def test_join_writes_chinese_on_and_puts_one_space_between_english_sentences():
    assert join(PAIRS[0], PAIRS[1]) == Pair("你好。谢谢！", "Hello. Thanks!", "#1 + #2")
    assert join(Pair("好。 ", " Good. "), Pair(" 对。", "Right.")) == Pair("好。对。", "Good. Right.", "")


def test_the_originals_come_first_then_the_share_of_joined_pairs():
    out = concatenate_pairs(PAIRS, 0.5, seed=0)
    assert out[:4] == PAIRS and len(out) == 6
    for p in out[4:]:
        first = next(a for a in PAIRS if p.src.startswith(a.src))
        second = next(b for b in PAIRS if p.src == first.src + b.src)
        assert second != first  # never a pair joined to itself
        assert p == join(first, second)
    assert concatenate_pairs(PAIRS, 0.0, seed=0) == PAIRS
    assert concatenate_pairs(PAIRS, 0.0, seed=0) is not PAIRS  # a copy, never the caller's list


def test_share_one_uses_every_pair_once_as_a_first_half():
    pairs = [Pair(f"第{i}句。", f"Sentence {i}.") for i in range(300)]
    joined = concatenate_pairs(pairs, 1.0, seed=5)[300:]
    halves = [p.tgt.split(" S") for p in joined]  # "Sentence 7. Sentence 12." -> first and second
    firsts = [int(h[0].split()[1].rstrip(".")) for h in halves]
    seconds = [int(h[1].split()[1].rstrip(".")) for h in halves]
    assert sorted(firsts) == list(range(300))
    assert all(a != b for a, b in zip(firsts, seconds))
    assert len(set(seconds)) > 150  # drawn independently: repeats, but far from one pair for all


def test_the_seed_decides_the_joinings():
    pairs = load_builtin("train")[:200]
    epoch3 = concatenate_pairs(pairs, 0.5, seed=3)
    assert concatenate_pairs(pairs, 0.5, seed=3) == epoch3  # a resumed epoch sees the same pairs
    assert concatenate_pairs(pairs, 0.5, seed=4) != epoch3  # the next epoch sees new ones


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="share"):
        concatenate_pairs(PAIRS, 1.5)
    with pytest.raises(ValueError, match="needs at least 2 pairs"):
        concatenate_pairs(PAIRS[:1], 1.0)
    with pytest.raises(ValueError, match="concat"):
        Settings(concat=-0.1)
    assert Settings.from_dict({k: v for k, v in Settings().to_dict().items() if k != "concat"}).concat == 0.0


def test_the_recipe_trains_on_joined_pairs(tmp_path, monkeypatch):
    import tformer.recipes.translation as translation

    seen = []
    real = translation.concatenate_pairs

    def spy(pairs, share, seed=0):
        out = real(pairs, share, seed=seed)
        seen.append((len(pairs), len(out), seed))
        return out

    monkeypatch.setattr(translation, "concatenate_pairs", spy)
    tiny = Settings(model={"d_model": 16, "num_heads": 2, "dim_feedforward": 32}, concat=0.5, epochs=2)
    pairs = load_builtin("train")[:40]
    _, state = translation.train_translation({"train": pairs, "valid": pairs[:8]}, tmp_path / "run", tiny,
                                             progress=False, log=lambda m: None)
    assert state.epoch == 2
    assert seen == [(40, 60, 0), (40, 60, 1)]  # 20 joined pairs more, new ones each epoch
