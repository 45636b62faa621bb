from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import NEG_INF

from tformer.course.exercises import CheckFailed, _registry, available, check
from tformer.course.exercises.gpt import CHECKS

# --- reference solutions, written the way a reader would ---------------------------------------


def sdpa(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # finite: no NaN row
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)  # a query that may see no key gets zeros
    return weights @ v, weights


def sdpa_out_only(q, k, v, mask=None):
    return sdpa(q, k, v, mask)[0]


def sdpa_no_scale(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def sdpa_mask_after_softmax(q, k, v, mask=None):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v


def sdpa_wrong_axis(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-2) @ v


def sdpa_inverted_mask(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def split(x, num_heads):
    B, T, d = x.shape
    return x.view(B, T, num_heads, d // num_heads).transpose(1, 2)


def split_no_transpose(x, num_heads):
    B, T, d = x.shape
    return x.view(B, num_heads, T, d // num_heads)


def merge(x):
    B, h, T, d_k = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d_k)


def merge_with_view(x):
    B, h, T, d_k = x.shape
    return x.transpose(1, 2).view(B, T, h * d_k)


def merge_no_transpose(x):
    B, h, T, d_k = x.shape
    return x.reshape(B, T, h * d_k)


def sinusoidal(max_len, d_model):
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(pos / freq)
    pe[:, 1::2] = torch.cos(pos / freq)
    return pe


def sinusoidal_swapped(max_len, d_model):
    pe = sinusoidal(max_len, d_model)
    out = pe.clone()
    out[:, 0::2], out[:, 1::2] = pe[:, 1::2], pe[:, 0::2]
    return out


def sinusoidal_halves(max_len, d_model):
    pe = sinusoidal(max_len, d_model)
    return torch.cat([pe[:, 0::2], pe[:, 1::2]], dim=-1)


def causal(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


def run(name, fn):
    return _registry()[name](fn)


# --- acceptance ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, fn",
    [
        ("attention.scaled_dot_product", sdpa),
        ("attention.scaled_dot_product", sdpa_out_only),
        ("attention.multi_head_split", split),
        ("attention.multi_head_merge", merge),
        ("positional.sinusoidal", sinusoidal),
        ("attention.causal_mask", causal),
    ],
)
def test_reference_solutions_pass(name, fn, capsys):
    assert run(name, fn) >= 2
    assert check(name, fn) is True
    assert "✓" in capsys.readouterr().out


def test_package_functions_pass_their_own_checks():
    from tformer.masks import causal_mask
    from tformer.nn.attention import scaled_dot_product_attention
    from tformer.nn.positional import sinusoidal_encoding

    assert run("attention.scaled_dot_product", scaled_dot_product_attention) == 5
    assert run("attention.causal_mask", causal_mask) == 3
    assert run("positional.sinusoidal", sinusoidal_encoding) == 3


# --- rejection of the classic mistakes, each with its hint ---------------------------------------


@pytest.mark.parametrize(
    "name, fn, hint_words",
    [
        ("attention.scaled_dot_product", sdpa_no_scale, "√d_k"),
        ("attention.scaled_dot_product", sdpa_mask_after_softmax, "before the softmax"),
        ("attention.scaled_dot_product", sdpa_wrong_axis, "dim=-1"),
        ("attention.scaled_dot_product", sdpa_inverted_mask, "True means 'may attend'"),
        ("attention.scaled_dot_product", lambda q, k, v, mask=None: sdpa(q, k, v)[0], "mask was not used"),
        ("attention.multi_head_split", split_no_transpose, "transpose"),
        ("attention.multi_head_merge", merge_no_transpose, "transpose back"),
        ("attention.multi_head_merge", merge_with_view, "contiguous"),
        ("positional.sinusoidal", sinusoidal_swapped, "sin goes in the even"),
        ("positional.sinusoidal", sinusoidal_halves, "interleaves"),
        ("attention.causal_mask", lambda T: ~causal(T), "True must mean 'may attend'"),
        ("attention.causal_mask", lambda T: causal(T).T.clone(), ".tril(), not .triu()"),
        ("attention.causal_mask", lambda T: causal(T).tril(-1), "attend to itself"),
        ("attention.causal_mask", lambda T: causal(T).float(), "bool"),
    ],
)
def test_classic_mistakes_are_rejected_with_a_hint(name, fn, hint_words):
    with pytest.raises(CheckFailed) as info:
        run(name, fn)
    assert info.value.message.startswith("case ")
    assert hint_words in info.value.hint


def test_wrong_weights_are_reported_even_when_the_output_is_right():
    def bad_weights(q, k, v, mask=None):
        out, w = sdpa(q, k, v, mask)
        return out, w.transpose(-2, -1)

    with pytest.raises(CheckFailed, match="weights"):
        run("attention.scaled_dot_product", bad_weights)


def test_check_prints_the_failed_case_and_hint(capsys):
    assert check("attention.scaled_dot_product", sdpa_no_scale) is False
    out = capsys.readouterr().out
    assert "✗ attention.scaled_dot_product: case 1" in out
    assert "Hint:" in out and "√d_k" in out


def test_check_rejects_a_non_callable_with_type_error():
    with pytest.raises(TypeError, match="callable"):
        check("attention.scaled_dot_product", torch.zeros(3))


def test_check_rejects_an_unknown_name_listing_the_valid_ones():
    with pytest.raises(ValueError, match="attention.scaled_dot_product") as info:
        check("attention.scaled_dot", sdpa)
    assert "positional.sinusoidal" in str(info.value)


def test_available_lists_the_part_one_checkers():
    names = set(available())
    assert {
        "attention.scaled_dot_product",
        "attention.multi_head_split",
        "attention.multi_head_merge",
        "attention.causal_mask",
        "positional.sinusoidal",
    } <= names


def test_chapter_one_checkers_accept_the_formulas_and_reject_common_slips():
    assert run("why.cnn_layers_needed", lambda n, k: math.ceil(n / (k - 1))) == 8
    with pytest.raises(CheckFailed) as info:
        run("why.cnn_layers_needed", lambda n, k: n)  # one output position at token 0
    assert "both sides" in info.value.hint

    def padding_fraction(lengths, batch_size):
        batches = [lengths[i:i + batch_size] for i in range(0, len(lengths), batch_size)]
        return 1 - sum(lengths) / sum(max(b) * len(b) for b in batches)

    assert run("why.padding_fraction", padding_fraction) == 5

    def pads_to_global_max(lengths, batch_size):
        return 1 - sum(lengths) / (max(lengths) * len(lengths))

    with pytest.raises(CheckFailed) as info:
        run("why.padding_fraction", pads_to_global_max)
    assert "its own longest" in info.value.hint


def test_training_checkers_accept_the_reference_solutions():
    from tformer.course.exercises import check
    from tformer.inference.generation import greedy_decode

    def ls(logits, target, eps, pad):
        return F.cross_entropy(logits, target, ignore_index=pad, label_smoothing=eps)

    assert check("train.label_smoothing", ls, quiet=True)
    assert check("train.noam_lr", lambda s, d, w: d**-0.5 * min(s**-0.5, s * w**-1.5), quiet=True)
    assert check("train.shift_right",
                 lambda t, bos: torch.cat([torch.full_like(t[:, :1], bos), t[:, :-1]], 1), quiet=True)
    assert check("decode.greedy",
                 lambda m, src, n, bos, eos: greedy_decode(m, src, max_len=n, bos_id=bos, eos_id=eos),
                 quiet=True)


def _verdict(name, fn, capsys):
    from tformer.course.exercises import check

    assert not check(name, fn)
    return capsys.readouterr().out


def test_training_checkers_name_the_typical_mistakes(capsys):
    def no_pad(logits, target, eps, pad):
        return F.cross_entropy(logits, target, label_smoothing=eps)

    assert "pad_id must be left out" in _verdict("train.label_smoothing", no_pad, capsys)

    def other_classes(logits, target, eps, pad):
        logp = F.log_softmax(logits, -1)
        nll = -logp.gather(-1, target[:, None]).squeeze(-1)
        loss = (1 - eps) * nll + eps * (-logp.sum(-1) - nll) / (logits.shape[-1] - 1)
        return loss[target != pad].mean()

    assert "all V classes" in _verdict("train.label_smoothing", other_classes, capsys)
    assert "d_model^-0.5" in _verdict("train.noam_lr", lambda s, d, w: min(s**-0.5, s * w**-1.5), capsys)
    assert "min of" in _verdict("train.noam_lr", lambda s, d, w: d**-0.5 * max(s**-0.5, s * w**-1.5), capsys)
    out = _verdict("train.shift_right", lambda t, bos: torch.cat([torch.full_like(t[:, :1], bos), t], 1), capsys)
    assert "drop the last token" in out
    out = _verdict("train.shift_right", lambda t, bos: torch.cat([t[:, 1:], torch.full_like(t[:, :1], bos)], 1),
                   capsys)
    assert "shift to the right" in out

    def keeps_bos(model, src, n, bos, eos):
        from tformer.inference.generation import greedy_decode

        out = greedy_decode(model, src, max_len=n, bos_id=bos, eos_id=eos)
        return torch.cat([torch.full_like(out[:, :1], bos), out], 1)

    assert "do not return it" in _verdict("decode.greedy", keeps_bos, capsys)


def _run_checker(name, fn, capsys):
    from tformer.course.exercises import check

    ok = check(name, fn)
    return ok, capsys.readouterr().out


def test_shard_checker_accepts_a_strided_solution_and_rejects_uneven_or_contiguous_shards(capsys):
    ok, out = _run_checker("distributed.shard", lambda items, r, w: list(items[r : len(items) - len(items) % w : w]), capsys)
    assert ok and "all 5 cases pass" in out
    ok, out = _run_checker("distributed.shard", lambda items, r, w: list(items[r::w]), capsys)  # keeps the tail
    assert not ok and "sizes [4, 4, 3]" in out and "same number of items" in out
    ok, out = _run_checker(
        "distributed.shard", lambda items, r, w: list(items[r * (len(items) // w) : (r + 1) * (len(items) // w)]), capsys
    )
    assert not ok and "every world_size-th item" in out


def test_rank_losses_checker_accepts_global_normalisation_and_names_the_mean_of_means(capsys):
    ok, out = _run_checker("distributed.rank_losses", lambda s, n: len(n) * s / n.sum(), capsys)
    assert ok and "all 4 cases pass" in out
    ok, out = _run_checker("distributed.rank_losses", lambda s, n: s / n, capsys)
    assert not ok and "mean of the per-process means" in out
    ok, out = _run_checker("distributed.rank_losses", lambda s, n: s / n.sum(), capsys)  # forgot × W
    assert not ok and "must be Σ S_r / Σ n_r" in out


def reader_temperature(logits, t):
    return torch.softmax(logits / t, dim=-1)


def reader_top_k(logits, k):
    kth = torch.sort(logits, dim=-1, descending=True).values[..., k - 1 : k]
    return torch.where(logits >= kth, logits, torch.full_like(logits, NEG_INF))


def reader_top_p(logits, p):
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


@pytest.mark.parametrize(
    "name, fn",
    [("gpt.temperature", reader_temperature), ("gpt.top_k_filter", reader_top_k),
     ("gpt.top_p_filter", reader_top_p)],
)
def test_sampling_checkers_accept_a_readers_correct_solution(name, fn, capsys):
    assert check(name, fn)
    assert "all 3 cases pass" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, wrong, hint",
    [
        ("gpt.temperature", lambda x, t: torch.softmax(x * t, -1), "do not multiply"),
        ("gpt.temperature", lambda x, t: torch.softmax(x, -1) / t, "not the probabilities after"),
        ("gpt.top_k_filter", lambda x, k: x.masked_fill(x < x.topk(k).values[..., -1:], 0.0), "not 0"),
        ("gpt.top_k_filter", lambda x, k: x.masked_fill(x <= x.topk(k).values[..., -1:], NEG_INF),
         "strictly above"),
        ("gpt.top_k_filter", lambda x, k: x.masked_fill(x < x.topk(k + 1).values[..., -1:], NEG_INF),
         "k + 1"),
        ("gpt.top_p_filter", lambda x, p: top_p_keep_crossing_bug(x, p), "crosses p"),
        ("gpt.top_p_filter", lambda x, p: x, "sort the probabilities"),
    ],
)
def test_sampling_checkers_name_the_typical_mistake(name, wrong, hint):
    with pytest.raises(CheckFailed) as failure:
        CHECKS[name](wrong)
    assert hint in failure.value.hint
    assert failure.value.message.startswith("case ")


def top_p_keep_crossing_bug(logits, p):
    probs, order = torch.softmax(logits, -1).sort(-1, descending=True)
    drop_sorted = probs.cumsum(-1) > p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), NEG_INF)
