from __future__ import annotations

import math

import pytest
import torch

from tformer.course.exercises import CheckFailed, available, check
from tformer.course.exercises import attention as ex

# --- reference solutions, written the way a reader would ---------------------------------------


def sdpa(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
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
    return ex.CHECKS[name](fn)


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

    assert run("attention.scaled_dot_product", scaled_dot_product_attention) == 4
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
