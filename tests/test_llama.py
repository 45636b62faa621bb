"""tformer.nn.llama against independent references: torch.nn.RMSNorm, F.scaled_dot_product_attention
with enable_gqa, K/V heads repeated by hand, tformer's MultiHeadAttention, and (when installed)
Hugging Face's LlamaForCausalLM with the same random weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tformer.inference.generation import generate
from tformer.nn.attention import MultiHeadAttention
from tformer.nn.llama import (
    GroupedQueryAttention,
    Llama,
    LlamaConfig,
    RMSNorm,
    SwiGLUFeedForward,
    repeat_kv,
)
from tformer.nn.positional import RotaryEmbedding

V = 50


def tiny_config(**overrides) -> LlamaConfig:
    kw = dict(vocab_size=V, block_size=32, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32,
              dim_feedforward=48, rope_base=10000.0)
    kw.update(overrides)
    return LlamaConfig(**kw)


def tiny(**overrides) -> Llama:
    torch.manual_seed(0)
    return Llama(tiny_config(**overrides)).eval()


def gqa(num_heads: int = 4, num_kv_heads: int = 2, d_model: int = 32) -> GroupedQueryAttention:
    torch.manual_seed(0)
    return GroupedQueryAttention(d_model, num_heads, num_kv_heads).eval()


def split(x: torch.Tensor, heads: int) -> torch.Tensor:
    B, T, _ = x.shape
    return x.view(B, T, heads, -1).transpose(1, 2)  # (B, heads, T, d)


# ---------------------------------------------------------------- RMSNorm and SwiGLU


def test_rmsnorm_equals_torch_rmsnorm():
    torch.manual_seed(0)
    ours, ref = RMSNorm(24, eps=1e-5), torch.nn.RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 24) * 3 + 1
    torch.testing.assert_close(ours(x), ref(x))


def test_rmsnorm_output_has_unit_root_mean_square_before_the_gain():
    x = torch.randn(4, 7, 16) * 10
    y = RMSNorm(16, eps=0.0)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4, 7))
    assert not torch.allclose(y.mean(-1), torch.zeros(4, 7), atol=1e-3)  # the mean is not removed


def test_swiglu_equals_swish_gate_times_up_then_down():
    torch.manual_seed(0)
    ffn = SwiGLUFeedForward(8, 20)
    x = torch.randn(2, 3, 8)
    a = x @ ffn.gate.weight.T
    swish = a * torch.sigmoid(a)  # Swish_β with β = 1 (Ramachandran et al., 2017)
    torch.testing.assert_close(ffn(x), (swish * (x @ ffn.up.weight.T)) @ ffn.down.weight.T)
    assert all(m.bias is None for m in (ffn.gate, ffn.up, ffn.down))


# ---------------------------------------------------------------- grouped-query attention


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_gqa_equals_sdpa_with_enable_gqa_and_with_kv_heads_repeated_by_hand(num_kv_heads):
    attn = gqa(num_kv_heads=num_kv_heads)
    x = torch.randn(2, 6, 32)
    q = split(x @ attn.w_q.weight.T, 4)
    k = split(x @ attn.w_k.weight.T, num_kv_heads)
    v = split(x @ attn.w_v.weight.T, num_kv_heads)
    fused = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    n_rep = 4 // num_kv_heads
    k_rep = torch.stack([k[:, h // n_rep] for h in range(4)], dim=1)  # query head h uses KV head h // n_rep
    v_rep = torch.stack([v[:, h // n_rep] for h in range(4)], dim=1)
    scores = (q @ k_rep.transpose(-2, -1)) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(6, 6).triu(1).bool(), float("-inf"))
    by_hand = torch.softmax(scores, -1) @ v_rep
    for ref in (fused, by_hand):
        torch.testing.assert_close(attn(x), ref.transpose(1, 2).reshape(2, 6, 32) @ attn.w_o.weight.T)
    torch.testing.assert_close(repeat_kv(k, n_rep), k_rep)


def test_gqa_math_path_equals_fused_path_and_keeps_weights():
    attn = gqa()
    x = torch.randn(2, 5, 32)
    fused = attn(x)
    attn.keep_weights = True
    torch.testing.assert_close(attn(x), fused)
    assert attn.attn_weights.shape == (2, 4, 5, 5)
    assert attn.attn_weights.triu(1).eq(0).all()  # causal: no weight on the future


def test_gqa_with_as_many_kv_heads_as_query_heads_is_multi_head_attention():
    attn = gqa(num_kv_heads=4)
    mha = MultiHeadAttention(32, 4, bias=False).eval()
    for ours, theirs in ((attn.w_q, mha.w_q), (attn.w_k, mha.w_k), (attn.w_v, mha.w_v), (attn.w_o, mha.w_o)):
        theirs.weight.data.copy_(ours.weight.data)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x), mha(x, x, x, is_causal=True))


def test_gqa_cache_holds_only_the_kv_heads_and_gives_the_full_pass_outputs():
    attn = gqa(num_heads=4, num_kv_heads=1)
    rope = RotaryEmbedding(8, max_len=16)
    x = torch.randn(2, 9, 32)
    full = attn(x, rope=rope)
    cache = Llama(tiny_config(num_layers=1)).new_caches()[0]
    steps = [attn(x[:, :4], cache=cache, rope=rope)]  # a prompt of 4, then one token at a time
    steps += [attn(x[:, t : t + 1], cache=cache, rope=rope, start=t) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)
    assert cache.k.shape == (2, 1, 9, 8)  # 4× smaller than the (2, 4, 9, 8) of multi-head attention


def test_rotary_pairs_of_interleaved_weights_equal_rotate_half_of_the_original_weights():
    """llama.cpp stores W_q, W_k with each head's rows (i, i + d/2) moved to (2i, 2i + 1); tformer's
    RotaryEmbedding rotates (2i, 2i + 1) pairs, Hugging Face's rotate_half rotates (i, i + d/2).
    Both give the same attention scores (the permutation cancels in q·k)."""
    torch.manual_seed(0)
    d, T, base = 8, 6, 100000.0
    q, k = torch.randn(2, T, d), torch.randn(2, T, d)  # in Hugging Face's (rotate_half) order
    inv_freq = base ** (-torch.arange(0, d, 2).double() / d)
    angle = torch.arange(T).double()[:, None] * inv_freq  # (T, d/2)
    cos, sin = torch.cat([angle.cos()] * 2, -1).float(), torch.cat([angle.sin()] * 2, -1).float()

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((-x[..., d // 2 :], x[..., : d // 2]), dim=-1)

    ref = (q * cos + rotate_half(q) * sin) @ (k * cos + rotate_half(k) * sin).transpose(-2, -1)
    interleave = torch.arange(d).view(2, d // 2).T.reshape(-1)  # [0, d/2, 1, d/2+1, …]
    rope = RotaryEmbedding(d, max_len=T, base=base)
    ours = rope(q[..., interleave]) @ rope(k[..., interleave]).transpose(-2, -1)
    torch.testing.assert_close(ours, ref)


# ---------------------------------------------------------------- the model


def test_logits_shape_loss_and_ignored_targets():
    model = tiny()
    idx, targets = torch.randint(0, V, (2, 9)), torch.randint(0, V, (2, 9))
    logits = model(idx)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 9, V)
    _, loss = model(idx, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1)))
    targets[:, :4] = -100  # ignored, like Hugging Face's labels at padding
    _, loss = model(idx, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits[:, 4:].reshape(-1, V), targets[:, 4:].reshape(-1)))


def test_parameter_count_with_tied_and_untied_embeddings():
    c = tiny_config()
    kv = c.num_kv_heads * c.head_dim
    per_block = 2 * c.d_model * c.d_model + 2 * c.d_model * kv + 3 * c.d_model * c.dim_feedforward + 2 * c.d_model
    tied = V * c.d_model + c.num_layers * per_block + c.d_model
    assert sum(p.numel() for p in tiny().parameters()) == tied
    assert sum(p.numel() for p in tiny(tie_weights=False).parameters()) == tied + V * c.d_model
    with torch.device("meta"):  # shapes only, no memory
        smollm2 = Llama(LlamaConfig.smollm2_135m())
    assert sum(p.numel() for p in smollm2.parameters()) == 134_515_008


def test_changing_a_future_token_leaves_earlier_logits_unchanged():
    model = tiny()
    idx = torch.randint(0, V, (1, 10))
    changed = idx.clone()
    changed[0, 6] = (idx[0, 6] + 1) % V
    torch.testing.assert_close(model(idx)[:, :6], model(changed)[:, :6])
    assert not torch.allclose(model(idx)[:, 6:], model(changed)[:, 6:])


def test_cached_decoding_equals_the_full_pass():
    model = tiny()
    idx = torch.randint(0, V, (2, 12))
    full = model(idx)
    caches = model.new_caches()
    steps = [model(idx[:, :5], caches=caches)]
    steps += [model(idx[:, t : t + 1], caches=caches) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_give_the_logits_of_the_unpadded_prompts(side):
    model = tiny()
    torch.manual_seed(1)
    prompts = [torch.randint(0, V, (n,)) for n in (7, 3, 5)]
    T = 7
    ids = torch.zeros(3, T, dtype=torch.long)
    attention_mask = torch.zeros(3, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        cols = slice(T - len(p), T) if side == "left" else slice(0, len(p))
        ids[i, cols], attention_mask[i, cols] = p, 1
    logits = model(ids, attention_mask=attention_mask)
    assert torch.isfinite(logits).all()  # a left pad sees no real key, yet gives no NaN
    for i, p in enumerate(prompts):
        real = attention_mask[i].bool()
        torch.testing.assert_close(logits[i, real], model(p[None])[0], atol=1e-5, rtol=1e-5)


def test_left_padded_batched_decoding_with_a_cache_equals_each_prompt_alone():
    model = tiny()
    torch.manual_seed(2)
    long, short = torch.randint(0, V, (6,)), torch.randint(0, V, (2,))
    ids = torch.stack([long, torch.cat([torch.zeros(4, dtype=torch.long), short])])
    mask = torch.tensor([[1] * 6, [0] * 4 + [1] * 2])
    caches = model.new_caches()
    logits = model(ids, caches=caches, attention_mask=mask)
    out = ids
    for _ in range(4):  # greedy, one token per step for both rows at once
        nxt = logits[:, -1].argmax(-1, keepdim=True)  # (2, 1)
        out = torch.cat([out, nxt], dim=1)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        logits = model(nxt, caches=caches, attention_mask=mask)
    for i, prompt in enumerate((long, short)):
        alone = prompt[None]
        for _ in range(4):
            alone = torch.cat([alone, model(alone)[:, -1].argmax(-1, keepdim=True)], 1)
        assert torch.equal(out[i, -4:], alone[0, -4:])


def test_tied_weights_share_one_matrix():
    model = tiny()
    assert model.lm_head.weight is model.tok_emb.weight
    untied = tiny(tie_weights=False)
    assert untied.lm_head.weight is not untied.tok_emb.weight


def test_generate_drives_llama_with_and_without_the_cache():
    model = tiny()
    idx = torch.randint(0, V, (2, 4))
    cached = generate(model, idx, 10, use_cache=True)
    assert cached.shape == (2, 14)
    assert torch.equal(cached, generate(model, idx, 10, use_cache=False))


# ---------------------------------------------------------------- against Hugging Face


def _hf_llama(config: LlamaConfig):
    transformers = pytest.importorskip("transformers", reason="needs transformers: pip install tformer[pretrained]")
    c = config
    hf_config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.dim_feedforward,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads, max_position_embeddings=c.block_size,
        rms_norm_eps=c.norm_eps, rope_theta=c.rope_base, tie_word_embeddings=c.tie_weights,
        attention_bias=False, mlp_bias=False,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(hf_config).eval()


def _interleave_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows (i, i + d/2) of every head → (2i, 2i + 1): the permutation llama.cpp applies."""
    return w.view(heads, 2, -1, w.shape[-1]).transpose(1, 2).reshape(w.shape)


def test_llama_equals_huggingface_llama_with_the_same_weights():
    c = tiny_config(rope_base=100000.0)
    hf = _hf_llama(c)
    model = tiny(rope_base=100000.0)
    sd = hf.state_dict()
    ours = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        ours |= {
            f"blocks.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
            f"blocks.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
            f"blocks.{i}.attn.w_q.weight": _interleave_rows(sd[p + "self_attn.q_proj.weight"], c.num_heads),
            f"blocks.{i}.attn.w_k.weight": _interleave_rows(sd[p + "self_attn.k_proj.weight"], c.num_kv_heads),
            f"blocks.{i}.attn.w_v.weight": sd[p + "self_attn.v_proj.weight"],
            f"blocks.{i}.attn.w_o.weight": sd[p + "self_attn.o_proj.weight"],
            f"blocks.{i}.ffn.gate.weight": sd[p + "mlp.gate_proj.weight"],
            f"blocks.{i}.ffn.up.weight": sd[p + "mlp.up_proj.weight"],
            f"blocks.{i}.ffn.down.weight": sd[p + "mlp.down_proj.weight"],
        }
    ours["lm_head.weight"] = ours["tok_emb.weight"]
    model.load_state_dict(ours)
    ids = torch.randint(0, V, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
    logits = model(ids, attention_mask=mask)
    torch.testing.assert_close(logits[mask.bool()], ref[mask.bool()], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides, error, words",
    [
        (dict(d_model=30), ValueError, "d_model=30 must be divisible by num_heads=4"),
        (dict(num_kv_heads=3), ValueError, "num_heads=4 must be divisible by num_kv_heads=3"),
        (dict(d_model=12, num_heads=4, num_kv_heads=4), ValueError, "head_dim = d_model/num_heads = 3 must be even"),
        (dict(vocab_size=0), ValueError, "vocab_size=0"),
        (dict(num_kv_heads=2.0), TypeError, "num_kv_heads must be an int"),
        (dict(rope_base=1.0), ValueError, "rope_base=1.0 must be a finite number > 1"),
        (dict(rope_base="big"), TypeError, "rope_base must be a float"),
        (dict(norm_eps=0), ValueError, "norm_eps=0"),
        (dict(tie_weights=1), TypeError, "tie_weights must be a bool"),
    ],
)
def test_config_rejects_bad_values_naming_them(overrides, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        tiny_config(**overrides)


def test_grouped_query_attention_checks_its_head_counts():
    with pytest.raises(ValueError, match="num_heads=6 must be divisible by num_kv_heads=4"):
        GroupedQueryAttention(48, 6, 4)
    with pytest.raises(ValueError, match="d_model=50 must be divisible by num_heads=4"):
        GroupedQueryAttention(50, 4, 2)


def test_rmsnorm_keeps_a_half_precision_input_in_its_dtype_and_computes_in_float32():
    x = torch.randn(2, 3, 16) * 100
    out = RMSNorm(16).to(torch.bfloat16)(x.to(torch.bfloat16))  # a bf16 model, as in chapter 12
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), RMSNorm(16)(x), atol=2e-2, rtol=2e-2)


def test_model_needs_a_llama_config():
    with pytest.raises(TypeError, match="config must be a LlamaConfig, got dict"):
        Llama({"vocab_size": 10})


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda m: m(torch.zeros(1, 0, dtype=torch.long)), ValueError, "empty prompt"),
        (lambda m: m(torch.tensor([[1, V]])), ValueError, f"token id {V}, outside the vocabulary 0..{V - 1}"),
        (lambda m: m(torch.tensor([[1, -1]])), ValueError, "token id -1"),
        (lambda m: m(torch.zeros(1, 33, dtype=torch.long)), ValueError, "exceed the context of block_size=32"),
        (lambda m: m(torch.zeros(1, 3)), TypeError, "idx must hold integer token ids"),
        (lambda m: m(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long)),
         ValueError, r"attention_mask must be .* shape \(B, cached \+ T\) = \(2, 3\)"),
        (lambda m: m(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 3)),
         ValueError, "attention_mask must be an integer or bool tensor"),
        (lambda m: m(torch.zeros(1, 3, dtype=torch.long), caches=m.new_caches()[:1]), ValueError,
         r"one KVCache per block \(2\), got 1"),
        (lambda m: m(torch.zeros(1, 3, dtype=torch.long), caches=m.new_caches(), start=2), ValueError,
         r"start=2 must equal the number of cached positions \(0\)"),
    ],
)
def test_forward_rejects_bad_input_with_a_clear_message(call, error, words):
    with pytest.raises(error, match=words):
        call(tiny())
