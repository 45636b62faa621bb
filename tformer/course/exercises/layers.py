"""Checkers for the exercises of chapters 5–7: the FFN, encoder and decoder layers, parameter counts.

Every checker compares the reader's function with the package (``tformer.nn.layers``,
``tformer.nn.transformer``) on a few cases. On a failure it also computes the usual wrong versions
(ReLU forgotten, pre-LN written for post-LN, residual left out, biases not counted, …) and, when
the reader's answer equals one of them, the hint names that mistake.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tformer.course.exercises import CheckFailed
from tformer.masks import causal_mask, padding_mask
from tformer.nn.layers import DecoderLayer, EncoderLayer
from tformer.nn.transformer import Transformer, TransformerConfig, count_parameters

ATOL = 1e-5


def _close(a: object, b: torch.Tensor) -> bool:
    return (isinstance(a, torch.Tensor) and a.shape == b.shape and bool(torch.isfinite(a).all())
            and torch.allclose(a.double(), b.double(), atol=ATOL, rtol=1e-4))


def _fail(case: str, got: object, want: torch.Tensor, mistakes: dict[str, torch.Tensor], hint: str) -> None:
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{case}: expected a torch.Tensor, got {type(got).__name__}", hint)
    if got.shape != want.shape:
        raise CheckFailed(f"{case}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}", hint)
    for mistake_hint, wrong in mistakes.items():
        if _close(got, wrong):
            hint = mistake_hint
            break
    diff = float((got.double() - want.double()).abs().max())
    raise CheckFailed(f"{case}: max abs diff {diff:.3g}", hint)


def _random_norms(layer: nn.Module, seed: int) -> None:
    # LayerNorm starts as the identity affine map; random values make a misplaced norm visible.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


# --- layers.feed_forward ---------------------------------------------------------------------

HINT_RELU = "FFN(x) = max(0, x W1 + b1) W2 + b2: apply the ReLU between the two linear maps (Eq. 2)."
HINT_RELU_LAST = "the ReLU goes after the first linear map, not after the second."
HINT_FFN = "compute max(0, x @ W1 + b1) @ W2 + b2 with W1 (d_model, d_ff) and W2 (d_ff, d_model)."


def check_feed_forward(fn: Callable) -> int:
    """``fn(x, W1, b1, W2, b2)`` with x (..., d_model), W1 (d_model, d_ff) → (..., d_model)."""
    cases = [((2, 5, 8), 32), ((7, 4), 16), ((1, 3, 16), 64)]
    for i, (shape, d_ff) in enumerate(cases, start=1):
        g = torch.Generator().manual_seed(i)
        d = shape[-1]
        x = torch.randn(shape, generator=g)
        w1, b1 = torch.randn(d, d_ff, generator=g) / d**0.5, torch.randn(d_ff, generator=g)
        w2, b2 = torch.randn(d_ff, d, generator=g) / d_ff**0.5, torch.randn(d, generator=g)
        want = F.relu(x @ w1 + b1) @ w2 + b2
        got = fn(x.clone(), w1.clone(), b1.clone(), w2.clone(), b2.clone())
        if not _close(got, want):
            mistakes = {HINT_RELU: (x @ w1 + b1) @ w2 + b2, HINT_RELU_LAST: F.relu((x @ w1 + b1) @ w2 + b2)}
            _fail(f"case {i} (x {shape}, d_ff={d_ff})", got, want, mistakes, HINT_FFN)
    return len(cases)


# --- layers.encoder_layer_post_ln / _pre_ln ----------------------------------------------------

HINT_POST = ("post-LN (the paper): x = norm1(x + self_attn(x, x, x, mask)); "
             "then x = norm2(x + ffn(x)). The LayerNorm comes after each residual sum.")
HINT_PRE = ("pre-LN: x = x + self_attn(h, h, h, mask) with h = norm1(x); then x = x + ffn(norm2(x)). "
            "The LayerNorm is applied to the sub-layer's input only; the residual path stays un-normalised.")
HINT_GOT_PRE = "you wrote pre-LN (LayerNorm before the sub-layer); the paper's post-LN normalises after the sum."
HINT_GOT_POST = "you wrote post-LN (LayerNorm after the sum); pre-LN normalises only the sub-layer's input."
HINT_NO_RESIDUAL = "the residual connection is missing: add the sub-layer's input to its output (x + Sublayer(x))."
HINT_MASK = "pass the mask to self_attn (mask=mask) so padded keys are ignored."


def _encoder_variants(layer: EncoderLayer, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    a, f, n1, n2 = layer.self_attn, layer.ffn, layer.norm1, layer.norm2
    post = n1(x + a(x, x, x, mask=mask))
    post = n2(post + f(post))
    h = x + a(n1(x), n1(x), n1(x), mask=mask)
    pre = h + f(n2(h))
    no_res = n1(a(x, x, x, mask=mask))
    no_res = n2(f(no_res))
    no_mask = n1(x + a(x, x, x))
    no_mask = n2(no_mask + f(no_mask))
    return {"post": post, "pre": pre, "no_res": no_res, "no_mask": no_mask}


def _check_encoder_layer(fn: Callable, norm_first: bool) -> int:
    cases = [(2, 5, 16, 4, [5, 3]), (1, 4, 8, 2, [4]), (3, 6, 16, 2, [6, 2, 4])]
    for i, (B, T, d, h, lengths) in enumerate(cases, start=1):
        torch.manual_seed(100 + i)
        layer = EncoderLayer(d, h, 2 * d, dropout=0.0, norm_first=norm_first).eval()
        _random_norms(layer, i)
        x = torch.randn(B, T, d)
        mask = padding_mask(lengths, max_len=T)
        with torch.no_grad():
            want = layer(x, mask)
            got = fn(layer, x.clone(), mask)
        if not _close(got, want):
            with torch.no_grad():
                v = _encoder_variants(layer, x, mask)
            mistakes = {HINT_GOT_PRE if not norm_first else HINT_GOT_POST: v["post" if norm_first else "pre"],
                        HINT_NO_RESIDUAL: v["no_res"], HINT_MASK: v["no_mask"]}
            _fail(f"case {i} (B={B}, T={T}, lengths {lengths})", got, want, mistakes,
                  HINT_PRE if norm_first else HINT_POST)
    return len(cases)


def check_encoder_layer_post_ln(fn: Callable) -> int:
    """``fn(layer, x, mask)``: the post-LN encoder layer from ``layer``'s submodules (dropout off)."""
    return _check_encoder_layer(fn, norm_first=False)


def check_encoder_layer_pre_ln(fn: Callable) -> int:
    """``fn(layer, x, mask)``: the pre-LN encoder layer from ``layer``'s submodules (dropout off)."""
    return _check_encoder_layer(fn, norm_first=True)


# --- layers.decoder_layer -------------------------------------------------------------------

HINT_DECODER = ("post-LN decoder layer: x = norm1(x + self_attn(x, x, x, tgt_mask)); "
                "x = norm2(x + cross_attn(x, memory, memory, memory_mask)); x = norm3(x + ffn(x)).")
HINT_CROSS_SWAPPED = ("in cross-attention the queries come from the decoder and the keys and values "
                      "from the encoder: cross_attn(x, memory, memory), not cross_attn(memory, x, x).")
HINT_NO_CAUSAL = "the self-attention needs tgt_mask (the causal mask), or position t sees the future."
HINT_CROSS_SELF = "the second attention must look at memory (the encoder output), not at x again."


def _call_watching_cross_attention(fn: Callable, layer: DecoderLayer, x, memory, tgt_mask,
                                   memory_mask) -> tuple[object, bool]:
    """Run ``fn`` and report whether it fed ``memory`` to ``layer.cross_attn`` as the queries.

    A swapped call usually crashes inside the attention (the memory mask no longer fits), so
    the swap is seen by a hook on the way in, before that error, and named instead of it.
    """
    S, T = memory.shape[1], x.shape[1]
    seen: list[bool] = []

    def hook(module, args, kwargs):
        query = args[0] if args else kwargs.get("query")
        key = args[1] if len(args) > 1 else kwargs.get("key")
        if isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor):
            seen.append(query.shape[1] == S and key.shape[1] == T)

    handle = layer.cross_attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        got = fn(layer, x.clone(), memory.clone(), tgt_mask, memory_mask)
    except Exception:
        if seen and seen[0]:
            return None, True
        raise
    finally:
        handle.remove()
    return got, bool(seen and seen[0])


def check_decoder_layer(fn: Callable) -> int:
    """``fn(layer, x, memory, tgt_mask, memory_mask)``: the post-LN decoder layer (dropout off)."""
    cases = [(2, 4, 6, 16, 4), (1, 5, 3, 8, 2), (3, 3, 5, 16, 2)]
    for i, (B, T, S, d, h) in enumerate(cases, start=1):
        torch.manual_seed(200 + i)
        layer = DecoderLayer(d, h, 2 * d, dropout=0.0).eval()
        _random_norms(layer, i)
        x, memory = torch.randn(B, T, d), torch.randn(B, S, d)
        tgt_mask = causal_mask(T)
        memory_mask = padding_mask([S - j % S for j in range(B)], max_len=S)
        sa, ca, f = layer.self_attn, layer.cross_attn, layer.ffn
        n1, n2, n3 = layer.norm1, layer.norm2, layer.norm3
        with torch.no_grad():
            want = layer(x, memory, tgt_mask, memory_mask)
            got, swapped = _call_watching_cross_attention(fn, layer, x, memory, tgt_mask, memory_mask)
        if swapped:
            raise CheckFailed(f"case {i} (T={T} targets, S={S} sources): cross-attention got the "
                              "encoder output as its queries", HINT_CROSS_SWAPPED)
        if not _close(got, want):
            with torch.no_grad():
                y = n1(x + sa(x, x, x, mask=None))
                z = n2(y + ca(y, memory, memory, mask=memory_mask))
                no_causal = n3(z + f(z))
                y = n1(x + sa(x, x, x, mask=tgt_mask))
                z = n2(y + ca(y, y, y, mask=tgt_mask))
                cross_self = n3(z + f(z))
            mistakes = {HINT_NO_CAUSAL: no_causal, HINT_CROSS_SELF: cross_self}
            hint = HINT_DECODER
            if isinstance(got, torch.Tensor) and got.shape == (B, S, d) and S != T:
                hint = HINT_CROSS_SWAPPED
            _fail(f"case {i} (T={T} targets, S={S} sources)", got, want, mistakes, hint)
    return len(cases)


# --- model.parameter_count --------------------------------------------------------------------

HINT_COUNT = ("add up, per encoder layer: 4 projections of d_model×d_model + d_model (W_Q, W_K, W_V, "
              "W_O with biases), the FFN 2·d_model·d_ff + d_ff + d_model, two LayerNorms of 2·d_model; "
              "per decoder layer: two attentions, the FFN, three LayerNorms; plus one vocab×d_model "
              "embedding (shared and tied) and the output bias (vocab).")
HINT_BIAS = "you left out the biases (each Linear has out_features of them; each LayerNorm has 2·d_model)."
HINT_TIED = "the tied embedding matrix is one tensor: count vocab × d_model once, not three times."
HINT_DEC_ATTN = "each decoder layer has two attentions (masked self-attention and cross-attention)."
HINT_LN = "do not forget the LayerNorms: 2·d_model parameters each, two per encoder layer, three per decoder layer."


def _count_terms(d: int, d_ff: int, n: int, vocab: int) -> dict[str, int]:
    attn, ffn, ln = 4 * (d * d + d), 2 * d * d_ff + d_ff + d, 2 * d
    right = vocab * d + n * (attn + ffn + 2 * ln) + n * (2 * attn + ffn + 3 * ln) + vocab
    no_bias = vocab * d + n * (4 * d * d + 2 * d * d_ff) + n * (8 * d * d + 2 * d * d_ff)
    return {"right": right, HINT_BIAS: no_bias, HINT_TIED: right + 2 * vocab * d,
            HINT_DEC_ATTN: right - n * attn, HINT_LN: right - 5 * n * ln}


@functools.cache
def _reference_count(d: int, d_ff: int, h: int, n: int, vocab: int) -> int:
    config = TransformerConfig.base(vocab, d_model=d, dim_feedforward=d_ff, num_heads=h,
                                    num_encoder_layers=n, num_decoder_layers=n)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return count_parameters(Transformer(config))


def check_parameter_count(fn: Callable) -> int:
    """``fn(d_model, d_ff, num_heads, num_layers, vocab_size) -> int``: parameters of a Transformer
    with one shared vocabulary and tied embeddings, exactly what ``count_parameters`` reports."""
    cases = [(512, 2048, 8, 6, 37000), (1024, 4096, 16, 6, 37000), (64, 256, 4, 2, 1000), (32, 48, 2, 3, 17)]
    for i, (d, d_ff, h, n, vocab) in enumerate(cases, start=1):
        want = _reference_count(d, d_ff, h, n, vocab)
        got = fn(d, d_ff, h, n, vocab)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = int(got.item())
        if got != want:
            terms = _count_terms(d, d_ff, n, vocab)
            hint = next((k for k, v in terms.items() if k != "right" and v == got), HINT_COUNT)
            raise CheckFailed(f"case {i} (d_model={d}, d_ff={d_ff}, h={h}, N={n}, vocab={vocab}): "
                              f"expected {want:,}, got {got!r}", hint)
    return len(cases)


CHECKS: dict[str, Callable[[Callable], int]] = {
    "layers.feed_forward": check_feed_forward,
    "layers.encoder_layer_post_ln": check_encoder_layer_post_ln,
    "layers.encoder_layer_pre_ln": check_encoder_layer_pre_ln,
    "layers.decoder_layer": check_decoder_layer,
    "model.parameter_count": check_parameter_count,
}
