"""Wrong answers through every checker: the five holes of issue 19 are closed, each classic mistake
gets a hint naming it, a catalogue of further plausible wrong answers all fail, and no answer —
whatever it returns or raises — makes a checker raise or print more than one line plus a hint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tformer.course.exercises import CheckFailed, _registry, available, check
from tformer.inference.generation import greedy_decode
from tformer.masks import causal_mask
from tformer.nn.positional import sinusoidal_encoding


def run(name, fn):
    return _registry()[name](fn)


def fails_with(name, fn, words=""):
    with pytest.raises(CheckFailed) as info:
        run(name, fn)
    assert words in info.value.hint, info.value.hint
    return info.value


# --- the five holes ---------------------------------------------------------------------------


def test_rank_losses_returning_the_global_mean_on_every_rank_fails_on_the_jacobian():
    failure = fails_with("distributed.rank_losses", lambda s, n: (s.sum() / n.sum()).expand(len(n)),
                         "each process back-propagates only its own shard")
    assert "depends on the loss sums of other processes" in failure.message


def test_label_smoothing_with_pad_hard_coded_to_zero_fails_where_pad_is_not_zero():
    def pad_zero(logits, target, eps, pad):
        return F.cross_entropy(logits, target, ignore_index=0, label_smoothing=eps)

    failure = fails_with("train.label_smoothing", pad_zero, "use the pad_id argument")
    assert "pad_id = 3" in failure.message


def test_greedy_with_bos_hard_coded_to_one_fails_with_the_bos_hint():
    failure = fails_with("decode.greedy", lambda m, src, n, bos, eos: greedy_decode(m, src, max_len=n, bos_id=1,
                                                                                     eos_id=eos),
                         "bos_id argument (3 in this case)")
    assert failure.message.startswith("case 2 (bos_id=3")


def test_shift_right_with_bos_hard_coded_to_one_fails_with_the_bos_hint():
    failure = fails_with("train.shift_right", lambda t, bos: torch.cat([torch.full_like(t[:, :1], 1), t[:, :-1]], 1),
                         "use the bos_id argument (3 in this case)")
    assert failure.message.startswith("case 2 (bos_id=3)")


@pytest.mark.parametrize("warming", [lambda step, w: step < w - 1, lambda step, w: step <= w + 1])
def test_noam_switching_branch_one_step_off_fails_next_to_warmup(warming):
    def off_by_one(step, d, w):
        return d**-0.5 * (step * w**-1.5 if warming(step, w) else step**-0.5)

    failure = fails_with("train.noam_lr", off_by_one, "wrong branch")
    assert "step=" in failure.message


# --- each classic mistake of issue 19 has its own hint ---------------------------------------------


def test_label_smoothing_in_the_annotated_transformers_convention_is_named():
    def eps_over_v_minus_2(logits, target, eps, pad):
        V = logits.shape[-1]
        q = torch.full_like(logits, eps / (V - 2))
        q.scatter_(1, target[:, None], 1 - eps)
        q[:, pad] = 0
        loss = -(q * F.log_softmax(logits, -1)).sum(-1)
        return loss[target != pad].mean()

    fails_with("train.label_smoothing", eps_over_v_minus_2, "Annotated Transformer's convention: ε/(V - 2)")


def test_post_ln_written_as_x_plus_ln_of_the_sublayer_is_named():
    def inside(layer, x, mask):
        x = x + layer.norm1(layer.self_attn(x, x, x, mask=mask))
        return x + layer.norm2(layer.ffn(x))

    fails_with("layers.encoder_layer_post_ln", inside, "you wrote x + LN(Sublayer(x))")
    fails_with("layers.encoder_layer_pre_ln", inside, "you wrote x + LN(Sublayer(x))")


def test_decoder_without_the_memory_mask_is_named():
    def no_memory_mask(layer, x, memory, tgt_mask, memory_mask):
        x = layer.norm1(x + layer.self_attn(x, x, x, mask=tgt_mask))
        x = layer.norm2(x + layer.cross_attn(x, memory, memory))
        return layer.norm3(x + layer.ffn(x))

    fails_with("layers.decoder_layer", no_memory_mask, "needs memory_mask")


def _count(d, d_ff, h, n, vocab, *, out_bias=True, heads=1):
    attn = heads * 4 * (d * d + d)
    ffn, ln = 2 * d * d_ff + d_ff + d, 2 * d
    return vocab * d + n * (attn + ffn + 2 * ln) + n * (2 * attn + ffn + 3 * ln) + (vocab if out_bias else 0)


def test_parameter_count_mistakes_are_named():
    assert run("model.parameter_count", _count) == 4
    fails_with("model.parameter_count", lambda *a: _count(*a, out_bias=False), "keeps its own bias")
    fails_with("model.parameter_count", lambda d, f, h, n, v: _count(d, f, h, n, v, heads=h),
               "do not multiply the attention's parameters by h")


def test_positional_encoding_with_base_1000_is_named():
    fails_with("positional.sinusoidal", lambda n, d: sinusoidal_encoding(n, d, base=1000.0), "not 1000")


@pytest.mark.parametrize("shift, sign", [(1, "+"), (-1, "-")])
def test_noam_step_counted_from_zero_is_named(shift, sign):
    def shifted(step, d, w):
        s = step + shift
        return d**-0.5 * min(max(s, 1) ** -0.5, s * w**-1.5)

    fails_with("train.noam_lr", shifted, f"not step {sign} 1")


def test_shift_right_returning_float_ids_is_told_to_return_integers():
    fails_with("train.shift_right", lambda t, bos: torch.cat([torch.full_like(t[:, :1], bos), t[:, :-1]], 1).float(),
               "integer token ids")


def test_returning_weights_then_output_is_named_not_told_q_at_k():
    def swapped(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        w = torch.softmax(scores, -1)
        if mask is not None:
            w = w.masked_fill(~mask, 0.0)
        return w, w @ v

    failure = fails_with("attention.scaled_dot_product", swapped, "you returned (weights, out)")
    assert "q @ k" not in failure.hint


# --- chapters 9b and 13 -------------------------------------------------------------------------


def luong_einsum(states, memory, W, src_mask):
    scores = torch.einsum("btd,de,bse->bts", states, W, memory)
    return scores.masked_fill(~src_mask[:, None, :], float("-inf")).softmax(-1)


def luong_bmm(states, memory, W, src_mask):
    scores = torch.bmm(states @ W, memory.transpose(1, 2))
    scores = scores.masked_fill(~src_mask.unsqueeze(1), torch.finfo(scores.dtype).min)
    return F.softmax(scores, dim=2)


@pytest.mark.parametrize("name, fn", [
    ("rnn.luong_attention", luong_einsum), ("rnn.luong_attention", luong_bmm),
    ("rnn.sequential_steps", lambda S, T, e, d: (S + T, S + T, e + d)),
    ("rnn.sequential_steps", lambda S, T, e, d: [torch.tensor(S + T), S + T, float(e + d)]),
    ("paper.preln_extra_parameters", lambda d, n: 2 * 2 * d),
    ("paper.preln_extra_parameters", lambda d, n: torch.tensor(4 * d)),
    ("paper.attention_memory", lambda T, d_k, b: (T * T * b, T * d_k * b)),
    ("paper.attention_memory", lambda T, d_k, b: torch.tensor([T**2 * b, T * d_k * b], dtype=torch.float64)),
    ("paper.additive_score_terms", lambda x, y, pe, m, n: (x @ y, x @ pe[n], pe[m] @ y, pe[m] @ pe[n])),
    ("paper.additive_score_terms", lambda x, y, pe, m, n: torch.stack(
        [torch.dot(x, y), torch.dot(x, pe[n]), torch.dot(pe[m], y), (pe[m] * pe[n]).sum()])),
])
def test_chapter_9b_and_13_correct_answers_written_differently_pass(name, fn):
    assert run(name, fn) >= 3


@pytest.mark.parametrize("name, fn, words", [
    ("rnn.luong_attention", lambda s, m, W, mask: luong_einsum(s, m, W.T, mask), "not states @ W.T"),
    ("rnn.luong_attention", lambda s, m, W, mask: (s @ W @ m.transpose(1, 2)).softmax(-1), "use src_mask"),
    ("rnn.luong_attention", lambda s, m, W, mask: (s @ W @ m.transpose(1, 2)).masked_fill(
        ~mask[:, None], float("-inf")).softmax(1), "dim=-1"),
    ("rnn.sequential_steps", lambda S, T, e, d: (2 * S + T, 2 * S + T, e + d), "side by side"),
    ("rnn.sequential_steps", lambda S, T, e, d: (S + T, S + 2 * T, e + d), "attention adds no step"),
    ("rnn.sequential_steps", lambda S, T, e, d: (S + T, S + T, S + T), "one step per layer"),
    ("paper.preln_extra_parameters", lambda d, n: 4 * d * n, "not one per layer"),
    ("paper.preln_extra_parameters", lambda d, n: 0, "one LayerNorm at the end"),
    ("paper.attention_memory", lambda T, d_k, b: (T * d_k * b, T * d_k * b), "T × T, not T × d_k"),
    ("paper.attention_memory", lambda T, d_k, b: (T * T, T * d_k), "bytes per number"),
    ("paper.attention_memory", lambda T, d_k, b: (T * d_k * b, T * T * b), "weights come first"),
    ("paper.additive_score_terms", lambda x, y, pe, m, n: (x @ y, x @ pe[m], pe[n] @ y, pe[m] @ pe[n]),
     "cross terms are x·PE[n]"),
    ("paper.additive_score_terms", lambda x, y, pe, m, n: ((x + pe[m]) @ (y + pe[n]),) * 4, "expand"),
])
def test_chapter_9b_and_13_mistakes_fail_with_their_hint(name, fn, words):
    fails_with(name, fn, words)


# --- a catalogue of further wrong answers: every one must fail ----------------------------------


def _sdpa(q, k, v, mask=None, *, scale=None, fill=None):
    scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min if fill is None else fill)
    w = torch.softmax(scores, -1)
    if mask is not None:
        w = w.masked_fill(~mask, 0.0)
    return w @ v


WRONG = [
    ("why.cnn_layers_needed", lambda n, k: math.ceil(n / k)),
    ("why.cnn_layers_needed", lambda n, k: n // (k - 1)),
    ("why.padding_fraction", lambda lengths, b: sum(lengths) / (max(lengths) * len(lengths))),
    ("attention.scaled_dot_product", lambda q, k, v, mask=None: _sdpa(q, k, v, mask, scale=q.shape[-1])),
    ("attention.scaled_dot_product", lambda q, k, v, mask=None: _sdpa(q, k, v, mask) * 2),
    ("attention.scaled_dot_product", lambda q, k, v, mask=None: _sdpa(q, k, v, mask, fill=0.0)),
    ("attention.scaled_dot_product", lambda q, k, v, mask=None: _sdpa(q, k, v, mask, scale=math.sqrt(v.shape[-1]))),
    ("attention.causal_mask", lambda T: torch.ones(T, T, dtype=torch.bool)),
    ("attention.causal_mask", lambda T: torch.ones(T, T, dtype=torch.bool).tril(1)),
    ("attention.causal_mask", lambda T: torch.zeros(T, T).masked_fill(~causal_mask(T), float("-inf"))),
    ("attention.multi_head_split", lambda x, h: x.view(x.shape[0], x.shape[1], x.shape[2] // h, h).permute(0, 3, 1, 2)),
    ("attention.multi_head_split", lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1)),
    ("attention.multi_head_merge", lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], -1)),
    ("positional.sinusoidal", lambda n, d: sinusoidal_encoding(n, d, base=100.0)),
    ("positional.sinusoidal", lambda n, d: sinusoidal_encoding(n + 1, d)[1:]),
    ("layers.feed_forward", lambda x, w1, b1, w2, b2: F.relu(x @ w1) @ w2),
    ("layers.feed_forward", lambda x, w1, b1, w2, b2: F.gelu(x @ w1 + b1) @ w2 + b2),
    ("layers.encoder_layer_post_ln", lambda layer, x, mask: layer(x, mask) + 0.01),
    ("layers.encoder_layer_pre_ln", lambda layer, x, mask: x + layer.self_attn(x, x, x, mask=mask)),
    ("layers.decoder_layer", lambda layer, x, memory, tgt, mm: layer.norm3(x + layer.ffn(x))),
    ("model.parameter_count", lambda d, f, h, n, v: _count(d, f, h, n, v) + 2 * d),
    ("model.parameter_count", lambda d, f, h, n, v: _count(d, f, h, n, v) - n * 2 * d),
    ("train.label_smoothing", lambda lg, t, e, p: F.cross_entropy(lg, t, ignore_index=p)),
    ("train.label_smoothing", lambda lg, t, e, p: F.cross_entropy(lg, t, ignore_index=p, label_smoothing=e,
                                                                  reduction="sum")),
    ("train.noam_lr", lambda s, d, w: d**-0.5 * s**-0.5),
    ("train.noam_lr", lambda s, d, w: d**-0.5 * min(s**-0.5, s * w**-1.5) * 2),
    ("train.shift_right", lambda t, bos: t),
    ("train.shift_right", lambda t, bos: torch.cat([torch.full_like(t[:, :1], bos), t[:, :-1]], 1).float() + 0.5),
    ("decode.greedy", lambda m, src, n, bos, eos: greedy_decode(m, src, max_len=1, bos_id=bos, eos_id=eos)),
    ("decode.greedy", lambda m, src, n, bos, eos: greedy_decode(m, src[:, :-1], max_len=n, bos_id=bos,
                                                                eos_id=eos)),
    ("gpt.temperature", lambda x, t: torch.softmax(x / t**2, -1)),
    ("gpt.temperature", lambda x, t: torch.softmax(x, -1) ** (1 / t)),
    ("gpt.top_k_filter", lambda x, k: x),
    ("gpt.top_k_filter", lambda x, k: x.masked_fill(x < x.topk(k).values[..., -1:], -1e9)),
    ("gpt.top_p_filter", lambda x, p: x.masked_fill(torch.softmax(x, -1) < 1 - p, float("-inf"))),
    ("pretrained.mean_pool", lambda hd, m: hd.sum(1) / m.shape[1]),
    ("pretrained.mean_pool", lambda hd, m: hd[:, 0]),
    ("pretrained.key_padding_mask", lambda m: m.bool()),
    ("pretrained.key_padding_mask", lambda m: (m == 0)[:, None, None, :]),
    ("pretrained.top_k", lambda q, c, k: (F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T).topk(k, largest=False).indices),
    ("distributed.shard", lambda items, r, w: items[r:: w][: len(items) // w + 1]),
    ("distributed.shard", lambda items, r, w: items[: len(items) // w]),
    ("distributed.rank_losses", lambda s, n: s / n.sum()),
    ("distributed.rank_losses", lambda s, n: (len(n) * s / n.sum()).detach().requires_grad_()),
    ("distributed.rank_losses", lambda s, n: (len(n) * s + 0.5 * (s.sum() - len(n) * s)) / n.sum()),
    ("llm.rope", lambda x, start: x),
    ("llm.rms_norm", lambda x, w, eps: x / x.std(-1, keepdim=True) * w),
    ("llm.swiglu", lambda x, g, u, d: (F.silu(x @ g) + (x @ u)) @ d),
    ("llm.repeat_kv", lambda x, n: x),
    ("llm.grouped_query_attention", lambda q, k, v, mask=None: q),
    ("llm.kv_cache", lambda c, k, v: (k, v, 0)),
    ("decode.length_penalty", lambda n, a: ((6 + n) / 6) ** a),
    ("decode.beam_search", lambda lp, bos, eos, k, n, a: [eos]),
    ("rnn.luong_attention", lambda s, m, W, mask: torch.ones(s.shape[0], s.shape[1], m.shape[1]) / m.shape[1]),
    ("rnn.sequential_steps", lambda S, T, e, d: (S, T, e)),
    ("paper.preln_extra_parameters", lambda d, n: 2 * d),
    ("paper.attention_memory", lambda T, d_k, b: T * T * b),
    ("paper.additive_score_terms", lambda x, y, pe, m, n: (0.0, 0.0, 0.0, 0.0)),
    ("finetune.lora_forward", lambda x, w, A, B, a: x @ w.T + a * (x @ A.T) @ B.T / w.shape[0]),
    ("finetune.lora_forward", lambda x, w, A, B, a: x @ w.T - a / A.shape[0] * (x @ A.T) @ B.T),
    ("finetune.lora_merge", lambda w, A, B, a: w + B @ A / A.shape[0]),
    ("finetune.lora_merge", lambda w, A, B, a: (w + a / A.shape[0] * B @ A).T.contiguous()),
    ("finetune.lora_parameter_count", lambda shapes, r: r * len(shapes)),
    ("finetune.lora_parameter_count", lambda shapes, r: sum(r * (i + o) for o, i in set(shapes))),
]


@pytest.mark.parametrize("name, fn", WRONG, ids=[f"{n}-{i}" for i, (n, _) in enumerate(WRONG)])
def test_further_wrong_answers_all_fail(name, fn, capsys):
    assert check(name, fn) is False
    out = capsys.readouterr().out
    assert 1 <= len(out.splitlines()) <= 2 and out.startswith(f"✗ {name}: ")


def test_the_catalogue_reaches_every_checker():
    assert {name for name, _ in WRONG} == set(available())


# --- whatever comes back, one line naming the case ----------------------------------------------


GARBAGE = {
    "None": lambda *a, **k: None,
    "a string": lambda *a, **k: "x",
    "an int": lambda *a, **k: 3,
    "a bool": lambda *a, **k: True,
    "a short list": lambda *a, **k: [1, 2],
    "a tuple": lambda *a, **k: (torch.zeros(2), 1, "a"),
    "an empty tensor": lambda *a, **k: torch.zeros(0),
    "a NaN tensor": lambda *a, **k: torch.full((2, 3), float("nan")),
    "a complex tensor": lambda *a, **k: torch.zeros(2, 3, dtype=torch.complex64),
    "an int64 tensor": lambda *a, **k: torch.zeros(2, 3, dtype=torch.long),
    "a bool tensor": lambda *a, **k: torch.zeros(4, 4, dtype=torch.bool),
    "a float16 tensor of the wrong shape": lambda *a, **k: torch.zeros(3, 1, 2, dtype=torch.float16),
    "a numpy array": lambda *a, **k: np.zeros((2, 3)),
    "a meta tensor": lambda *a, **k: torch.empty(2, 3, device="meta"),
    "a dict": lambda *a, **k: {"a": 1},
    "a generator": lambda *a, **k: (i for i in range(3)),
    "a ragged list": lambda *a, **k: [[1, 2], [3]],
    "its first argument": lambda *a, **k: a[0] if a else 0,
}


def _raises(*args, **kwargs):
    raise ValueError("boom")


GARBAGE["raising ValueError"] = _raises


@pytest.mark.parametrize("name", available())
def test_no_checker_raises_whatever_the_function_returns_or_raises(name, capsys):
    for what, fn in GARBAGE.items():
        assert check(name, fn) is False, what
        lines = capsys.readouterr().out.splitlines()
        assert 1 <= len(lines) <= 2, (what, lines)
        first = lines[0]
        assert first.startswith((f"✗ {name}: ", f"… {name}: ")), (what, first)
        assert "could not use" not in first, (what, first)  # the fallback never needed
        known = ("case ", "your function raised", "not implemented yet", "meta device")
        assert any(k in first for k in known), (what, first)
