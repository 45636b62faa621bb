"""tformer.nn.positional against the formulas of §3.5 and their properties."""

from __future__ import annotations

import math

import pytest
import torch

from tformer.nn.positional import (
    LearnedPositionalEmbedding,
    PositionalEncoding,
    RotaryEmbedding,
    sinusoidal_encoding,
)


def test_sinusoidal_values_by_hand():
    pe = sinusoidal_encoding(3, 4)
    # pos 2, dims (0, 1) use frequency 1; dims (2, 3) use 1/10000^(2/4) = 1/100.
    expected = torch.tensor([math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)])
    torch.testing.assert_close(pe[2], expected)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))


def test_odd_d_model_is_supported():
    pe = sinusoidal_encoding(5, 7)
    assert pe.shape == (5, 7)
    # The last (even) column is a sine with no cosine partner: dims 2i use 10000^(2i/7).
    torch.testing.assert_close(pe[3, 6], torch.tensor(math.sin(3 / 10000 ** (6 / 7))))
    torch.testing.assert_close(pe[3, 5], torch.tensor(math.cos(3 / 10000 ** (4 / 7))))


def test_shift_by_k_is_a_rotation_independent_of_position():
    # PE(pos + k) = R_k PE(pos) for each (sin, cos) pair, with R_k the same for every pos.
    d, k = 8, 5
    pe = sinusoidal_encoding(64, d).double()
    freqs = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    for pos in (0, 7, 30):
        for i, w in enumerate(freqs):
            rot = torch.tensor([[math.cos(k * w), math.sin(k * w)], [-math.sin(k * w), math.cos(k * w)]],
                               dtype=torch.float64)
            pair = pe[pos, 2 * i : 2 * i + 2]
            torch.testing.assert_close(pe[pos + k, 2 * i : 2 * i + 2], rot @ pair, atol=1e-6, rtol=0)


def test_positional_encoding_adds_the_table_and_respects_start():
    module = PositionalEncoding(6, max_len=10)
    x = torch.zeros(2, 3, 6)
    torch.testing.assert_close(module(x), sinusoidal_encoding(10, 6)[:3].expand(2, 3, 6))
    torch.testing.assert_close(module(x, start=4)[0], sinusoidal_encoding(10, 6)[4:7])
    assert "pe" not in module.state_dict()  # a function of the shape, not a weight


def test_learned_embedding_trains():
    module = LearnedPositionalEmbedding(8, 4)
    out = module(torch.zeros(1, 5, 4))
    out.sum().backward()
    assert module.embedding.weight.grad[:5].abs().sum() > 0
    assert torch.equal(module.embedding.weight.grad[5:], torch.zeros(3, 4))


def test_rope_dot_product_depends_only_on_distance():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8, max_len=64)
    q, k = torch.randn(1, 8), torch.randn(1, 8)
    scores = []
    for m in (3, 10, 40):
        qm = rope(q.expand(64, 8).unsqueeze(0))[0, m]
        kn = rope(k.expand(64, 8).unsqueeze(0))[0, m - 3]
        scores.append(float(qm @ kn))
    assert max(scores) - min(scores) < 1e-4
    torch.testing.assert_close(rope(q.unsqueeze(0))[0], q)  # position 0 is not rotated


def test_rope_preserves_norms():
    rope = RotaryEmbedding(16)
    x = torch.randn(2, 3, 20, 16)
    torch.testing.assert_close(rope(x).norm(dim=-1), x.norm(dim=-1))


def test_input_longer_than_table_is_rejected():
    module = PositionalEncoding(4, max_len=5)
    with pytest.raises(ValueError, match=r"exceed max_len=5.*max_len >= 6"):
        module(torch.zeros(1, 6, 4))
    with pytest.raises(ValueError, match="exceed max_len=5"):
        module(torch.zeros(1, 2, 4), start=4)
    with pytest.raises(ValueError, match="exceed max_len=8"):
        LearnedPositionalEmbedding(8, 4)(torch.zeros(1, 9, 4))


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: sinusoidal_encoding(0, 4), ValueError, "max_len=0"),
    (lambda: sinusoidal_encoding(4, 2.5), TypeError, "d_model must be an int"),
    (lambda: PositionalEncoding(4)(torch.zeros(1, 3, 5)), ValueError, r"d_model=4"),
    (lambda: PositionalEncoding(4)(torch.zeros(1, 3, 4), start=-1), ValueError, "start=-1"),
    (lambda: RotaryEmbedding(5), ValueError, "head_dim=5 must be even"),
    (lambda: PositionalEncoding(4, dropout=1.5), ValueError, "dropout=1.5"),
])
def test_bad_arguments_are_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()
