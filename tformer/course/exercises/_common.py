"""What the checker modules share: tensor comparison, naming a mistake, describing a wrong answer."""

from __future__ import annotations

import torch

from tformer.course.exercises._text import Text, texts

ATOL = 1e-5

MESSAGES = {
    "case": ("case {i} ({name}): {detail}", "用例 {i}（{name}）：{detail}"),
    "case_plain": ("case {i}: {detail}", "用例 {i}：{detail}"),
    "case_join": ("{case}: {detail}", "{case}：{detail}"),
    "not_tensor": ("expected a torch.Tensor, got {kind}", "应返回 torch.Tensor，实际得到 {kind}"),
    "shape": ("expected shape {want}, got {got}", "形状应为 {want}，实际为 {got}"),
    "nan": ("the output contains NaN or inf", "输出含有 NaN 或 inf"),
    "diff": ("max abs diff {diff:.3g}", "最大绝对误差 {diff:.3g}"),
    "dtype": ("dtype {got}, expected {want}", "数据类型为 {got}，应为 {want}"),
    "expected_got": ("expected {want}, got {got}", "应为 {want}，实际为 {got}"),
}
say = texts(MESSAGES)
COMMON = MESSAGES  # the other modules look these keys up after their own


def close(a: object, b: torch.Tensor, atol: float = ATOL) -> bool:
    """``a`` is a finite tensor of ``b``'s shape and close to it."""
    return (
        isinstance(a, torch.Tensor)
        and not a.is_complex()
        and a.shape == b.shape
        and bool(torch.isfinite(a).all())
        and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4)
    )


def diagnose(got: object, mistakes: dict, fallback: Text | str) -> Text | str:
    """The hint of the first known mistake that ``got`` reproduces (NaN entries match anything)."""
    if not isinstance(got, torch.Tensor) or got.is_complex():
        return fallback
    for hint, wrong in mistakes.items():
        if not isinstance(wrong, torch.Tensor) or got.shape != wrong.shape:
            continue
        finite = torch.isfinite(got)
        if finite.any() and torch.allclose(got[finite].double(), wrong[finite].double(), atol=ATOL,
                                           rtol=1e-4):
            return hint
    return fallback


def describe(got: object, want: torch.Tensor) -> Text:
    """One phrase saying how ``got`` differs from ``want``: type, shape, NaN or the largest error."""
    if not isinstance(got, torch.Tensor):
        return say("not_tensor", kind=type(got).__name__)
    if got.shape != want.shape:
        return say("shape", want=tuple(want.shape), got=tuple(got.shape))
    if got.is_complex() or not torch.isfinite(got).all():
        return say("nan")
    return say("diff", diff=float((got.double() - want.double()).abs().max()))


def short(value: object, limit: int = 60) -> str:
    """``value`` in one short line: a tensor or array by its shape and dtype, anything else by its repr."""
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (int, float)) and len(tuple(shape)) > 0:
        return f"{type(value).__name__}(shape={tuple(shape)}, dtype={getattr(value, 'dtype', '?')})"
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(x: object) -> float | None:
    """A Python number or a one-element tensor as a float; None for anything else."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_complex():
        return float(x)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    return None
