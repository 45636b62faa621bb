"""The full Transformer: sizes, masks (no leak), caches, config round trip, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tformer.nn.transformer import (
    Decoder,
    Encoder,
    Transformer,
    TransformerConfig,
    count_parameters,
)


def small_config(**overrides) -> TransformerConfig:
    args = dict(src_vocab_size=23, tgt_vocab_size=19, d_model=32, num_heads=4, num_encoder_layers=2,
                num_decoder_layers=2, dim_feedforward=64, max_len=16, dropout=0.0)
    return TransformerConfig(**(args | overrides))


@pytest.fixture
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(small_config()).eval()


def ids(B: int, T: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (B, T), generator=g)  # 1.. so no accidental padding


def paper_count(d: int, d_ff: int, n: int, vocab: int) -> int:
    """The count written out term by term (shared vocabulary, tied embeddings)."""
    attn = 4 * (d * d + d)  # W_Q, W_K, W_V, W_O with biases
    ffn = d * d_ff + d_ff + d_ff * d + d
    ln = 2 * d
    enc_layer = attn + ffn + 2 * ln
    dec_layer = 2 * attn + ffn + 3 * ln
    return vocab * d + n * enc_layer + n * dec_layer + vocab  # + output bias


def _count_on_meta(config: TransformerConfig) -> int:
    with torch.device("meta"):  # no memory, no init: only shapes
        return count_parameters(Transformer(config))


def test_base_model_has_about_65M_parameters_as_in_table_3():
    n = _count_on_meta(TransformerConfig.base())
    assert n == paper_count(512, 2048, 6, 37000)
    assert abs(n - 65e6) / 65e6 < 0.05


def test_big_model_has_about_213M_parameters_as_in_table_3():
    n = _count_on_meta(TransformerConfig.big())
    assert n == paper_count(1024, 4096, 6, 37000)
    assert abs(n - 213e6) / 213e6 < 0.05


def test_presets_follow_table_3():
    base, big = TransformerConfig.base(), TransformerConfig.big()
    assert (base.d_model, base.dim_feedforward, base.num_heads, base.dropout) == (512, 2048, 8, 0.1)
    assert (big.d_model, big.dim_feedforward, big.num_heads, big.dropout) == (1024, 4096, 16, 0.3)
    assert base.num_encoder_layers == base.num_decoder_layers == 6
    assert base.share_embeddings and base.tie_output and not base.norm_first
    two_vocabs = TransformerConfig.base(1000, 2000, dropout=0.2)
    assert not two_vocabs.share_embeddings and two_vocabs.dropout == 0.2
    with pytest.raises(TypeError, match="unknown"):
        TransformerConfig.base(d_modle=3)


def test_tied_and_shared_weights_are_one_tensor_counted_once():
    torch.manual_seed(0)
    shared = Transformer(small_config(tgt_vocab_size=23, share_embeddings=True))
    assert shared.tgt_embed.weight is shared.src_embed.weight is shared.generator.weight
    untied = Transformer(small_config(tgt_vocab_size=23, share_embeddings=False, tie_output=False))
    assert untied.generator.weight is not untied.tgt_embed.weight
    assert count_parameters(untied) - count_parameters(shared) == 2 * 23 * 32
    by_hand = sum(p.numel() for p in set(shared.parameters()))
    assert count_parameters(shared) == by_hand


def test_count_parameters_trainable_only():
    m = Transformer(small_config())
    total = count_parameters(m)
    m.src_embed.weight.requires_grad_(False)
    assert count_parameters(m) == total - 23 * 32
    assert count_parameters(m, trainable_only=False) == total
    with pytest.raises(TypeError, match="nn.Module"):
        count_parameters("model")


def test_forward_returns_logits_over_target_vocabulary(model):
    out = model(ids(3, 7, 23), ids(3, 5, 19))
    assert out.shape == (3, 5, 19) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_future_target_tokens_do_not_leak(model):
    src, tgt = ids(2, 6, 23), ids(2, 8, 19)
    out = model(src, tgt)
    for t in range(7):
        changed = tgt.clone()
        changed[:, t + 1 :] = ids(2, 8 - t - 1, 19, seed=t + 1)
        new = model(src, changed)
        assert torch.equal(new[:, : t + 1], out[:, : t + 1]), t
    assert not torch.equal(new, out)  # the last positions did see the change


def test_padded_source_positions_do_not_change_the_output(model):
    src, tgt = ids(2, 6, 23), ids(2, 4, 19)
    src[1, 3:] = 0  # pad_id
    out = model(src, tgt)
    # give the padding positions other content through an explicit mask: same answer
    mask = model.make_src_mask(src)
    other = src.clone()
    other[1, 3:] = ids(1, 3, 23, seed=5)
    torch.testing.assert_close(model(other, tgt, src_mask=mask), out, atol=0, rtol=0)


def test_default_masks(model):
    src = torch.tensor([[5, 6, 0]])
    tgt = torch.tensor([[1, 2, 0]])
    assert model.make_src_mask(src).tolist() == [[[[True, True, False]]]]
    assert model.make_tgt_mask(tgt).tolist() == [[[[True, False, False],
                                                   [True, True, False],
                                                   [True, True, False]]]]


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_decoding_equals_full_sequence(norm_first):
    torch.manual_seed(0)
    m = Transformer(small_config(norm_first=norm_first)).eval().double()
    src, tgt = ids(2, 6, 23), ids(2, 7, 19)
    src[0, 4:] = 0
    src_mask = m.make_src_mask(src)
    memory = m.encode(src)
    full = m.decode(tgt, memory, src_mask)
    torch.testing.assert_close(full, m(src, tgt), atol=1e-12, rtol=0)
    caches = m.new_caches()
    steps = [m.decode(tgt[:, t : t + 1], memory, src_mask, caches=caches, start=t) for t in range(7)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=0)
    caches = m.new_caches()  # a prompt of 3 tokens at once, then one by one
    parts = [m.decode(tgt[:, :3], memory, src_mask, caches=caches)]
    parts += [m.decode(tgt[:, t : t + 1], memory, src_mask, caches=caches, start=t) for t in range(3, 7)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-10, rtol=0)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = Transformer(small_config(dropout=0.1, norm_first=True))
    m(ids(2, 5, 23), ids(2, 4, 19)).logsumexp(-1).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_same_seed_same_model_and_output():
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        m = Transformer(small_config(dropout=0.1))
        outs.append(m(ids(2, 5, 23), ids(2, 4, 19)))  # training mode: dropout draws seeded too
    assert torch.equal(outs[0], outs[1])


def test_pre_ln_stack_ends_with_a_layer_norm_and_post_ln_stack_does_not():
    assert Encoder(small_config()).norm is None and Decoder(small_config()).norm is None
    x = torch.randn(2, 5, 32)
    for norm_first in (False, True):
        enc = Encoder(small_config(norm_first=norm_first)).eval()
        by_hand = x
        for layer in enc.layers:
            by_hand = layer(by_hand)
        if norm_first:  # pre-LN: the stack's output is LayerNorm(last layer's output)
            assert isinstance(enc.norm, torch.nn.LayerNorm) and enc.norm.eps == enc.layers[0].norm1.eps
            by_hand = F.layer_norm(by_hand, (32,), enc.norm.weight, enc.norm.bias, enc.norm.eps)
        torch.testing.assert_close(enc(x), by_hand)
    dec = Decoder(small_config(norm_first=True))
    assert isinstance(dec.norm, torch.nn.LayerNorm)


def test_kept_attention_weights_do_not_change_the_output(model):
    src, tgt = ids(2, 6, 23), ids(2, 4, 19)
    fused = model(src, tgt)
    model.keep_attention_weights(True)
    torch.testing.assert_close(model(src, tgt), fused, atol=1e-5, rtol=0)
    weights = model.attention_weights()
    assert weights["decoder.layers.1.cross_attn"].shape == (2, 4, 4, 6)
    assert weights["encoder.layers.0.self_attn"].shape == (2, 4, 6, 6)
    torch.testing.assert_close(weights["decoder.layers.0.self_attn"].sum(-1), torch.ones(2, 4, 4))
    assert weights["decoder.layers.0.self_attn"][0, 0].triu(1).abs().max() == 0  # causal


def test_config_json_round_trip():
    c = small_config(norm_first=True, activation="gelu")
    again = TransformerConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c
    with pytest.raises(ValueError, match="unknown TransformerConfig fields"):
        TransformerConfig.from_dict(c.to_dict() | {"heads": 3})
    with pytest.raises(TypeError, match="dict"):
        TransformerConfig.from_dict([1, 2])


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        (dict(d_model=30), ValueError, "d_model=30 must be divisible by num_heads=4"),
        (dict(num_heads=0), ValueError, "num_heads=0"),
        (dict(src_vocab_size=0), ValueError, "src_vocab_size=0"),
        (dict(tgt_vocab_size=2.5), TypeError, "tgt_vocab_size"),
        (dict(dropout=1.0), ValueError, "dropout=1.0"),
        (dict(dropout=-0.1), ValueError, "dropout=-0.1"),
        (dict(max_len=0), ValueError, "max_len=0"),
        (dict(num_decoder_layers=-2), ValueError, "num_decoder_layers=-2"),
        (dict(activation="swish"), ValueError, "activation='swish'"),
        (dict(layer_norm_eps=-1.0), ValueError, "layer_norm_eps"),
        (dict(pad_id=19), ValueError, "pad_id=19"),
        (dict(share_embeddings=True), ValueError, "share_embeddings=True needs one shared vocabulary"),
        (dict(norm_first="yes"), TypeError, "norm_first"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(overrides, error, words):
    with pytest.raises(error, match=words):
        small_config(**overrides)


def test_bad_forward_inputs_are_rejected(model):
    src, tgt = ids(2, 5, 23), ids(2, 4, 19)
    with pytest.raises(TypeError, match="src must hold integer token ids"):
        model(src.float(), tgt)
    with pytest.raises(ValueError, match=r"tgt holds token id 19, outside the vocabulary \[0, 19\)"):
        model(src, torch.full((2, 4), 19))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.full((2, 5), -1), tgt)
    with pytest.raises(ValueError, match="beyond max_len=16"):
        model(ids(2, 17, 23), tgt)
    with pytest.raises(ValueError, match=r"src must be token ids of shape \(B, T\)"):
        model(src[0], tgt)
    with pytest.raises(ValueError, match="same batch size"):
        model(src, tgt[:1])
    with pytest.raises(ValueError, match="src_mask of shape"):
        model(src, tgt, src_mask=torch.ones(2, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="tgt_mask of shape"):
        model(src, tgt, tgt_mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="tgt_mask must have dtype torch.bool"):
        model(src, tgt, tgt_mask=torch.ones(4, 4))
    with pytest.raises(TypeError, match="TransformerConfig"):
        Transformer({"src_vocab_size": 3})


def test_bad_decode_inputs_are_rejected(model):
    memory = model.encode(ids(2, 5, 23))
    with pytest.raises(ValueError, match="memory must have shape"):
        model.decode(ids(2, 3, 19), memory[:, :, :8])
    caches = model.new_caches()
    model.decode(ids(2, 2, 19), memory, caches=caches)
    with pytest.raises(ValueError, match="start=0 must equal the number of cached positions"):
        model.decode(ids(2, 1, 19), memory, caches=caches)
    with pytest.raises(ValueError, match="list of 2"):
        model.decode(ids(2, 1, 19), memory, caches=caches[:1], start=2)
    with pytest.raises(ValueError, match="beyond max_len"):
        model.decode(ids(2, 1, 19), memory, caches=caches, start=16)


def test_architecture_diagram_is_drawn_from_the_model():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tformer.course.diagram import draw_architecture

    for norm_first in (False, True):
        m = Transformer(small_config(norm_first=norm_first, tgt_vocab_size=23, share_embeddings=True))
        fig = draw_architecture(m)
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert any("encoder.layers[i].self_attn" in t for t in texts)
        assert any("decoder.layers[i].cross_attn" in t for t in texts)
        assert any("tgt_embed.weight" in t for t in texts)  # tied output marked
        assert any("N = 2" in t for t in texts)
        assert any("encoder.norm" == t for t in texts) == norm_first  # final LN only in pre-LN
        assert ("pre-LN" in fig.axes[0].get_title()) == norm_first
        plt.close(fig)
    fig, ax = plt.subplots()
    assert draw_architecture(m, ax=ax) is fig
    plt.close(fig)
    with pytest.raises(TypeError, match="tformer.nn.transformer.Transformer"):
        draw_architecture(torch.nn.Linear(2, 2))




def test_attention_and_activation_dropout_default_to_dropout_and_can_be_set_apart():
    from tformer.nn.transformer import Transformer, TransformerConfig

    same = Transformer(TransformerConfig(11, 13, d_model=16, num_heads=2, num_encoder_layers=1,
                                         num_decoder_layers=1, dim_feedforward=32, dropout=0.2))
    layer = same.decoder.layers[0]
    assert (layer.self_attn.dropout, layer.cross_attn.dropout, layer.ffn.dropout.p, layer.dropout1.p) == (
        0.2, 0.2, 0.2, 0.2)
    paper = Transformer(TransformerConfig(11, 13, d_model=16, num_heads=2, num_encoder_layers=1,
                                          num_decoder_layers=1, dim_feedforward=32, dropout=0.2,
                                          attention_dropout=0.0, activation_dropout=0.0))
    enc, dec = paper.encoder.layers[0], paper.decoder.layers[0]
    assert (enc.self_attn.dropout, enc.ffn.dropout.p, enc.dropout1.p, enc.dropout2.p) == (0.0, 0.0, 0.2, 0.2)
    assert (dec.self_attn.dropout, dec.cross_attn.dropout, dec.ffn.dropout.p, dec.dropout3.p) == (0.0, 0.0, 0.0, 0.2)
    assert TransformerConfig.from_dict(paper.config.to_dict()) == paper.config
    with pytest.raises(ValueError, match="attention_dropout=1.5"):
        TransformerConfig(11, 13, attention_dropout=1.5)
