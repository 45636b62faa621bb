"""tformer.inference.attention_maps: cross-attention weights of a trained model."""

from __future__ import annotations

import torch
from helpers import padded_src, small_transformer

from tformer.inference.attention_maps import cross_attention


def test_cross_attention_rows_are_distributions_over_real_source_tokens():
    model, src = small_transformer(), padded_src()
    tgt_in = torch.tensor([[1, 4, 5, 6]] * 4)
    w = cross_attention(model, src, tgt_in)
    assert w.shape == (4, 4, 4, 7)  # (B, h, T, S)
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 4, 4))
    assert (w[1, :, :, 5:] == 0).all() and (w[3, :, :, 2:] == 0).all()
    assert not model.decoder.layers[-1].cross_attn.keep_weights  # switched back off
