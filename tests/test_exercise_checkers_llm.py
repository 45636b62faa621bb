"""The checkers of chapter 11b's ideas (RoPE, RMSNorm, SwiGLU, GQA, the KV cache) and of beam search:
their references agree with tformer's modules, two or more correct answers written differently
pass, and each classic mistake fails with its own hint."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from tformer.course.exercises import CheckFailed, _registry
from tformer.course.exercises import beam as ex_beam
from tformer.course.exercises import llm as ex_llm
from tformer.inference.generation import length_penalty
from tformer.nn.llama import RMSNorm, SwiGLUFeedForward, repeat_kv
from tformer.nn.positional import RotaryEmbedding


def run(name, fn):
    return _registry()[name](fn)


def fails_with(name, fn, words):
    with pytest.raises(CheckFailed) as info:
        run(name, fn)
    assert info.value.message.startswith("case "), info.value.message
    assert words in info.value.hint, info.value.hint
    return info.value


# --- the checkers' references are tformer's modules --------------------------------------------


def test_rope_reference_equals_tformers_rotary_embedding():
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64)
    rope = RotaryEmbedding(16, max_len=64)
    torch.testing.assert_close(ex_llm.rope_reference(x, 7), rope(x, 7), atol=1e-6, rtol=1e-6)


def test_tformers_modules_pass_the_checkers():
    def rms(x, w, eps):
        norm = RMSNorm(x.shape[-1], eps).double()
        with torch.no_grad():
            norm.weight.copy_(w)
        return norm(x)

    def swiglu(x, wg, wu, wd):
        ffn = SwiGLUFeedForward(x.shape[-1], wg.shape[1]).double()
        with torch.no_grad():
            ffn.gate.weight.copy_(wg.T)
            ffn.up.weight.copy_(wu.T)
            ffn.down.weight.copy_(wd.T)
        return ffn(x)

    def rope(x, start):
        return RotaryEmbedding(x.shape[-1], max_len=start + x.shape[-2]).double()(x, start)

    with torch.no_grad():
        assert run("llm.rms_norm", rms) == 4
        assert run("llm.swiglu", swiglu) == 3
    assert run("llm.rope", rope) == 4
    assert run("llm.repeat_kv", repeat_kv) == 4
    assert run("decode.length_penalty", length_penalty) == 4


# --- alternative correct answers ----------------------------------------------------------------


def _angles(T, d, start):
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    return torch.arange(start, start + T, dtype=torch.float64)[:, None] * theta


def rope_even_odd(x, start):
    a = _angles(x.shape[-2], x.shape[-1], start)
    out = torch.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * a.cos() - x[..., 1::2] * a.sin()
    out[..., 1::2] = x[..., 0::2] * a.sin() + x[..., 1::2] * a.cos()
    return out


def rope_complex(x, start):
    a = _angles(x.shape[-2], x.shape[-1], start)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(a), a)).flatten(-2)


def rope_matrix(x, start):
    """Block-diagonal rotation matrices, one 2×2 block per pair, applied with einsum."""
    T, d = x.shape[-2:]
    a = _angles(T, d, start)
    R = torch.zeros(T, d, d, dtype=x.dtype)
    for i in range(d // 2):
        c, s = a[:, i].cos(), a[:, i].sin()
        R[:, 2 * i, 2 * i], R[:, 2 * i, 2 * i + 1] = c, -s
        R[:, 2 * i + 1, 2 * i], R[:, 2 * i + 1, 2 * i + 1] = s, c
    return torch.einsum("tij,...tj->...ti", R, x)


def rope_backwards(x, start):
    a = _angles(x.shape[-2], x.shape[-1], start)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(a), -a)).flatten(-2)


def rope_per_dimension_exponent(x, start):
    d = x.shape[-1]
    theta = 10000.0 ** (-torch.arange(d // 2, dtype=torch.float64) / d)
    a = torch.arange(start, start + x.shape[-2], dtype=torch.float64)[:, None] * theta
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(a), a)).flatten(-2)


def rope_rotate_half(x, start):  # GPT-NeoX / Hugging Face Llama layout
    d = x.shape[-1]
    a = _angles(x.shape[-2], d, start).repeat(1, 2)
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    return x * a.cos() + rotated * a.sin()


def rms_rsqrt(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rms_functional(x, w, eps):
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def rms_norm_based(x, w, eps):
    d = x.shape[-1]
    return w * x / torch.sqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True) ** 2 / d + eps)


def swiglu_plain(x, wg, wu, wd):
    return (F.silu(x @ wg) * (x @ wu)) @ wd


def swiglu_fused(x, wg, wu, wd):
    gate, up = (x @ torch.cat([wg, wu], dim=1)).chunk(2, dim=-1)
    return (gate * torch.sigmoid(gate) * up) @ wd


def swiglu_einsum(x, wg, wu, wd):
    h = F.silu(torch.einsum("...d,df->...f", x, wg)) * torch.einsum("...d,df->...f", x, wu)
    return torch.einsum("...f,fd->...d", h, wd)


def repeat_expand(x, n):
    B, h, T, d = x.shape
    return x[:, :, None].expand(B, h, n, T, d).reshape(B, h * n, T, d)


def repeat_index(x, n):
    return x[:, torch.arange(x.shape[1] * n) // n]


def gqa_repeat(q, k, v, mask=None):
    n = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n, dim=1), v.repeat_interleave(n, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ v


def gqa_grouped_queries(q, k, v, mask=None):
    """Group the queries instead of repeating the keys: (B, h_kv, n_rep, T, d)."""
    B, h, T, d = q.shape
    g = q.view(B, k.shape[1], h // k.shape[1], T, d)
    scores = g @ k[:, :, None].transpose(-2, -1) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, -1)
    return (weights @ v[:, :, None]).view(B, h, T, d), weights.view(B, h, T, -1)


def gqa_fused(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def cache_branch(cache, k, v):
    if cache is None:
        return k, v, 0
    past_k, past_v = cache
    return torch.cat([past_k, k], -2), torch.cat([past_v, v], -2), past_k.shape[-2]


def cache_empty_start(cache, k, v):
    past_k, past_v = cache if cache is not None else (k[..., :0, :], v[..., :0, :])
    return torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2), torch.tensor(past_k.size(2))


@pytest.mark.parametrize("name, fn", [
    ("llm.rope", rope_even_odd), ("llm.rope", rope_complex), ("llm.rope", rope_matrix),
    ("llm.rms_norm", rms_rsqrt), ("llm.rms_norm", rms_functional), ("llm.rms_norm", rms_norm_based),
    ("llm.swiglu", swiglu_plain), ("llm.swiglu", swiglu_fused), ("llm.swiglu", swiglu_einsum),
    ("llm.repeat_kv", repeat_expand), ("llm.repeat_kv", repeat_index),
    ("llm.grouped_query_attention", gqa_repeat), ("llm.grouped_query_attention", gqa_grouped_queries),
    ("llm.grouped_query_attention", gqa_fused),
    ("llm.kv_cache", cache_branch), ("llm.kv_cache", cache_empty_start),
])
def test_correct_answers_written_differently_pass(name, fn):
    assert run(name, fn) >= 3


def test_rotate_half_rope_keeps_relative_positions_but_fails_with_the_layout_hint():
    # It passes the chapter's relative-position test: q·k depends on the distance only ...
    q, k = torch.randn(1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 16, dtype=torch.float64)
    near = (rope_rotate_half(q, 5) * rope_rotate_half(k, 2)).sum()
    far = (rope_rotate_half(q, 105) * rope_rotate_half(k, 102)).sum()
    torch.testing.assert_close(near, far)
    # ... but it is not tformer's interleaved layout.
    failure = fails_with("llm.rope", rope_rotate_half, "rotate-half")
    assert "interleaved" in failure.hint and "GPT-NeoX" in failure.hint


@pytest.mark.parametrize("name, fn, words", [
    ("llm.rope", lambda x, start: rope_even_odd(x, 0), "start + t"),
    ("llm.rope", lambda x, start: rope_even_odd(x, start + 1), "rotate each adjacent pair"),
    ("llm.rope", rope_backwards, "opposite direction"),
    ("llm.rope", rope_per_dimension_exponent, "not i/d"),
    ("llm.rms_norm", lambda x, w, eps: F.layer_norm(x, (x.shape[-1],), w, None, eps), "does not subtract the mean"),
    ("llm.rms_norm", lambda x, w, eps: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w, "inside the square root"),
    ("llm.rms_norm", lambda x, w, eps: rms_rsqrt(x, 1.0, eps), "gain weight"),
    ("llm.rms_norm", lambda x, w, eps: x / (x.pow(2).sum(-1, keepdim=True) + eps).sqrt() * w, "not their sum"),
    ("llm.swiglu", lambda x, g, u, d: swiglu_plain(x, u, g, d), "gate projection"),
    ("llm.swiglu", lambda x, g, u, d: (torch.sigmoid(x @ g) * (x @ u)) @ d, "original GLU"),
    ("llm.swiglu", lambda x, g, u, d: (F.relu(x @ g) * (x @ u)) @ d, "ReGLU"),
    ("llm.swiglu", lambda x, g, u, d: (F.gelu(x @ g) * (x @ u)) @ d, "GEGLU"),
    ("llm.swiglu", lambda x, g, u, d: F.silu((x @ g) * (x @ u)) @ d, "to the gate alone"),
    ("llm.repeat_kv", lambda x, n: x.repeat(1, n, 1, 1), ".repeat_interleave(n_rep, dim=1)"),
    ("llm.repeat_kv", lambda x, n: x.repeat_interleave(n, dim=2), "head dimension"),
    ("llm.grouped_query_attention", lambda q, k, v, mask=None: gqa_repeat(q * math.sqrt(q.shape[-1]), k, v, mask),
     "divide the scores by √d"),
    ("llm.grouped_query_attention", lambda q, k, v, mask=None: gqa_repeat(q, k, v), "use the mask"),
    ("llm.kv_cache", lambda c, k, v: (*cache_branch(c, k, v)[:2], 0 if c is None else c[0].shape[-2] + k.shape[-2]),
     "length after appending"),
    ("llm.kv_cache", lambda c, k, v: (*cache_branch(c, k, v)[:2], 0), "not 0"),
    ("llm.kv_cache", lambda c, k, v: (k, v, 0) if c is None else (torch.cat([k, c[0]], -2),
                                                                  torch.cat([v, c[1]], -2), c[0].shape[-2]),
     "after the cached ones"),
    ("llm.kv_cache", lambda c, k, v: (lambda r: (r[1], r[0], r[2]))(cache_branch(c, k, v)), "other way round"),
    ("llm.kv_cache", lambda c, k, v: cache_branch(c, k, v)[:2], "(k_all, v_all, start)"),
])
def test_each_classic_mistake_fails_with_its_own_hint(name, fn, words):
    fails_with(name, fn, words)


def test_gqa_with_repeat_fails_on_the_first_case_with_the_repeat_hint():
    def gqa_tiled(q, k, v, mask=None):
        n = q.shape[1] // k.shape[1]
        return gqa_repeat(q, k.repeat(1, n, 1, 1), v.repeat(1, n, 1, 1), mask)

    failure = fails_with("llm.grouped_query_attention", gqa_tiled, "you used .repeat")
    assert failure.message.startswith("case 1 (h=4, h_kv=2")


def test_kv_cache_with_positions_of_the_last_new_token_gets_its_hint():
    def last(c, k, v):
        k_all, v_all, _ = cache_branch(c, k, v)
        return k_all, v_all, k_all.shape[-2] - 1

    # cases 1 and 2 have T_new = 3 and 1: "length - 1" is wrong on case 1 already
    fails_with("llm.kv_cache", last, "start")


# --- beam search: hand-computed toy models --------------------------------------------------------


def toy(beam_size):
    return ex_beam.KEPT, ex_beam.BOS, ex_beam.EOS, beam_size


def test_toy_model_gives_the_probabilities_of_the_issue():
    logp = ex_beam.KEPT([ex_beam.BOS])
    assert logp.exp()[ex_beam.A].item() == pytest.approx(0.9, abs=1e-5)
    assert logp.exp()[ex_beam.B].item() == pytest.approx(0.1, abs=1e-5)
    assert ex_beam.KEPT([ex_beam.BOS, ex_beam.B]).exp()[ex_beam.EOS].item() == pytest.approx(1.0, abs=1e-5)
    batch = ex_beam.KEPT(torch.tensor([[1, 3], [1, 4]]))
    assert batch.shape == (2, ex_beam.V)


def lp(n, a):
    return ((5 + n) / 6) ** a


def beam_aside(next_logprobs, bos_id, eos_id, beam_size, max_len, alpha, *, penalty=lp, stop_first=False,
               keep_bos=False, only_top_k=False, keep_finished=True):
    """Lists of (ids, score): every <eos> ending of the beam is set aside as finished."""
    alive, finished = [([bos_id], 0.0)], []
    for _ in range(max_len):
        cands = [(seq + [t], s + float(lp_t)) for seq, s in alive for t, lp_t in enumerate(next_logprobs(seq))]
        cands.sort(key=lambda c: c[1] / penalty(len(c[0]) - 1, alpha), reverse=True)
        ended = [c for c in (cands[:beam_size] if only_top_k else cands) if c[0][-1] == eos_id]
        if keep_finished:
            finished += ended
        alive = [c for c in cands if c[0][-1] != eos_id][:beam_size]
        if stop_first and finished:
            break
    best = max(finished or alive, key=lambda c: c[1] / penalty(len(c[0]) - 1, alpha))[0]
    return best if keep_bos else best[1:]


def beam_tensor(next_logprobs, bos_id, eos_id, beam_size, max_len, alpha):
    """Batched over the beam: the <eos> ending of each row is scored, then <eos> is banned."""
    ys, scores = torch.tensor([[bos_id]]), torch.zeros(1, dtype=torch.float64)
    best_score, best = float("-inf"), None
    for t in range(1, max_len + 1):
        logp = next_logprobs(ys)
        ended = (scores + logp[:, eos_id]) / lp(t, alpha)
        j = int(ended.argmax())
        if float(ended[j]) > best_score:
            best_score, best = float(ended[j]), ys[j].tolist() + [eos_id]
        logp[:, eos_id] = float("-inf")
        top = (scores[:, None] + logp).flatten().topk(min(beam_size, logp.numel()))
        V = logp.shape[-1]
        ys = torch.cat([ys[top.indices // V], (top.indices % V)[:, None]], 1)
        scores = top.values
    return torch.tensor(best[1:])


def beam_frozen_in_beam(next_logprobs, bos_id, eos_id, beam_size, max_len, alpha):
    """tformer's pre-fix scheme: finished hypotheses stay in the beam with a frozen score and are lost
    when they fall out of the k best."""
    beams = [([bos_id], 0.0, False)]
    for _ in range(max_len):
        cands = []
        for seq, s, done in beams:
            if done:
                cands.append((seq, s, True))
                continue
            cands += [(seq + [t], s + float(v), t == eos_id) for t, v in enumerate(next_logprobs(seq))]
        cands.sort(key=lambda c: c[1] / lp(len(c[0]) - 1, alpha), reverse=True)
        beams = cands[:beam_size]
    finished = [b for b in beams if b[2]] or beams
    return max(finished, key=lambda c: c[1] / lp(len(c[0]) - 1, alpha))[0][1:]


@pytest.mark.parametrize("fn", [beam_aside, beam_tensor])
def test_beam_searches_that_keep_finished_hypotheses_pass(fn):
    assert run("decode.beam_search", fn) == 5


def test_the_issues_toy_model_answers_b_eos():
    assert beam_aside(ex_beam.KEPT, ex_beam.BOS, ex_beam.EOS, 2, 6, 0.0) == [ex_beam.B, ex_beam.EOS]


@pytest.mark.parametrize("fn, words", [
    (beam_frozen_in_beam, "was lost"),
    (functools.partial(beam_aside, only_top_k=True), "was lost"),
    (functools.partial(beam_aside, keep_finished=False), "was lost"),
    (functools.partial(beam_aside, stop_first=True), "do not stop at the first"),
    (functools.partial(beam_aside, penalty=lambda n, a: 1.0), "divide each hypothesis"),
    (functools.partial(beam_aside, penalty=lambda n, a: 1 / lp(n, a)), "divide each hypothesis"),
    (functools.partial(beam_aside, penalty=lambda n, a: lp(n, 1.0)), "α = 0 means lp = 1"),
    (functools.partial(beam_aside, keep_bos=True), "do not return <bos>"),
    (lambda *args: beam_aside(*args)[:-1], "with its <eos>"),
])
def test_beam_search_mistakes_fail_with_their_hint(fn, words):
    fails_with("decode.beam_search", fn, words)


def test_stopping_at_the_first_finished_hypothesis_is_named_when_it_is_the_only_slip():
    def stop_at_first_real_finish(next_logprobs, bos_id, eos_id, beam_size, max_len, alpha):
        alive, finished = [([bos_id], 0.0)], []
        for _ in range(max_len):
            cands = [(seq + [t], s + float(v)) for seq, s in alive for t, v in enumerate(next_logprobs(seq))]
            cands.sort(key=lambda c: c[1] / lp(len(c[0]) - 1, alpha), reverse=True)
            finished += [c for c in cands if c[0][-1] == eos_id and c[1] > -10]  # ignores the 1e-6 floor
            alive = [c for c in cands if c[0][-1] != eos_id][:beam_size]
            if finished:
                break
        return max(finished, key=lambda c: c[1] / lp(len(c[0]) - 1, alpha))[0][1:]

    failure = fails_with("decode.beam_search", stop_at_first_real_finish, "do not stop at the first")
    assert failure.message.startswith("case 2")


@pytest.mark.parametrize("fn, words", [
    (lambda n, a: n.double() ** a, "not len^α"),
    (lambda n, a: (5 + n) / 6, "to the power α"),
    (lambda n, a: ((5 + n) / 6) ** -a, "not its inverse"),
    (lambda n, a: (5 + n) ** a / 6, "whole fraction"),
])
def test_length_penalty_mistakes_fail_with_their_hint(fn, words):
    fails_with("decode.length_penalty", fn, words)


@pytest.mark.parametrize("fn", [lambda n, a: ((5 + n) / 6) ** a,
                                lambda n, a: torch.pow((n.double() + 5) / 6, a),
                                lambda n, a: torch.exp(a * torch.log((5.0 + n) / 6.0))])
def test_length_penalty_correct_answers_pass(fn):
    assert run("decode.length_penalty", fn) == 4
