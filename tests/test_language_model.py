"""tformer.recipes.language_model: the character-level GPT recipe on the one training loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_gpt

from tformer.data.batches import RandomWindows, random_windows
from tformer.data.text import CharTokenizer
from tformer.inference.generation import generate
from tformer.nn.gpt import GPT, GPTConfig
from tformer.recipes.language_model import (
    CharLMSettings,
    evaluate_loss,
    new_char_gpt,
    split_text,
    train_char_lm,
)
from tformer.training.optim import make_adamw


def test_tiny_model_overfits_a_tiny_text():
    tok = CharTokenizer.from_text("hello world! ")
    ids = tok.encode("hello world! " * 4)
    torch.manual_seed(0)
    model = GPT(GPTConfig(tok.vocab_size, block_size=16, num_layers=1, num_heads=2, d_model=32))
    opt = make_adamw(model, lr=1e-2, weight_decay=0.0)
    x, y = ids[None, :16], ids[None, 1:17]
    model.train()
    for _ in range(120):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    out = generate(model, tok.encode("hel")[None], 10, do_sample=False)
    assert tok.decode(out[0]) == "hello world! "


def test_evaluation_covers_every_token_once():
    model = tiny_gpt(block_size=4)
    ids = torch.randint(0, 11, (11,))  # windows 0..3, 4..7, and the short tail 8..9
    expected = []
    for a, b in ((0, 4), (4, 8), (8, 10)):
        logits, _ = model(ids[None, a:b])
        expected.append(F.cross_entropy(logits[0], ids[a + 1 : b + 1], reduction="sum"))
    got = evaluate_loss(model, ids, batch_size=1)
    assert got == pytest.approx((sum(expected) / 10).item(), rel=1e-5)


def test_random_windows_sequence_replays_the_draws_of_a_plain_loop():
    ids = torch.arange(100)
    lazy = RandomWindows(ids, block_size=8, batch_size=3, steps=5, seed=7)
    g = torch.Generator().manual_seed(7)
    plain = [random_windows(ids, 8, 3, g) for _ in range(5)]
    assert len(lazy) == 5
    for i in (0, 1, 4, 2, 3):  # out of order too: going back restarts the generator
        torch.testing.assert_close(lazy[i].x, plain[i][0])
        torch.testing.assert_close(lazy[i].y, plain[i][1])
    assert lazy[-1].n_tokens == 3 * 8
    with pytest.raises(IndexError):
        lazy[5]


def test_char_lm_recipe_lowers_the_loss_with_the_shared_training_loop():
    tok, train_ids, val_ids = split_text("to be or not to be, that is the question. " * 30)
    torch.manual_seed(0)
    model = new_char_gpt(tok, block_size=16, num_layers=1, num_heads=2, d_model=32)
    before = evaluate_loss(model, val_ids)
    settings = CharLMSettings(block_size=16, batch_size=8, steps=60, lr=3e-3, min_lr=3e-4, warmup=5, seed=0)
    state = train_char_lm(model, train_ids, settings)
    assert state.step == 60 and len(state.history["step_loss"]) == 60
    assert evaluate_loss(model, val_ids) < 0.6 * before
    with pytest.raises(ValueError, match="block_size=32 exceeds"):
        train_char_lm(model, train_ids, CharLMSettings(block_size=32))
    with pytest.raises(ValueError, match="min_lr"):
        CharLMSettings(lr=1e-3, min_lr=1e-2)
