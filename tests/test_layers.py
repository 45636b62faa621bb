"""Encoder and decoder layers against torch.nn's own layers with copied weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tformer.masks import causal_mask, padding_mask
from tformer.nn.layers import DecoderLayer, EncoderLayer, FeedForward

D, H, FF = 16, 4, 32


def _copy_attention(ours, theirs: nn.MultiheadAttention) -> None:
    w_q, w_k, w_v = theirs.in_proj_weight.chunk(3)
    b_q, b_k, b_v = theirs.in_proj_bias.chunk(3)
    for lin, w, b in ((ours.w_q, w_q, b_q), (ours.w_k, w_k, b_k), (ours.w_v, w_v, b_v)):
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    ours.w_o.weight.copy_(theirs.out_proj.weight)
    ours.w_o.bias.copy_(theirs.out_proj.bias)


@torch.no_grad()
def _copy_layer(ours, theirs) -> None:
    _copy_attention(ours.self_attn, theirs.self_attn)
    if hasattr(ours, "cross_attn"):
        _copy_attention(ours.cross_attn, theirs.multihead_attn)
    ours.ffn.linear1.load_state_dict(theirs.linear1.state_dict())
    ours.ffn.linear2.load_state_dict(theirs.linear2.state_dict())
    for name in ("norm1", "norm2", "norm3"):
        if hasattr(ours, name):
            getattr(ours, name).load_state_dict(getattr(theirs, name).state_dict())


def _randomise_norms(layer) -> None:
    # LayerNorm starts at weight 1, bias 0; random values make a wrong copy visible.
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def test_feed_forward_is_equation_2():
    torch.manual_seed(0)
    ffn = FeedForward(D, FF)
    x = torch.randn(2, 5, D)
    w1, b1, w2, b2 = ffn.linear1.weight, ffn.linear1.bias, ffn.linear2.weight, ffn.linear2.bias
    expected = torch.clamp(x @ w1.T + b1, min=0) @ w2.T + b2  # max(0, xW1 + b1)W2 + b2
    torch.testing.assert_close(ffn(x), expected)


def test_feed_forward_gelu_is_exact_erf_gelu():
    torch.manual_seed(0)
    ffn = FeedForward(D, FF, activation="gelu")
    x = torch.randn(3, D)
    h = ffn.linear1(x)
    expected = ffn.linear2(0.5 * h * (1 + torch.erf(h / 2**0.5)))
    torch.testing.assert_close(ffn(x), expected)


def test_feed_forward_acts_on_each_position_separately():
    torch.manual_seed(0)
    ffn = FeedForward(D, FF)
    x = torch.randn(1, 6, D)
    torch.testing.assert_close(ffn(x)[0, 3], ffn(x[0, 3]))


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_matches_torch_with_padding_mask(norm_first):
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first)
    ours = EncoderLayer(D, H, FF, dropout=0.0, norm_first=norm_first)
    _randomise_norms(ref)
    _copy_layer(ours, ref)
    ref.eval(), ours.eval()
    x = torch.randn(3, 7, D)
    mask = padding_mask([7, 4, 2], max_len=7)  # (B, 1, 1, T), True = real token
    got = ours(x, mask)
    want = ref(x, src_key_padding_mask=~mask[:, 0, 0, :])  # torch: True = ignore
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_matches_torch_with_causal_mask(norm_first):
    torch.manual_seed(1)
    ref = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first)
    ours = EncoderLayer(D, H, FF, dropout=0.0, norm_first=norm_first)
    _randomise_norms(ref)
    _copy_layer(ours, ref)
    x = torch.randn(2, 6, D, requires_grad=True)  # grad on: torch takes its readable path
    want = ref(x, src_mask=~causal_mask(6))
    torch.testing.assert_close(ours(x, causal_mask(6)), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours(x, is_causal=True), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch_with_causal_and_padding_masks(norm_first):
    torch.manual_seed(2)
    ref = nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first)
    ours = DecoderLayer(D, H, FF, dropout=0.0, norm_first=norm_first)
    _randomise_norms(ref)
    _copy_layer(ours, ref)
    x, memory = torch.randn(3, 5, D), torch.randn(3, 8, D)
    tgt_pad = padding_mask([5, 3, 4], max_len=5)
    mem_pad = padding_mask([8, 6, 1], max_len=8)
    got = ours(x, memory, tgt_mask=causal_mask(5) & tgt_pad, memory_mask=mem_pad)
    want = ref(
        x, memory, tgt_mask=~causal_mask(5),
        tgt_key_padding_mask=~tgt_pad[:, 0, 0, :], memory_key_padding_mask=~mem_pad[:, 0, 0, :],
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_post_ln_and_pre_ln_differ():
    torch.manual_seed(0)
    post = EncoderLayer(D, H, FF, dropout=0.0)
    pre = EncoderLayer(D, H, FF, dropout=0.0, norm_first=True)
    pre.load_state_dict(post.state_dict())
    x = torch.randn(2, 4, D) * 3
    assert not torch.allclose(post(x), pre(x), atol=1e-3)
    # post-LN ends in a LayerNorm: each output row has mean 0 and variance 1 (weight 1, bias 0)
    torch.testing.assert_close(post(x).mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)


def test_padded_keys_do_not_change_real_positions():
    torch.manual_seed(0)
    layer = EncoderLayer(D, H, FF, dropout=0.0).eval()
    x = torch.randn(2, 6, D)
    mask = padding_mask([6, 3], max_len=6)
    y = x.clone()
    y[1, 3:] = torch.randn(3, D) * 10  # change only the padding of sequence 1
    torch.testing.assert_close(layer(x, mask)[1, :3], layer(y, mask)[1, :3], atol=0, rtol=0)


def test_decoder_layer_cache_equals_full_sequence():
    torch.manual_seed(0)
    from tformer.nn.attention import KVCache

    layer = DecoderLayer(D, H, FF, dropout=0.0).eval().double()
    x, memory = torch.randn(2, 5, D, dtype=torch.float64), torch.randn(2, 3, D, dtype=torch.float64)
    full = layer(x, memory, tgt_mask=causal_mask(5))
    self_cache, cross_cache = KVCache(), KVCache(static=True)
    steps = [layer(x[:, t : t + 1], memory, self_cache=self_cache, cross_cache=cross_cache) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-12, rtol=0)


def test_dropout_active_only_in_training():
    torch.manual_seed(0)
    layer = EncoderLayer(D, H, FF, dropout=0.5)
    x = torch.randn(2, 4, D)
    assert not torch.equal(layer(x), layer(x))  # training: two different dropout draws
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    layer = DecoderLayer(D, H, FF, norm_first=True)
    layer(torch.randn(2, 4, D), torch.randn(2, 3, D)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (dict(d_model=10, num_heads=4), ValueError, "divisible"),
        (dict(d_model=0), ValueError, "d_model=0"),
        (dict(dim_feedforward=-1), ValueError, "dim_feedforward=-1"),
        (dict(dropout=1.0), ValueError, "dropout=1.0"),
        (dict(activation="tanh"), ValueError, "activation='tanh'"),
        (dict(layer_norm_eps=0.0), ValueError, "layer_norm_eps"),
        (dict(num_heads=2.0), TypeError, "num_heads"),
    ],
)
def test_bad_layer_arguments_are_named(kwargs, error, words):
    args = dict(d_model=D, num_heads=H, dim_feedforward=FF) | kwargs
    with pytest.raises(error, match=words):
        EncoderLayer(**args)
    with pytest.raises(error, match=words):
        DecoderLayer(**args)


def test_bad_layer_inputs_give_clear_errors():
    enc, dec = EncoderLayer(D, H, FF), DecoderLayer(D, H, FF)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_model=16\)"):
        enc(torch.randn(2, 3, D + 1))
    with pytest.raises(TypeError, match="floating-point"):
        enc(torch.ones(2, 3, D, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot broadcast"):
        enc(torch.randn(2, 3, D), mask=torch.ones(2, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.bool"):
        enc(torch.randn(2, 3, D), mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="memory must have the batch size"):
        dec(torch.randn(2, 3, D), torch.randn(1, 4, D))
    with pytest.raises(ValueError, match="memory must have shape"):
        dec(torch.randn(2, 3, D), torch.randn(2, 4, D - 1))
    with pytest.raises(ValueError, match="activation"):
        FeedForward(D, FF, activation="swish")


def test_torch_gelu_matches_our_gelu_layer():
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, activation=F.gelu, batch_first=True,
                                     layer_norm_eps=1e-12)
    ours = EncoderLayer(D, H, FF, dropout=0.0, activation="gelu", layer_norm_eps=1e-12)
    _copy_layer(ours, ref)
    x = torch.randn(2, 5, D, requires_grad=True)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


# --- exercise checkers of chapters 5-7 (tformer/exercises/layers.py) -----------------------------

def _run_check(name, fn):
    from tformer.course.exercises import CheckFailed
    from tformer.course.exercises.layers import CHECKS

    try:
        return CHECKS[name](fn), ""
    except CheckFailed as failure:
        return None, failure.hint


def test_feed_forward_checker_accepts_reference_and_names_mistakes():
    from tformer.course.exercises.layers import HINT_RELU, HINT_RELU_LAST

    passed, _ = _run_check("layers.feed_forward", lambda x, w1, b1, w2, b2: F.relu(x @ w1 + b1) @ w2 + b2)
    assert passed == 3
    assert _run_check("layers.feed_forward", lambda x, w1, b1, w2, b2: (x @ w1 + b1) @ w2 + b2)[1] == HINT_RELU
    assert _run_check("layers.feed_forward",
                      lambda x, w1, b1, w2, b2: F.relu((x @ w1 + b1) @ w2 + b2))[1] == HINT_RELU_LAST


def _post_ln(layer, x, mask):
    x = layer.norm1(x + layer.self_attn(x, x, x, mask=mask))
    return layer.norm2(x + layer.ffn(x))


def _pre_ln(layer, x, mask):
    h = layer.norm1(x)
    x = x + layer.self_attn(h, h, h, mask=mask)
    return x + layer.ffn(layer.norm2(x))


def test_encoder_layer_checkers_tell_post_ln_from_pre_ln():
    from tformer.course.exercises.layers import (
        HINT_GOT_POST,
        HINT_GOT_PRE,
        HINT_MASK,
        HINT_NO_RESIDUAL,
    )

    assert _run_check("layers.encoder_layer_post_ln", _post_ln)[0] == 3
    assert _run_check("layers.encoder_layer_pre_ln", _pre_ln)[0] == 3
    assert _run_check("layers.encoder_layer_post_ln", _pre_ln)[1] == HINT_GOT_PRE
    assert _run_check("layers.encoder_layer_pre_ln", _post_ln)[1] == HINT_GOT_POST

    def no_residual(layer, x, mask):
        return layer.norm2(layer.ffn(layer.norm1(layer.self_attn(x, x, x, mask=mask))))

    def no_mask(layer, x, mask):
        return _post_ln(layer, x, None)

    assert _run_check("layers.encoder_layer_post_ln", no_residual)[1] == HINT_NO_RESIDUAL
    assert _run_check("layers.encoder_layer_post_ln", no_mask)[1] == HINT_MASK


def test_decoder_layer_checker():
    from tformer.course.exercises.layers import HINT_CROSS_SELF, HINT_NO_CAUSAL

    def reference(layer, x, memory, tgt_mask, memory_mask, causal=True, cross=True):
        x = layer.norm1(x + layer.self_attn(x, x, x, mask=tgt_mask if causal else None))
        kv = memory if cross else x
        x = layer.norm2(x + layer.cross_attn(x, kv, kv, mask=memory_mask if cross else tgt_mask))
        return layer.norm3(x + layer.ffn(x))

    assert _run_check("layers.decoder_layer", reference)[0] == 3
    assert _run_check("layers.decoder_layer",
                      lambda *a: reference(*a, causal=False))[1] == HINT_NO_CAUSAL
    assert _run_check("layers.decoder_layer", lambda *a: reference(*a, cross=False))[1] == HINT_CROSS_SELF


def test_parameter_count_checker():
    from tformer.course.exercises.layers import HINT_BIAS, HINT_DEC_ATTN, HINT_TIED

    def count(d, d_ff, h, n, vocab, bias=True, tied=True, dec_attn=2):
        b = 1 if bias else 0
        attn = 4 * (d * d + b * d)
        ffn = 2 * d * d_ff + b * (d_ff + d)
        ln = 2 * d * b
        emb = vocab * d * (1 if tied else 3)
        return emb + n * (attn + ffn + 2 * ln) + n * (dec_attn * attn + ffn + 3 * ln) + b * vocab

    assert _run_check("model.parameter_count", count)[0] == 4
    assert _run_check("model.parameter_count", lambda *a: count(*a, bias=False))[1] == HINT_BIAS
    assert _run_check("model.parameter_count", lambda *a: count(*a, tied=False))[1] == HINT_TIED
    assert _run_check("model.parameter_count", lambda *a: count(*a, dec_attn=1))[1] == HINT_DEC_ATTN
