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
from tformer.course.exercises._common import COMMON, close, describe, number, short
from tformer.course.exercises._text import texts
from tformer.masks import causal_mask, padding_mask
from tformer.nn.layers import DecoderLayer, EncoderLayer
from tformer.nn.transformer import Transformer, TransformerConfig, count_parameters

MESSAGES = {
    "relu": ("FFN(x) = max(0, x W1 + b1) W2 + b2: apply the ReLU between the two linear maps (Eq. 2).",
             "FFN(x) = max(0, x W1 + b1) W2 + b2：ReLU 放在两个线性变换之间（式 2）。"),
    "relu_last": ("the ReLU goes after the first linear map, not after the second.",
                  "ReLU 放在第一个线性变换之后，而不是第二个之后。"),
    "ffn": ("compute max(0, x @ W1 + b1) @ W2 + b2 with W1 (d_model, d_ff) and W2 (d_ff, d_model).",
            "计算 max(0, x @ W1 + b1) @ W2 + b2，其中 W1 的形状为 (d_model, d_ff)，W2 为 (d_ff, d_model)。"),
    "ffn_no_bias": ("add the biases b1 and b2: FFN(x) = max(0, x W1 + b1) W2 + b2.",
                    "别忘了偏置 b1 和 b2：FFN(x) = max(0, x W1 + b1) W2 + b2。"),
    "ffn_case": ("case {i} (x {shape}, d_ff={d_ff})", "用例 {i}（x {shape}, d_ff={d_ff}）"),
    "post": ("post-LN (the paper): x = norm1(x + self_attn(x, x, x, mask)); "
             "then x = norm2(x + ffn(x)). The LayerNorm comes after each residual sum.",
             "后置归一化（论文的做法）：x = norm1(x + self_attn(x, x, x, mask))；"
             "然后 x = norm2(x + ffn(x))。层归一化在每次残差相加之后。"),
    "pre": ("pre-LN: x = x + self_attn(h, h, h, mask) with h = norm1(x); then x = x + ffn(norm2(x)). "
            "The LayerNorm is applied to the sub-layer's input only; the residual path stays "
            "un-normalised.",
            "前置归一化：x = x + self_attn(h, h, h, mask)，其中 h = norm1(x)；然后 x = x + ffn(norm2(x))。"
            "层归一化只作用于子层的输入，残差通路不做归一化。"),
    "got_pre": ("you wrote pre-LN (LayerNorm before the sub-layer); the paper's post-LN normalises "
                "after the sum.",
                "你写的是前置归一化（层归一化在子层之前）；论文的后置归一化是在相加之后做归一化。"),
    "got_post": ("you wrote post-LN (LayerNorm after the sum); pre-LN normalises only the sub-layer's "
                 "input.", "你写的是后置归一化（层归一化在相加之后）；前置归一化只对子层的输入做归一化。"),
    "norm_inside": ("you wrote x + LN(Sublayer(x)): the LayerNorm normalises the sub-layer's output "
                    "before the sum. Post-LN normalises the sum itself, LN(x + Sublayer(x)); pre-LN "
                    "normalises the input, x + Sublayer(LN(x)).",
                    "你写的是 x + LN(Sublayer(x))：层归一化作用在子层输出上、相加之前。后置归一化是对和做"
                    "归一化，LN(x + Sublayer(x))；前置归一化是对输入做归一化，x + Sublayer(LN(x))。"),
    "no_residual": ("the residual connection is missing: add the sub-layer's input to its output "
                    "(x + Sublayer(x)).", "缺少残差连接：把子层的输入加到它的输出上（x + Sublayer(x)）。"),
    "mask": ("pass the mask to self_attn (mask=mask) so padded keys are ignored.",
             "把掩码传给 self_attn（mask=mask），让填充的键被忽略。"),
    "enc_case": ("case {i} (B={B}, T={T}, lengths {lengths})", "用例 {i}（B={B}, T={T}，长度 {lengths}）"),
    "decoder": ("post-LN decoder layer: x = norm1(x + self_attn(x, x, x, tgt_mask)); "
                "x = norm2(x + cross_attn(x, memory, memory, memory_mask)); x = norm3(x + ffn(x)).",
                "后置归一化的解码器层：x = norm1(x + self_attn(x, x, x, tgt_mask))；"
                "x = norm2(x + cross_attn(x, memory, memory, memory_mask))；x = norm3(x + ffn(x))。"),
    "cross_swapped": ("in cross-attention the queries come from the decoder and the keys and values "
                      "from the encoder: cross_attn(x, memory, memory), not cross_attn(memory, x, x).",
                      "交叉注意力的查询来自解码器，键和值来自编码器：cross_attn(x, memory, memory)，"
                      "而不是 cross_attn(memory, x, x)。"),
    "no_causal": ("the self-attention needs tgt_mask (the causal mask), or position t sees the future.",
                  "自注意力需要 tgt_mask（因果掩码），否则位置 t 会看到未来。"),
    "no_memory_mask": ("the cross-attention needs memory_mask (mask=memory_mask): without it the "
                       "decoder attends to the padded source positions.",
                       "交叉注意力需要 memory_mask（mask=memory_mask）：没有它，解码器会关注源句中填充的位置。"),
    "cross_self": ("the second attention must look at memory (the encoder output), not at x again.",
                   "第二个注意力应关注 memory（编码器的输出），而不是再次关注 x。"),
    "dec_case": ("case {i} (T={T} targets, S={S} sources)", "用例 {i}（目标长 T={T}，源长 S={S}）"),
    "dec_swapped": ("case {i} (T={T} targets, S={S} sources): cross-attention got the encoder output "
                    "as its queries", "用例 {i}（目标长 T={T}，源长 S={S}）：交叉注意力把编码器的输出当作了查询"),
    "count": ("add up, per encoder layer: 4 projections of d_model×d_model + d_model (W_Q, W_K, W_V, "
              "W_O with biases), the FFN 2·d_model·d_ff + d_ff + d_model, two LayerNorms of 2·d_model; "
              "per decoder layer: two attentions, the FFN, three LayerNorms; plus one vocab×d_model "
              "embedding (shared and tied) and the output bias (vocab).",
              "逐项相加。每个编码器层：4 个 d_model×d_model + d_model 的投影（带偏置的 W_Q、W_K、W_V、W_O），"
              "前馈网络 2·d_model·d_ff + d_ff + d_model，两个各 2·d_model 的层归一化；每个解码器层：两个注意力、"
              "前馈网络、三个层归一化；再加一个 vocab×d_model 的嵌入（共享且绑定）和输出偏置（vocab）。"),
    "count_bias": ("you left out the biases (each Linear has out_features of them; each LayerNorm has "
                   "2·d_model).", "你漏掉了偏置（每个 Linear 有 out_features 个；每个层归一化有 2·d_model 个）。"),
    "count_tied": ("the tied embedding matrix is one tensor: count vocab × d_model once, not three times.",
                   "绑定的嵌入矩阵只是一个张量：vocab × d_model 只算一次，而不是三次。"),
    "count_dec_attn": ("each decoder layer has two attentions (masked self-attention and "
                       "cross-attention).", "每个解码器层有两个注意力（掩蔽自注意力和交叉注意力）。"),
    "count_ln": ("do not forget the LayerNorms: 2·d_model parameters each, two per encoder layer, three "
                 "per decoder layer.",
                 "别忘了层归一化：每个 2·d_model 个参数，每个编码器层两个，每个解码器层三个。"),
    "count_out_bias": ("the output projection is tied to the embedding but keeps its own bias: add "
                       "vocab parameters.", "输出投影与嵌入绑定，但它有自己的偏置：再加上 vocab 个参数。"),
    "count_heads": ("the h heads do not have their own d_model×d_model projections: W_Q, W_K, W_V and "
                    "W_O are each one d_model×d_model matrix split into h slices of d_k = d_model/h "
                    "columns, so do not multiply the attention's parameters by h.",
                    "h 个头并没有各自的 d_model×d_model 投影：W_Q、W_K、W_V、W_O 各是一个 d_model×d_model 矩阵，"
                    "切成 h 份、每份 d_k = d_model/h 列，所以注意力的参数不要乘以 h。"),
    "count_case": ("case {i} (d_model={d}, d_ff={d_ff}, h={h}, N={n}, vocab={vocab}): expected {want:,}, "
                   "got {got}", "用例 {i}（d_model={d}, d_ff={d_ff}, h={h}, N={n}, vocab={vocab}）："
                   "应为 {want:,}，实际为 {got}"),
}
say = texts(MESSAGES, COMMON)

HINT_RELU, HINT_RELU_LAST, HINT_FFN = say("relu"), say("relu_last"), say("ffn")
HINT_POST, HINT_PRE, HINT_GOT_PRE, HINT_GOT_POST = say("post"), say("pre"), say("got_pre"), say("got_post")
HINT_NO_RESIDUAL, HINT_MASK, HINT_NORM_INSIDE = say("no_residual"), say("mask"), say("norm_inside")
HINT_DECODER, HINT_CROSS_SWAPPED = say("decoder"), say("cross_swapped")
HINT_NO_CAUSAL, HINT_CROSS_SELF, HINT_NO_MEMORY_MASK = say("no_causal"), say("cross_self"), say("no_memory_mask")
HINT_COUNT, HINT_BIAS, HINT_TIED = say("count"), say("count_bias"), say("count_tied")
HINT_DEC_ATTN, HINT_LN = say("count_dec_attn"), say("count_ln")
HINT_OUT_BIAS, HINT_HEADS = say("count_out_bias"), say("count_heads")


def _fail(case: str, got: object, want: torch.Tensor, mistakes: dict, hint: str) -> None:
    if isinstance(got, torch.Tensor) and got.shape == want.shape:
        hint = next((h for h, wrong in mistakes.items() if close(got, wrong)), hint)
    raise CheckFailed(say("case_join", case=case, detail=describe(got, want)), hint)


def _random_norms(layer: nn.Module, seed: int) -> None:
    # LayerNorm starts as the identity affine map; random values make a misplaced norm visible.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


# --- layers.feed_forward ---------------------------------------------------------------------


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
        if not close(got, want):
            mistakes = {HINT_RELU: (x @ w1 + b1) @ w2 + b2, HINT_RELU_LAST: F.relu((x @ w1 + b1) @ w2 + b2),
                        say("ffn_no_bias"): F.relu(x @ w1) @ w2}
            _fail(say("ffn_case", i=i, shape=shape, d_ff=d_ff), got, want, mistakes, HINT_FFN)
    return len(cases)


# --- layers.encoder_layer_post_ln / _pre_ln ----------------------------------------------------


def _encoder_variants(layer: EncoderLayer, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    a, f, n1, n2 = layer.self_attn, layer.ffn, layer.norm1, layer.norm2
    post = n1(x + a(x, x, x, mask=mask))
    post = n2(post + f(post))
    h = x + a(n1(x), n1(x), n1(x), mask=mask)
    pre = h + f(n2(h))
    inside = x + n1(a(x, x, x, mask=mask))
    inside = inside + n2(f(inside))
    no_res = n1(a(x, x, x, mask=mask))
    no_res = n2(f(no_res))
    no_mask = n1(x + a(x, x, x))
    no_mask = n2(no_mask + f(no_mask))
    h = x + a(n1(x), n1(x), n1(x))
    pre_no_mask = h + f(n2(h))
    return {"post": post, "pre": pre, "inside": inside, "no_res": no_res,
            "no_mask": pre_no_mask if layer.norm_first else no_mask}


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
        if not close(got, want):
            with torch.no_grad():
                v = _encoder_variants(layer, x, mask)
            mistakes = {HINT_GOT_PRE if not norm_first else HINT_GOT_POST: v["post" if norm_first else "pre"],
                        HINT_NORM_INSIDE: v["inside"], HINT_NO_RESIDUAL: v["no_res"], HINT_MASK: v["no_mask"]}
            _fail(say("enc_case", i=i, B=B, T=T, lengths=lengths), got, want, mistakes,
                  HINT_PRE if norm_first else HINT_POST)
    return len(cases)


def check_encoder_layer_post_ln(fn: Callable) -> int:
    """``fn(layer, x, mask)``: the post-LN encoder layer from ``layer``'s submodules (dropout off)."""
    return _check_encoder_layer(fn, norm_first=False)


def check_encoder_layer_pre_ln(fn: Callable) -> int:
    """``fn(layer, x, mask)``: the pre-LN encoder layer from ``layer``'s submodules (dropout off)."""
    return _check_encoder_layer(fn, norm_first=True)


# --- layers.decoder_layer -------------------------------------------------------------------


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
        if isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor) and query.dim() > 1:
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


def _decoder_variant(layer: DecoderLayer, x, self_mask, memory, cross_mask) -> torch.Tensor:
    """The post-LN decoder layer with the given masks; ``memory=None`` attends to x again."""
    y = layer.norm1(x + layer.self_attn(x, x, x, mask=self_mask))
    kv = y if memory is None else memory
    z = layer.norm2(y + layer.cross_attn(y, kv, kv, mask=cross_mask))
    return layer.norm3(z + layer.ffn(z))


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
        with torch.no_grad():
            want = layer(x, memory, tgt_mask, memory_mask)
            got, swapped = _call_watching_cross_attention(fn, layer, x, memory, tgt_mask, memory_mask)
        if swapped:
            raise CheckFailed(say("dec_swapped", i=i, T=T, S=S), HINT_CROSS_SWAPPED)
        if not close(got, want):
            with torch.no_grad():
                mistakes = {HINT_NO_CAUSAL: _decoder_variant(layer, x, None, memory, memory_mask),
                            HINT_NO_MEMORY_MASK: _decoder_variant(layer, x, tgt_mask, memory, None),
                            HINT_CROSS_SELF: _decoder_variant(layer, x, tgt_mask, None, tgt_mask)}
            hint = HINT_DECODER
            if isinstance(got, torch.Tensor) and got.shape == (B, S, d) and S != T:
                hint = HINT_CROSS_SWAPPED
            _fail(say("dec_case", i=i, T=T, S=S), got, want, mistakes, hint)
    return len(cases)


# --- model.parameter_count --------------------------------------------------------------------


def _count_terms(d: int, d_ff: int, h: int, n: int, vocab: int) -> dict:
    attn, ffn, ln = 4 * (d * d + d), 2 * d * d_ff + d_ff + d, 2 * d
    right = vocab * d + n * (attn + ffn + 2 * ln) + n * (2 * attn + ffn + 3 * ln) + vocab
    no_bias = vocab * d + n * (4 * d * d + 2 * d * d_ff) + n * (8 * d * d + 2 * d * d_ff)
    return {HINT_BIAS: no_bias, HINT_TIED: right + 2 * vocab * d, HINT_DEC_ATTN: right - n * attn,
            HINT_LN: right - 5 * n * ln, HINT_OUT_BIAS: right - vocab,
            HINT_HEADS: right + 3 * n * attn * (h - 1)}


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
        out = fn(d, d_ff, h, n, vocab)
        got = number(out)
        if got != want:
            hint = next((k for k, v in _count_terms(d, d_ff, h, n, vocab).items() if v == got), HINT_COUNT)
            raise CheckFailed(say("count_case", i=i, d=d, d_ff=d_ff, h=h, n=n, vocab=vocab, want=want,
                                  got=short(out)), hint)
    return len(cases)


CHECKS: dict[str, Callable[[Callable], int]] = {
    "layers.feed_forward": check_feed_forward,
    "layers.encoder_layer_post_ln": check_encoder_layer_post_ln,
    "layers.encoder_layer_pre_ln": check_encoder_layer_pre_ln,
    "layers.decoder_layer": check_decoder_layer,
    "model.parameter_count": check_parameter_count,
}
