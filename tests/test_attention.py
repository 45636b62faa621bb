"""tformer.nn.attention against hand-computed values and PyTorch's own attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tformer.masks import causal_mask, padding_mask
from tformer.nn.attention import (
    KVCache,
    MultiHeadAttention,
    fused_attention,
    scaled_dot_product_attention,
)


def test_two_keys_by_hand():
    # q·k1 = 2, q·k2 = 0, scaled by √2: weights softmax([√2, 0]).
    q = torch.tensor([[1.0, 1.0]])
    k = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    v = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    out, w = scaled_dot_product_attention(q, k, v)
    a = math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 1.0)
    torch.testing.assert_close(w, torch.tensor([[a, 1 - a]]))
    torch.testing.assert_close(out, torch.tensor([[10 * a, 10 * (1 - a)]]))


def test_weights_are_a_distribution_over_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    out, w = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 5, 4) and w.shape == (2, 3, 5, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5))
    assert (w >= 0).all()


@pytest.mark.parametrize("masked", ["none", "causal", "padding"])
def test_math_path_equals_torch_sdpa_and_fused_path(masked):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 6, 8, dtype=torch.float64) for _ in range(3))
    mask = {
        "none": None,
        "causal": causal_mask(6),
        "padding": padding_mask(torch.tensor([6, 3]), max_len=6),
    }[masked]
    out, _ = scaled_dot_product_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(fused_attention(q, k, v, mask), out, atol=1e-12, rtol=0)


def test_is_causal_equals_causal_mask():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    out, _ = scaled_dot_product_attention(q, k, v, causal_mask(5))
    torch.testing.assert_close(fused_attention(q, k, v, is_causal=True), out, atol=1e-6, rtol=0)


@pytest.mark.parametrize("path", ["math", "fused"])
def test_fully_masked_row_gives_zeros_not_nan(path):
    torch.manual_seed(3)
    q = torch.randn(2, 3, 4, requires_grad=True)
    k = torch.randn(2, 5, 4, requires_grad=True)
    v = torch.randn(2, 5, 4, requires_grad=True)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False  # query 1 may attend to nothing
    if path == "math":
        out, w = scaled_dot_product_attention(q, k, v, mask)
        assert torch.equal(w[:, 1], torch.zeros(2, 5))
    else:
        out = fused_attention(q, k, v, mask)
    assert torch.equal(out[:, 1], torch.zeros(2, 4))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[:, 1], torch.zeros(2, 4))


def test_masked_keys_get_zero_weight_and_do_not_change_the_output():
    torch.manual_seed(4)
    q, k, v = torch.randn(1, 2, 4), torch.randn(1, 6, 4), torch.randn(1, 6, 4)
    mask = torch.tensor([True, True, True, False, False, False])
    out, w = scaled_dot_product_attention(q, k, v, mask)
    assert torch.equal(w[..., 3:], torch.zeros(1, 2, 3))
    k2, v2 = k.clone(), v.clone()
    k2[:, 3:] += 100.0
    v2[:, 3:] -= 100.0
    out2, _ = scaled_dot_product_attention(q, k2, v2, mask)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k[:, :3], v[:, :3])[0])


def test_permuting_tokens_permutes_outputs():
    torch.manual_seed(5)
    x = torch.randn(1, 5, 8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    out, _ = scaled_dot_product_attention(x, x, x)
    out_p, _ = scaled_dot_product_attention(x[:, perm], x[:, perm], x[:, perm])
    torch.testing.assert_close(out_p, out[:, perm])






def _copy_into_torch(mha: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    ref = torch.nn.MultiheadAttention(mha.d_model, mha.num_heads, batch_first=True)
    ref = ref.to(mha.w_q.weight.dtype)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.w_q.weight, mha.w_k.weight, mha.w_v.weight]))
        ref.in_proj_bias.copy_(torch.cat([mha.w_q.bias, mha.w_k.bias, mha.w_v.bias]))
        ref.out_proj.weight.copy_(mha.w_o.weight)
        ref.out_proj.bias.copy_(mha.w_o.bias)
    return ref.eval()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("masked", ["none", "causal", "padding", "both"])
@pytest.mark.parametrize("keep_weights", [False, True])
def test_multi_head_attention_equals_torch_multihead_attention(dtype, tol, masked, keep_weights):
    torch.manual_seed(6)
    B, T, D, h = 3, 7, 32, 4
    mha = MultiHeadAttention(D, h).to(dtype).eval()
    mha.keep_weights = keep_weights
    ref = _copy_into_torch(mha)
    x = torch.randn(B, T, D, dtype=dtype)
    lengths = torch.tensor([7, 4, 2])
    causal, keep = causal_mask(T), padding_mask(lengths, max_len=T)
    # tformer: True = may attend. torch.nn.MultiheadAttention: True = ignore, hence the ~.
    ours_mask, kwargs = {
        "none": (None, {}),
        "causal": (causal, {"attn_mask": ~causal}),
        "padding": (keep, {"key_padding_mask": ~keep[:, 0, 0]}),
        "both": (causal & keep, {"attn_mask": ~causal, "key_padding_mask": ~keep[:, 0, 0]}),
    }[masked]
    ours = mha(x, x, x, ours_mask)
    theirs, theirs_w = ref(x, x, x, **kwargs, average_attn_weights=False)
    torch.testing.assert_close(ours, theirs, atol=tol, rtol=tol)
    if keep_weights:
        assert mha.attn_weights.shape == (B, h, T, T)
        torch.testing.assert_close(mha.attn_weights, theirs_w, atol=tol, rtol=tol)


def test_cross_attention_with_different_lengths_equals_torch():
    torch.manual_seed(7)
    mha = MultiHeadAttention(16, 2).eval()
    ref = _copy_into_torch(mha)
    query, memory = torch.randn(2, 3, 16), torch.randn(2, 9, 16)
    torch.testing.assert_close(mha(query, memory, memory), ref(query, memory, memory)[0])


def test_heads_are_independent_slices_of_one_projection():
    torch.manual_seed(8)
    D, h = 12, 3
    d_k = D // h
    mha = MultiHeadAttention(D, h, bias=False).eval()
    x = torch.randn(1, 5, D)
    heads = []
    for i in range(h):
        rows = slice(i * d_k, (i + 1) * d_k)
        q = x @ mha.w_q.weight[rows].T
        k = x @ mha.w_k.weight[rows].T
        v = x @ mha.w_v.weight[rows].T
        heads.append(scaled_dot_product_attention(q, k, v)[0])
    expected = torch.cat(heads, dim=-1) @ mha.w_o.weight.T
    torch.testing.assert_close(mha(x, x, x), expected)


def test_kv_cache_step_by_step_equals_full_causal_pass():
    torch.manual_seed(9)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    full = mha(x, x, x, causal_mask(6))
    cache = KVCache()
    steps = [mha(x[:, t : t + 1], x[:, t : t + 1], x[:, t : t + 1], cache=cache) for t in range(6)]
    assert len(cache) == 6
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-6, rtol=0)


def test_static_cache_reuses_projected_memory():
    torch.manual_seed(10)
    mha = MultiHeadAttention(8, 2).eval()
    memory, q = torch.randn(1, 4, 8), torch.randn(1, 1, 8)
    cache = KVCache(static=True)
    first = mha(q, memory, memory, cache=cache)
    again = mha(q, memory * 0, memory * 0, cache=cache)  # memory is ignored once cached
    torch.testing.assert_close(first, again)


def test_gradients_reach_every_projection():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8, requires_grad=True)
    mha(x, x, x).pow(2).sum().backward()
    for name, p in mha.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_dropout_only_in_training():
    torch.manual_seed(11)
    mha = MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(2, 5, 8)
    mha.eval()
    torch.testing.assert_close(mha(x, x, x), mha(x, x, x))
    mha.train()
    assert not torch.allclose(mha(x, x, x), mha(x, x, x))


# ---- bad input -------------------------------------------------------------------------------


def test_d_model_not_divisible_by_heads_is_rejected():
    with pytest.raises(ValueError, match=r"d_model=500 must be divisible by num_heads=8"):
        MultiHeadAttention(500, 8)


@pytest.mark.parametrize("kwargs,exc,pattern", [
    ({"d_model": 0, "num_heads": 1}, ValueError, "d_model=0"),
    ({"d_model": 8, "num_heads": -2}, ValueError, "num_heads=-2"),
    ({"d_model": 8.0, "num_heads": 2}, TypeError, "d_model must be an int"),
    ({"d_model": 8, "num_heads": 2, "dropout": 1.0}, ValueError, r"dropout=1.0 must lie in \[0, 1\)"),
])
def test_bad_constructor_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        MultiHeadAttention(**kwargs)


def test_mismatched_feature_sizes_are_rejected():
    with pytest.raises(ValueError, match="q and k must share the last"):
        scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 3, 5), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="same T_k"):
        scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="same batch dimensions"):
        scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(3, 3, 4), torch.randn(3, 3, 4))
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"query must have shape \(B, T, d_model=8\)"):
        mha(torch.randn(2, 3, 6), torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="same batch size"):
        mha(torch.randn(2, 3, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8))


def test_integer_inputs_are_rejected():
    with pytest.raises(TypeError, match="q must be a floating-point tensor"):
        scaled_dot_product_attention(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3), torch.ones(2, 3))


def test_mask_of_wrong_dtype_or_shape_is_rejected():
    q = torch.randn(2, 3, 4)
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        scaled_dot_product_attention(q, q, q, torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"mask of shape \(4, 3\) cannot broadcast to \(2, 3, 3\)"):
        scaled_dot_product_attention(q, q, q, torch.ones(4, 3, dtype=torch.bool))
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"cannot broadcast to \(2, 2, 3, 3\)"):
        mha(x, x, x, torch.ones(2, 1, 1, 5, dtype=torch.bool))




def test_is_causal_with_a_mask_is_rejected():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match="is_causal=True"):
        mha(x, x, x, causal_mask(3), is_causal=True)
