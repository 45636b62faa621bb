"""Checkers for the ideas of chapter 11b (a small LLM): RoPE, RMSNorm, SwiGLU, grouped-query
attention and the KV cache.

Every reference is computed here in float64 from the formulas of the papers (and agrees with
:mod:`tformer.nn.llama` and :class:`tformer.nn.positional.RotaryEmbedding`, which the tests check).
On a failure the checker computes the classic wrong versions — RoPE in the rotate-half layout,
LayerNorm instead of RMSNorm, the gate on the wrong projection, ``.repeat`` instead of
``.repeat_interleave``, a cache prepended instead of appended — and names the one the reader's
answer reproduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tformer.course.exercises import CheckFailed
from tformer.course.exercises._common import COMMON, close, describe, diagnose, number, short
from tformer.course.exercises._text import texts

MESSAGES = {
    "rope": ("rotate each adjacent pair (x[2i], x[2i+1]) of position p by the angle p·θ_i with "
             "θ_i = 10000^(-2i/d): (x0 cos - x1 sin, x0 sin + x1 cos); p = start + t.",
             "把位置 p 上每一对相邻的分量 (x[2i], x[2i+1]) 旋转角度 p·θ_i，其中 θ_i = 10000^(-2i/d)："
             "(x0 cos - x1 sin, x0 sin + x1 cos)；p = start + t。"),
    "rope_half": ("you wrote the rotate-half layout (GPT-NeoX, Hugging Face Llama), which pairs dimension "
                  "i with i + d/2. tformer uses the interleaved layout of the RoPE paper and of GGUF "
                  "files: dimension 2i is paired with 2i+1 (x[..., 0::2] and x[..., 1::2]). Both give "
                  "relative positions, but the weights of a checkpoint only fit one of them.",
                  "你写的是「旋转一半」（rotate-half）布局（GPT-NeoX、Hugging Face Llama），它把第 i 维与第 "
                  "i + d/2 维配对。tformer 用的是 RoPE 论文和 GGUF 文件的交错布局：第 2i 维与第 2i+1 维配对"
                  "（x[..., 0::2] 和 x[..., 1::2]）。两者都只依赖相对位置，但一个检查点的权重只适用于其中一种。"),
    "rope_start": ("the positions must start at start: row t has position start + t (with a KV cache, "
                   "the new tokens come after the cached ones).",
                   "位置必须从 start 开始：第 t 行的位置是 start + t（使用键值缓存时，新词元排在已缓存的词元之后）。"),
    "rope_sign": ("you rotate in the opposite direction: the first component is x0 cos - x1 sin, the "
                  "second x0 sin + x1 cos.",
                  "你的旋转方向反了：第一个分量是 x0 cos - x1 sin，第二个是 x0 sin + x1 cos。"),
    "rope_theta": ("pair i turns at θ_i = 10000^(-2i/d): the exponent uses 2i/d (the pair's first "
                   "dimension over d), not i/d.",
                   "第 i 对的角速度是 θ_i = 10000^(-2i/d)：指数是 2i/d（这一对的第一维除以 d），而不是 i/d。"),
    "rope_case": ("case {i} (x {shape}, start={start})", "用例 {i}（x {shape}，start={start}）"),
    "rms": ("RMSNorm(x) = x / sqrt(mean(x², last dim) + eps) · weight.",
            "RMSNorm(x) = x / sqrt(mean(x², 最后一维) + eps) · weight。"),
    "rms_layernorm": ("RMSNorm does not subtract the mean: divide x itself by its root mean square; "
                      "what you wrote is LayerNorm without its bias.",
                      "RMSNorm 不减去均值：直接用 x 除以它的均方根；你写的是不带偏置的层归一化。"),
    "rms_eps": ("eps goes inside the square root: sqrt(mean(x²) + eps), not sqrt(mean(x²)) + eps.",
                "eps 要放在平方根里面：sqrt(mean(x²) + eps)，而不是 sqrt(mean(x²)) + eps。"),
    "rms_weight": ("multiply by the gain weight after normalising.", "归一化之后要乘以增益 weight。"),
    "rms_sum": ("take the mean of the squares over the features, not their sum (that is the L2 norm).",
                "对各特征的平方取平均，而不是求和（求和得到的是 L2 范数）。"),
    "rms_dim": ("normalise over the last dimension (the features of one token), dim=-1.",
                "沿最后一维（一个词元的特征）归一化，dim=-1。"),
    "rms_case": ("case {i} (x {shape}, eps={eps})", "用例 {i}（x {shape}，eps={eps}）"),
    "swiglu": ("SwiGLU(x) = (SiLU(x @ w_gate) ⊙ (x @ w_up)) @ w_down (Shazeer, 2020).",
               "SwiGLU 门控前馈网络：SwiGLU(x) = (SiLU(x @ w_gate) ⊙ (x @ w_up)) @ w_down（Shazeer, 2020）。"),
    "swiglu_swapped": ("the SiLU goes on the gate projection (x @ w_gate), not on the up projection.",
                       "SiLU 作用于门控投影（x @ w_gate），而不是上投影（x @ w_up）。"),
    "swiglu_sigmoid": ("SwiGLU uses SiLU(z) = z · sigmoid(z) (Swish), not the sigmoid itself (that is the "
                       "original GLU).", "SwiGLU 用的是 SiLU(z) = z · sigmoid(z)（Swish），而不是 sigmoid 本身"
                       "（那是最初的 GLU）。"),
    "swiglu_relu": ("SwiGLU uses SiLU, not ReLU (that would be ReGLU).", "SwiGLU 用的是 SiLU，而不是 ReLU（那是 ReGLU）。"),
    "swiglu_gelu": ("SwiGLU uses SiLU, not GELU (that would be GEGLU).", "SwiGLU 用的是 SiLU，而不是 GELU（那是 GEGLU）。"),
    "swiglu_nogate": ("the up projection must be multiplied elementwise by the gate SiLU(x @ w_gate).",
                      "上投影要与门控 SiLU(x @ w_gate) 逐元素相乘。"),
    "swiglu_outside": ("apply the SiLU to the gate alone, then multiply: SiLU(x @ w_gate) ⊙ (x @ w_up).",
                       "先只对门控做 SiLU，再相乘：SiLU(x @ w_gate) ⊙ (x @ w_up)。"),
    "swiglu_case": ("case {i} (x {shape}, d_ff={d_ff})", "用例 {i}（x {shape}，d_ff={d_ff}）"),
    "repeat": ("you used .repeat: it tiles the KV heads [k0, k1, k0, k1, …], so query head j gets KV head "
               "j % h_kv. In grouped-query attention consecutive query heads share a KV head: use "
               ".repeat_interleave(n_rep, dim=1), [k0, k0, k1, k1, …], head j gets KV head j // n_rep.",
               "你用了 .repeat：它把键值头平铺成 [k0, k1, k0, k1, …]，于是查询头 j 用的是键值头 j % h_kv。"
               "在分组查询注意力中，相邻的查询头共享一个键值头：请用 .repeat_interleave(n_rep, dim=1)，"
               "得到 [k0, k0, k1, k1, …]，查询头 j 用键值头 j // n_rep。"),
    "repeat_dim": ("repeat along the head dimension, dim=1 of (B, h_kv, T, d).",
                   "沿头的维度重复，即 (B, h_kv, T, d) 的 dim=1。"),
    "repeat_hint": ("(B, h_kv, T, d) → (B, h_kv·n_rep, T, d), KV head j copied n_rep times in a row: "
                    "x.repeat_interleave(n_rep, dim=1).",
                    "(B, h_kv, T, d) → (B, h_kv·n_rep, T, d)，键值头 j 连续复制 n_rep 次："
                    "x.repeat_interleave(n_rep, dim=1)。"),
    "repeat_case": ("case {i} (x {shape}, n_rep={n_rep})", "用例 {i}（x {shape}，n_rep={n_rep}）"),
    "gqa": ("query head j attends with KV head j // (h / h_kv): repeat k and v with "
            ".repeat_interleave(h // h_kv, dim=1), then softmax(q kᵀ / √d) v with the mask.",
            "查询头 j 使用键值头 j // (h / h_kv)：先用 .repeat_interleave(h // h_kv, dim=1) 重复 k 和 v，"
            "再带掩码计算 softmax(q kᵀ / √d) v。"),
    "gqa_scale": ("divide the scores by √d (the head size) before the softmax.", "softmax 之前要把分数除以 √d（头的维度）。"),
    "gqa_mask": ("use the mask (True = may attend): fill the scores where it is False before the softmax.",
                 "使用掩码（True = 可以关注）：softmax 之前在掩码为 False 的位置填充分数。"),
    "gqa_case": ("case {i} (h={h}, h_kv={h_kv}, T={T}, {masked})", "用例 {i}（h={h}, h_kv={h_kv}, T={T}，{masked}）"),
    "masked": ("causal mask", "因果掩码"),
    "unmasked": ("no mask", "无掩码"),
    "cache_return": ("return three things: (k_all, v_all, start)", "返回三个值：(k_all, v_all, start)"),
    "cache_values": ("case {i} ({name}): returned {got}", "用例 {i}（{name}）：返回了 {got}"),
    "cache_prepend": ("append the new keys after the cached ones: torch.cat([past_k, k], dim=-2); the "
                      "newest position comes last.",
                      "新的键要接在已缓存的键之后：torch.cat([past_k, k], dim=-2)；最新的位置在最后。"),
    "cache_dim": ("concatenate along the time axis, dim=-2 of (B, h, T, d).", "沿时间维拼接，即 (B, h, T, d) 的 dim=-2。"),
    "cache_swapped": ("keep keys with keys and values with values: you returned them the other way round.",
                      "键归键、值归值：你把它们的位置返回反了。"),
    "cache_hint": ("k_all = torch.cat([past_k, k], dim=-2) (just k when the cache is empty), the same for v.",
                   "k_all = torch.cat([past_k, k], dim=-2)（缓存为空时就是 k），v 同理。"),
    "start_after": ("start is the position of the first new token, the number of positions cached "
                    "before it ({want}); you returned the length after appending.",
                    "start 是第一个新词元的位置，即在它之前已缓存的位置数（{want}）；你返回的是追加之后的长度。"),
    "start_last": ("start is the position of the first new token ({want}), not of the last one.",
                   "start 是第一个新词元的位置（{want}），而不是最后一个的位置。"),
    "start_zero": ("the new tokens continue the sequence: their first position is the cache length "
                   "({want}), not 0 — RoPE needs it to rotate them by the right angle.",
                   "新词元是接着原序列的：它们的第一个位置是缓存的长度（{want}），而不是 0——RoPE 需要它"
                   "来按正确的角度旋转。"),
    "start_case": ("case {i} ({name}): start should be {want}, got {got}", "用例 {i}（{name}）：start 应为 {want}，实际为 {got}"),
    "start_hint": ("start = the number of cached positions before the new ones (0 for an empty cache).",
                   "start = 新词元之前已缓存的位置数（缓存为空时为 0）。"),
    "cache_case": ("{past} cached, {new} new, B={B}, h={h}", "已缓存 {past} 个、新增 {new} 个，B={B}, h={h}"),
    "cache_k": ("case {i} ({name}): k_all: {detail}", "用例 {i}（{name}）：k_all：{detail}"),
    "cache_v": ("case {i} ({name}): v_all: {detail}", "用例 {i}（{name}）：v_all：{detail}"),
}
say = texts(MESSAGES, COMMON)
HINT_ROPE_HALF, HINT_REPEAT = say("rope_half"), say("repeat")


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# --- llm.rope -----------------------------------------------------------------------------------


def _angles(T: int, d: int, start: int, exponent: float = 2.0) -> torch.Tensor:
    theta = 10000.0 ** (-exponent * torch.arange(d // 2, dtype=torch.float64) / d)
    return torch.arange(start, start + T, dtype=torch.float64)[:, None] * theta  # (T, d/2)


def _rope(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    x0, x1 = x[..., 0::2], x[..., 1::2]
    cos, sin = angle.cos(), angle.sin()
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def _rope_half(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x0, x1 = x[..., :half], x[..., half:]
    cos, sin = angle.cos(), angle.sin()
    return torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)


def rope_reference(x: torch.Tensor, start: int) -> torch.Tensor:
    """Interleaved RoPE of ``x`` (..., T, d) at positions start … start+T-1, in float64."""
    return _rope(x.double(), _angles(x.shape[-2], x.shape[-1], start))


def check_rope(fn: Callable) -> int:
    """``fn(x (..., T, d), start) -> same shape``: tformer's interleaved rotary embedding."""
    g = torch.Generator().manual_seed(11)
    cases = [((4, 8), 0), ((2, 3, 5, 16), 7), ((1, 2, 3, 4), 100), ((1, 6, 32), 2)]
    for i, (shape, start) in enumerate(cases, start=1):
        x = _randn(g, *shape)
        want = rope_reference(x, start)
        got = fn(x.clone(), start)
        if not close(got, want):
            T, d = shape[-2], shape[-1]
            mistakes = {HINT_ROPE_HALF: _rope_half(x, _angles(T, d, start)),
                        say("rope_start"): _rope(x, _angles(T, d, 0)),
                        say("rope_sign"): _rope(x, -_angles(T, d, start)),
                        say("rope_theta"): _rope(x, _angles(T, d, start, exponent=1.0))}
            raise CheckFailed(say("case_join", case=say("rope_case", i=i, shape=shape, start=start),
                                  detail=describe(got, want)), diagnose(got, mistakes, say("rope")))
    return len(cases)


# --- llm.rms_norm -------------------------------------------------------------------------------


def check_rms_norm(fn: Callable) -> int:
    """``fn(x (..., d), weight (d,), eps) -> same shape``: x / sqrt(mean(x²) + eps) · weight."""
    g = torch.Generator().manual_seed(12)
    cases = [(_randn(g, 2, 5, 8) * 3 + 1, 1e-5), (_randn(g, 3, 16) * 0.2 + 0.5, 0.1),
             (torch.tensor([[2.0] * 6, [-2.0] * 6], dtype=torch.float64), 1e-6), (_randn(g, 4, 4), 1e-5)]
    for i, (x, eps) in enumerate(cases, start=1):
        w = torch.rand(x.shape[-1], generator=g, dtype=torch.float64) + 0.5
        ms = x.pow(2).mean(-1, keepdim=True)
        want = x / (ms + eps).sqrt() * w
        got = fn(x.clone(), w.clone(), eps)
        if not close(got, want):
            centred = x - x.mean(-1, keepdim=True)
            mistakes = {say("rms_layernorm"): centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w,
                        say("rms_eps"): x / (ms.sqrt() + eps) * w,
                        say("rms_weight"): x / (ms + eps).sqrt(),
                        say("rms_sum"): x / (x.pow(2).sum(-1, keepdim=True) + eps).sqrt() * w,
                        say("rms_dim"): x / (x.pow(2).mean(0, keepdim=True) + eps).sqrt() * w}
            raise CheckFailed(say("case_join", case=say("rms_case", i=i, shape=tuple(x.shape), eps=eps),
                                  detail=describe(got, want)), diagnose(got, mistakes, say("rms")))
    return len(cases)


# --- llm.swiglu ---------------------------------------------------------------------------------


def check_swiglu(fn: Callable) -> int:
    """``fn(x (..., d), w_gate (d, d_ff), w_up (d, d_ff), w_down (d_ff, d)) -> (..., d)``."""
    g = torch.Generator().manual_seed(13)
    cases = [((2, 5, 8), 12), ((7, 4), 16), ((1, 3, 16), 40)]
    for i, (shape, d_ff) in enumerate(cases, start=1):
        d = shape[-1]
        x = _randn(g, *shape)
        wg, wu = _randn(g, d, d_ff) / d**0.5, _randn(g, d, d_ff) / d**0.5
        wd = _randn(g, d_ff, d) / d_ff**0.5
        gate, up = x @ wg, x @ wu
        want = (F.silu(gate) * up) @ wd
        got = fn(x.clone(), wg.clone(), wu.clone(), wd.clone())
        if not close(got, want):
            mistakes = {say("swiglu_swapped"): (F.silu(up) * gate) @ wd,
                        say("swiglu_sigmoid"): (torch.sigmoid(gate) * up) @ wd,
                        say("swiglu_relu"): (F.relu(gate) * up) @ wd,
                        say("swiglu_gelu"): (F.gelu(gate) * up) @ wd,
                        say("swiglu_nogate"): F.silu(up) @ wd,
                        say("swiglu_outside"): F.silu(gate * up) @ wd}
            raise CheckFailed(say("case_join", case=say("swiglu_case", i=i, shape=shape, d_ff=d_ff),
                                  detail=describe(got, want)), diagnose(got, mistakes, say("swiglu")))
    return len(cases)


# --- llm.repeat_kv and llm.grouped_query_attention ------------------------------------------------


def _repeat_mistakes(x: torch.Tensor, n_rep: int) -> dict:
    return {HINT_REPEAT: x.repeat(1, n_rep, 1, 1), say("repeat_dim"): x.repeat_interleave(n_rep, dim=2)}


def check_repeat_kv(fn: Callable) -> int:
    """``fn(x (B, h_kv, T, d), n_rep) -> (B, h_kv·n_rep, T, d)``: each KV head for n_rep query heads."""
    g = torch.Generator().manual_seed(14)
    cases = [((2, 2, 3, 4), 3), ((1, 3, 5, 2), 2), ((1, 1, 4, 8), 4), ((2, 4, 1, 2), 1)]
    for i, (shape, n_rep) in enumerate(cases, start=1):
        x = _randn(g, *shape)
        want = x.repeat_interleave(n_rep, dim=1)
        got = fn(x.clone(), n_rep)
        if not close(got, want):
            raise CheckFailed(say("case_join", case=say("repeat_case", i=i, shape=shape, n_rep=n_rep),
                                  detail=describe(got, want)),
                              diagnose(got, _repeat_mistakes(x, n_rep), say("repeat_hint")))
    return len(cases)


def _attend(q, k, v, mask, scale: bool = True) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def check_grouped_query_attention(fn: Callable) -> int:
    """``fn(q (B, h, T, d), k (B, h_kv, T, d), v, mask=None) -> (B, h, T, d)`` (or ``(out, weights)``)."""
    g = torch.Generator().manual_seed(15)
    cases = [(1, 4, 2, 5, 8, False), (2, 6, 3, 4, 4, True), (1, 4, 1, 3, 8, True), (1, 2, 2, 4, 4, True)]
    for i, (B, h, h_kv, T, d, masked) in enumerate(cases, start=1):
        q, k, v = _randn(g, B, h, T, d), _randn(g, B, h_kv, T, d), _randn(g, B, h_kv, T, d)
        mask = torch.ones(T, T, dtype=torch.bool).tril() if masked else None
        n = h // h_kv
        want = _attend(q, k.repeat_interleave(n, 1), v.repeat_interleave(n, 1), mask)
        got = fn(q.clone(), k.clone(), v.clone()) if mask is None else fn(q.clone(), k.clone(), v.clone(),
                                                                           mask=mask)
        if isinstance(got, (tuple, list)) and len(got) == 2:
            got = got[0]
        if not close(got, want):
            mistakes = {HINT_REPEAT: _attend(q, k.repeat(1, n, 1, 1), v.repeat(1, n, 1, 1), mask),
                        say("gqa_scale"): _attend(q, k.repeat_interleave(n, 1), v.repeat_interleave(n, 1),
                                                  mask, scale=False)}
            if mask is not None:
                mistakes[say("gqa_mask")] = _attend(q, k.repeat_interleave(n, 1), v.repeat_interleave(n, 1), None)
            case = say("gqa_case", i=i, h=h, h_kv=h_kv, T=T, masked=say("masked" if masked else "unmasked"))
            raise CheckFailed(say("case_join", case=case, detail=describe(got, want)),
                              diagnose(got, mistakes, say("gqa")))
    return len(cases)


# --- llm.kv_cache -------------------------------------------------------------------------------


def check_kv_cache(fn: Callable) -> int:
    """``fn(cache, k, v) -> (k_all, v_all, start)``: append one step's keys and values to the cache.

    ``cache`` is None (empty) or ``(past_k, past_v)`` of shape (B, h, T_past, d); ``k``, ``v`` are the
    new (B, h, T_new, d). ``start`` is the position of the first new token, T_past.
    """
    g = torch.Generator().manual_seed(16)
    cases = [(1, 2, 0, 3, 4), (1, 2, 3, 1, 4), (2, 3, 5, 2, 8), (1, 1, 6, 1, 4)]
    for i, (B, h, past, new, d) in enumerate(cases, start=1):
        name = say("cache_case", past=past, new=new, B=B, h=h)
        pk, pv = _randn(g, B, h, past, d), _randn(g, B, h, past, d)
        k, v = _randn(g, B, h, new, d), _randn(g, B, h, new, d)
        cache = None if past == 0 else (pk.clone(), pv.clone())
        out = fn(cache, k.clone(), v.clone())
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            shown = f"{type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
            raise CheckFailed(say("cache_values", i=i, name=name, got=shown), say("cache_return"))
        k_all, v_all, start = out
        want_k, want_v = torch.cat([pk, k], dim=-2), torch.cat([pv, v], dim=-2)
        for key, got, want, other in (("cache_k", k_all, want_k, want_v), ("cache_v", v_all, want_v, want_k)):
            if not close(got, want):
                mistakes = {say("cache_swapped"): other,
                            say("cache_prepend"): torch.cat([want[..., past:, :], want[..., :past, :]], -2)}
                hint = diagnose(got, mistakes, say("cache_hint"))
                if (isinstance(got, torch.Tensor) and got.dim() == 4 and got.shape[-2] != want.shape[-2]
                        and got.numel() == want.numel()):
                    hint = say("cache_dim")
                raise CheckFailed(say(key, i=i, name=name, detail=describe(got, want)), hint)
        got_start = number(start)
        if got_start is None or got_start != past:
            hint = say("start_hint")
            if got_start == past + new:
                hint = say("start_after", want=past)
            elif got_start == past + new - 1:
                hint = say("start_last", want=past)
            elif got_start == 0:
                hint = say("start_zero", want=past)
            raise CheckFailed(say("start_case", i=i, name=name, want=past, got=short(start)), hint)
    return len(cases)


CHECKS = {
    "llm.rope": check_rope,
    "llm.rms_norm": check_rms_norm,
    "llm.swiglu": check_swiglu,
    "llm.repeat_kv": check_repeat_kv,
    "llm.grouped_query_attention": check_grouped_query_attention,
    "llm.kv_cache": check_kv_cache,
}
