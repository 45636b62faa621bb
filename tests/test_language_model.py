"""Tests of language_model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_gpt

from tformer.data.text import CharTokenizer
from tformer.inference.generation import generate
from tformer.nn.gpt import GPT, GPTConfig
from tformer.recipes.language_model import evaluate_loss
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
