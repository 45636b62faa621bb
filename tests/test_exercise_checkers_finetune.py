"""The checkers of chapter 11c's ideas (the LoRA layer, merging it, counting what it trains): their
references agree with tformer's LoRALinear, correct answers written differently pass, each classic
mistake fails with its own hint in English and Chinese, and a bad return is reported, not raised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tformer.course.exercises import CheckFailed, _registry, check
from tformer.course.exercises import finetune as ex_ft
from tformer.nn.lora import LoRALinear


def run(name, fn):
    return _registry()[name](fn)


def fails_with(name, fn, words, zh_words=None):
    with pytest.raises(CheckFailed) as info:
        run(name, fn)
    assert info.value.message.startswith("case "), info.value.message
    assert words in info.value.hint, info.value.hint
    if zh_words is not None:
        assert zh_words in info.value.hint.zh, info.value.hint.zh
    return info.value


def _lora_layer(weight, A, B, alpha):
    layer = LoRALinear(nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.float64),
                       rank=A.shape[0], alpha=alpha)
    with torch.no_grad():
        layer.base.weight.copy_(weight)
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    return layer


# --- the references are tformer's LoRALinear and hand-computed numbers ----------------------------


def test_forward_and_merge_references_equal_lora_linear():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 3, 10, generator=g, dtype=torch.float64), torch.randn(7, 10, generator=g, dtype=torch.float64)
    A, B = torch.randn(4, 10, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64)
    layer = _lora_layer(w, A, B, 12.0)
    with torch.no_grad():
        torch.testing.assert_close(ex_ft.lora_forward_reference(x, w, A, B, 12.0), layer(x))
        layer.merge()
        torch.testing.assert_close(ex_ft.lora_merge_reference(w, A, B, 12.0), layer.base.weight)


def test_forward_reference_by_hand_on_a_one_by_one_layer():
    # W = 2, A = 3, B = 5, r = 1, alpha = 4: h = 2x + 4·(3x)·5 = 62x
    one = torch.ones(1, 1, dtype=torch.float64)
    out = ex_ft.lora_forward_reference(torch.tensor([1.5], dtype=torch.float64), 2 * one, 3 * one, 5 * one, 4.0)
    assert out.tolist() == [93.0]


def test_smollm2_query_and_value_adapters_at_rank_8_train_460800_numbers():
    # 30 layers × (8·(576 + 576) + 8·(576 + 192)) = 30 × (9,216 + 6,144) = 30 × 15,360
    assert ex_ft.lora_parameter_count_reference(ex_ft.SMOLLM2_QV, 8) == 460_800 == 30 * (9_216 + 6_144)


def test_lora_linear_trains_as_many_numbers_as_the_count_reference():
    layer = LoRALinear(nn.Linear(576, 192), rank=8, alpha=16)
    trained = sum(p.numel() for name, p in layer.named_parameters() if name.startswith("lora_"))
    assert trained == ex_ft.lora_parameter_count_reference([(192, 576)], 8) == 6_144


# --- correct answers written differently pass -----------------------------------------------------


def forward_plain(x, w, A, B, alpha):
    return x @ w.T + (alpha / A.shape[0]) * (x @ A.T) @ B.T


def forward_einsum(x, w, A, B, alpha):
    r = A.shape[0]
    z = torch.einsum("...i,ri->...r", x, A)
    return torch.einsum("...i,oi->...o", x, w) + alpha / r * torch.einsum("...r,or->...o", z, B)


def forward_linear(x, w, A, B, alpha):
    return F.linear(x, w) + F.linear(F.linear(x, A), B) * (alpha / len(A))


def forward_merged(x, w, A, B, alpha):
    return x @ (w + alpha / A.size(0) * B @ A).T


def forward_module(x, w, A, B, alpha):
    with torch.no_grad():
        return _lora_layer(w, A, B, alpha)(x)


def merge_plain(w, A, B, alpha):
    return w + (alpha / A.shape[0]) * B @ A


def merge_addmm(w, A, B, alpha):
    return torch.addmm(w, B, A, alpha=alpha / A.shape[0])


def merge_einsum(w, A, B, alpha):
    return w + torch.einsum("or,ri->oi", B, A) * alpha / A.shape[0]


def merge_clone_then_inplace(w, A, B, alpha):
    merged = w.clone()
    merged += (alpha / A.shape[0]) * (B @ A)
    return merged


def merge_module(w, A, B, alpha):
    layer = _lora_layer(w, A, B, alpha)
    layer.merge()
    return layer.base.weight.detach()


@pytest.mark.parametrize("name, fn", [
    ("finetune.lora_forward", forward_plain), ("finetune.lora_forward", forward_einsum),
    ("finetune.lora_forward", forward_linear), ("finetune.lora_forward", forward_merged),
    ("finetune.lora_forward", forward_module),
    ("finetune.lora_merge", merge_plain), ("finetune.lora_merge", merge_addmm), ("finetune.lora_merge", merge_einsum),
    ("finetune.lora_merge", merge_clone_then_inplace), ("finetune.lora_merge", merge_module),
    ("finetune.lora_parameter_count", lambda shapes, r: sum(r * (i + o) for o, i in shapes)),
    ("finetune.lora_parameter_count", lambda shapes, r: torch.tensor(shapes).sum() * r),
    ("finetune.lora_parameter_count", lambda shapes, r: float(r * sum(map(sum, shapes)))),
    ("finetune.lora_parameter_count", lambda shapes, r: np.int64(r * np.asarray(shapes).sum())),
    ("finetune.lora_parameter_count",
     lambda shapes, r: sum(LoRALinear(nn.Linear(i, o, device="meta"), r, 1).lora_A.numel()
                           + LoRALinear(nn.Linear(i, o, device="meta"), r, 1).lora_B.numel() for o, i in shapes)),
])
def test_correct_answers_written_differently_pass(name, fn):
    assert run(name, fn) >= 5


def test_forward_cases_cover_1d_2d_3d_inputs_ranks_1_to_8_and_non_square_layers(capsys):
    seen = []

    def spy(x, w, A, B, alpha):
        seen.append((x.dim(), A.shape[0], tuple(w.shape)))
        return forward_plain(x, w, A, B, alpha)

    assert check("finetune.lora_forward", spy) is True
    assert {d for d, _, _ in seen} == {1, 2, 3}
    assert {r for _, r, _ in seen} >= {1, 2, 8}
    assert any(o != i for _, _, (o, i) in seen) and any(o == i for _, _, (o, i) in seen)


# --- each classic mistake fails with its own hint, in both languages -------------------------------


def _fwd(scale=None, *, base=True, adapter=True, weight_t=True, order="AB"):
    def fn(x, w, A, B, alpha):
        r = A.shape[0]
        s = alpha / r if scale is None else scale(alpha, r, w)
        update = (x @ A.T) @ B.T if order == "AB" else (x @ B) @ A
        out = (x @ (w.T if weight_t else w)) if base else 0
        return out + s * update if adapter else out
    return fn


@pytest.mark.parametrize("fn, words, zh_words", [
    (_fwd(lambda a, r, w: 1.0), "scaled by α/r", "缩放系数 α/r"),
    (_fwd(lambda a, r, w: a), "not alpha alone", "不只是 alpha"),
    (_fwd(lambda a, r, w: r / a), "not r / alpha", "而不是 r / alpha"),
    (_fwd(lambda a, r, w: a / w.shape[1]), "you divided alpha by in_features", "输入维数"),
    (_fwd(weight_t=False), "not x @ weight", "而不是 x @ weight"),
    (_fwd(base=False), "you returned the update alone", "你只返回了更新量"),
    (_fwd(adapter=False), "you returned the frozen layer alone", "你只返回了冻结层的输出"),
    (_fwd(order="BA"), "You applied B first", "你先用了 B"),
    (lambda x, w, A, B, a: (a / A.shape[0]) * forward_plain(x, w, A, B, A.shape[0]), "scale only the low-rank update",
     "只有低秩更新量"),
])
def test_forward_mistakes_fail_with_their_hint(fn, words, zh_words):
    fails_with("finetune.lora_forward", fn, words, zh_words)


def test_forward_with_floor_division_is_named_on_the_case_where_it_rounds():
    failure = fails_with("finetune.lora_forward", _fwd(lambda a, r, w: a // r), "true division", "真除法")
    assert failure.message.startswith("case 2 (x (4,), in=4, out=4, r=4, alpha=2.0)")  # 2.0 // 4 = 0


def test_forward_with_the_factors_applied_b_transposed_first_gets_the_shapes_hint(capsys):
    assert check("finetune.lora_forward", lambda x, w, A, B, a: x @ w.T + a / A.shape[0] * (x @ B.T) @ A.T) is False
    first, hint = capsys.readouterr().out.splitlines()
    assert first.startswith("✗ finetune.lora_forward: case 1 (x (5, 6), in=6, out=6, r=2, alpha=8.0): "
                            "your function raised RuntimeError")
    assert "A is (r, in), B is (out, r)" in hint


def test_forward_with_an_untransposed_weight_on_a_non_square_layer_gets_the_shapes_hint_in_chinese(capsys):
    def untransposed(x, w, A, B, alpha):  # right on square layers, a shape error on the others
        if w.shape[0] == w.shape[1]:
            return forward_plain(x, w, A, B, alpha)
        return x @ w + alpha / A.shape[0] * (x @ A.T) @ B.T

    assert check("finetune.lora_forward", untransposed, lang="zh_CN") is False
    first, hint = capsys.readouterr().out.splitlines()
    assert first.startswith("✗ finetune.lora_forward: 用例 3（x (2, 3, 10)，in=10, out=12, r=8, alpha=16）：你的函数抛出了")
    assert hint == "  提示：" + ex_ft.say("forward_shapes").zh


def test_a_runtime_error_that_is_not_about_shapes_is_reported_as_the_readers_without_a_shapes_hint(capsys):
    def boom(x, w, A, B, alpha):
        raise RuntimeError("boom")

    assert check("finetune.lora_forward", boom) is False
    assert capsys.readouterr().out == "✗ finetune.lora_forward: your function raised RuntimeError: boom\n"


def test_forward_with_full_rank_factors_used_untransposed_is_named():
    def untransposed_factors(x, w, A, B, alpha):
        if A.shape[0] == A.shape[1] == B.shape[0]:
            return x @ w.T + alpha / A.shape[0] * (x @ A) @ B
        return forward_plain(x, w, A, B, alpha)

    failure = fails_with("finetune.lora_forward", untransposed_factors, "multiply by their transposes", "转置")
    assert failure.message.startswith("case 2 (x (4,)")


def _merge(scale=None, *, base=True, orientation="BA"):
    def fn(w, A, B, alpha):
        r = A.shape[0]
        s = alpha / r if scale is None else scale(alpha, r)
        delta = B @ A if orientation == "BA" else A.T @ B.T
        return (w if base else 0) + s * delta
    return fn


def merge_in_place(w, A, B, alpha):
    w += (alpha / A.shape[0]) * (B @ A)
    return w


@pytest.mark.parametrize("fn, words, zh_words", [
    (_merge(orientation="AtBt"), "not A.T @ B.T", "而不是 A.T @ B.T"),
    (_merge(lambda a, r: 1.0), "scaled by α/r", "缩放系数 α/r"),
    (_merge(lambda a, r: a), "not alpha alone", "不只是 alpha"),
    (_merge(lambda a, r: r / a), "not r / alpha", "而不是 r / alpha"),
    (_merge(base=False), "you returned the update alone", "你只返回了更新量"),
    (lambda w, A, B, a: w.clone(), "you returned weight unchanged", "你原样返回了 weight"),
])
def test_merge_mistakes_fail_with_their_hint(fn, words, zh_words):
    fails_with("finetune.lora_merge", fn, words, zh_words)


def test_merge_in_place_gives_the_right_numbers_but_fails_for_changing_the_frozen_weight(capsys):
    assert check("finetune.lora_merge", merge_in_place) is False
    first, hint = capsys.readouterr().out.splitlines()
    assert first == "✗ finetune.lora_merge: case 1: your function changed the weight it was given (an in-place += or add_)"
    assert "leave weight as it was" in hint
    assert check("finetune.lora_merge", merge_in_place, lang="zh_CN") is False
    first, hint = capsys.readouterr().out.splitlines()
    assert "你的函数改动了传入的 weight" in first and "保持 weight 不变" in hint


def test_merge_that_changes_a_factor_in_place_is_told_to_leave_a_and_b_alone():
    def scales_b_in_place(w, A, B, alpha):
        B.mul_(alpha / A.shape[0])
        return w + B @ A

    with pytest.raises(CheckFailed) as info:
        run("finetune.lora_merge", scales_b_in_place)
    assert info.value.message == "case 1: your function changed A or B" and "without changing them" in info.value.hint


def test_merge_with_a_at_b_gets_the_shapes_hint(capsys):
    assert check("finetune.lora_merge", lambda w, A, B, a: w + a / A.shape[0] * (A @ B)) is False
    first, hint = capsys.readouterr().out.splitlines()
    assert "case 1 (weight 6×6, r=2, alpha=8.0): your function raised RuntimeError" in first
    assert "B @ A is (out, in)" in hint


@pytest.mark.parametrize("fn, words, zh_words", [
    (lambda shapes, r: sum(r * i * o for o, i in shapes), "r copies of the whole matrix", "r 个完整的矩阵"),
    (lambda shapes, r: sum(i * o for o, i in shapes), "full fine-tuning", "完整微调"),
    (lambda shapes, r: sum(i + o for o, i in shapes), "multiply (in + out) by the rank", "要乘以秩 r"),
    (lambda shapes, r: sum(r * r * (i + o) for o, i in shapes), "no r² term", "没有 r² 项"),
    (lambda shapes, r: sum(r * (i + o) + r * r for o, i in shapes), "no r² term", "没有 r² 项"),
    (lambda shapes, r: sum(r * i for o, i in shapes), "you counted A (r × in) only", "你只数了 A"),
    (lambda shapes, r: sum(r * o for o, i in shapes), "you counted B (out × r) only", "你只数了 B"),
    (lambda shapes, r: r * sum(shapes[0]), "not the first one only", "而不只是第一个"),
])
def test_parameter_count_mistakes_fail_with_their_hint(fn, words, zh_words):
    fails_with("finetune.lora_parameter_count", fn, words, zh_words)


def test_parameter_count_message_names_the_case_and_both_numbers(capsys):
    assert check("finetune.lora_parameter_count", lambda shapes, r: sum(r * i * o for o, i in shapes)) is False
    assert capsys.readouterr().out.splitlines()[0] == ("✗ finetune.lora_parameter_count: case 1 (rank 2, len(shapes) = 1): "
                                                       "expected 28, got 96")


def test_parameter_count_wrong_only_on_the_smollm2_case_reports_460800():
    def off_for_many_layers(shapes, r):
        return sum(r * (i + o) for o, i in shapes[:20])

    failure = fails_with("finetune.lora_parameter_count", off_for_many_layers, "r · (in + out)")
    assert failure.message == "case 3 (rank 8, len(shapes) = 60): expected 460,800, got 153600"


# --- bad returns are reported, not raised -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ex_ft.CHECKS))
@pytest.mark.parametrize("value", [None, "x", float("nan"), [1, 2], True,
                                   torch.zeros(3, 3, dtype=torch.long), torch.full((2, 2), float("nan")),
                                   torch.zeros(5, 6, dtype=torch.complex64), np.zeros((5, 6))])
def test_a_bad_return_value_is_one_line_not_a_traceback(name, value, capsys):
    assert check(name, lambda *a: value) is False
    lines = capsys.readouterr().out.splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith((f"✗ {name}: case ", f"… {name}: ")), lines


def test_a_nan_in_the_right_shape_is_reported_as_nan(capsys):
    def nan_forward(x, w, A, B, alpha):
        out = forward_plain(x, w, A, B, alpha)
        out.view(-1)[0] = float("nan")
        return out

    assert check("finetune.lora_forward", nan_forward) is False
    assert "the output contains NaN or inf" in capsys.readouterr().out
