"""Inputs of the wrong dtype or device get tformer's own message, naming the argument (issue 22)."""

from __future__ import annotations

import pytest
import torch

import tformer
from tformer.nn.gpt import GPT, GPTConfig
from tformer.nn.transformer import Transformer, TransformerConfig


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_attention_inputs_of_another_dtype_than_its_weights_are_named(dtype):
    attn = tformer.MultiHeadAttention(d_model=16, num_heads=2)
    x = torch.randn(2, 3, 16, dtype=dtype)
    with pytest.raises(TypeError, match=rf"query has dtype {dtype} but the attention's weights are torch.float32"):
        attn(x, x, x)


def test_attention_under_autocast_accepts_bf16_inputs_and_matches_float32():
    torch.manual_seed(0)
    attn = tformer.MultiHeadAttention(d_model=16, num_heads=2)
    x = torch.randn(2, 3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(x.bfloat16(), x.bfloat16(), x.bfloat16())
    torch.testing.assert_close(y.float(), attn(x, x, x), atol=5e-2, rtol=5e-2)


def test_attention_in_float64_throughout_is_fine():
    attn = tformer.MultiHeadAttention(d_model=16, num_heads=2).double()
    x = torch.randn(1, 4, 16, dtype=torch.float64)
    assert attn(x, x, x).dtype == torch.float64


def test_attention_inputs_on_another_device_than_its_weights_are_named():
    attn = tformer.MultiHeadAttention(d_model=16, num_heads=2).to("meta")
    x = torch.randn(1, 3, 16)
    with pytest.raises(ValueError, match=r"query is on cpu but the attention's weights are on meta"):
        attn(x, x, x)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16])
def test_small_integer_ids_are_refused_with_the_conversion_to_make(dtype):
    cfg = TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32)
    model = Transformer(cfg)
    ids = torch.ones(1, 3, dtype=dtype)
    with pytest.raises(TypeError, match=rf"src must hold token ids as torch.long \(or torch.int32\), got dtype {dtype}; convert it with src.long\(\)"):
        model(ids, ids.long())
    gpt = GPT(GPTConfig(vocab_size=20, d_model=16, num_heads=2, num_layers=1, block_size=8))
    with pytest.raises(TypeError, match=rf"got dtype {dtype}; convert it with idx.long\(\)"):
        gpt(ids)


def test_int32_ids_work_like_int64_ids():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=20, d_model=16, num_heads=2, num_layers=1, block_size=8)).eval()
    ids = torch.randint(0, 20, (2, 5))
    torch.testing.assert_close(gpt(ids.int()), gpt(ids))
