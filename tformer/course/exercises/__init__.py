"""Checkers for the exercises at the end of each chapter.

In an exercise cell a reader writes a function and hands it over::

    from tformer.course.exercises import check
    check("attention.scaled_dot_product", my_attention)

``check`` runs the reader's function on several cases, compares it with the reference and prints
either a pass or the first case that failed together with a hint about the usual mistake. It
never lets a traceback out: an unfilled stub (``...`` as the body, ``raise NotImplementedError``,
returning None) gets "not implemented yet — fill in the function above", a signature that cannot
take the checker's arguments gets the call and the parameters to change, and an error raised
inside the reader's function is reported in one line as theirs.

Each chapter's checkers live in a module of this package (``attention.py``, ``layers.py``, …)
that defines ``CHECKS: dict[str, Callable[[Callable], int]]``. A checker receives the reader's
callable, returns the number of cases it passed, and raises :class:`CheckFailed` otherwise.

Every message exists in English and Chinese (``MESSAGES`` tables, see :mod:`._text`); the verdict
is printed in the language :func:`._text.language` chooses.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable

import torch

from tformer.course.exercises._text import Text, in_language, language, texts

MESSAGES = {
    "not_implemented": ("not implemented yet — fill in the function above",
                        "尚未实现——请先补全上面的函数"),
    "bad_call": ("the checker calls {label}({passed}) but your function is {label}{signature} "
                 "({error}): change its parameters",
                 "检查器调用 {label}({passed})，而你的函数是 {label}{signature}（{error}）：请修改它的参数"),
    "raised": ("your function raised {kind}: {line}", "你的函数抛出了 {kind}：{line}"),
    "unusable": ("the checker could not use what your function returned ({kind}: {line}); check its "
                 "type and shape against the exercise",
                 "检查器无法使用你的函数的返回值（{kind}：{line}）；请对照练习检查它的类型和形状"),
    "passed": ("all {n} cases pass", "全部 {n} 个用例通过"),
    "meta": ("your function returned a tensor on the meta device, which holds no values: compute it "
             "from the inputs", "你的函数返回了 meta 设备上的张量，其中没有数值：请由输入计算结果"),
    "hint": ("  Hint: {hint}", "  提示：{hint}"),
}
say = texts(MESSAGES)
NOT_IMPLEMENTED = say("not_implemented")


__all__ = ["NOT_IMPLEMENTED", "CheckFailed", "Text", "available", "check", "language"]


class CheckFailed(AssertionError):
    """A case the reader's function got wrong; ``hint`` points at the likely mistake."""

    def __init__(self, message: str, hint: str = "") -> None:
        # message and hint are Text (English str, Chinese in .zh) or plain str
        super().__init__(message)
        self.message, self.hint = message, hint


def _registry() -> dict[str, Callable[[Callable], int]]:
    checks: dict[str, Callable[[Callable], int]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        checks.update(getattr(module, "CHECKS", {}))
    return checks


def available() -> list[str]:
    """The names ``check`` accepts, sorted."""
    return sorted(_registry())


class _Unfilled(Exception):
    """The reader's function is still the stub: it raised NotImplementedError or returned None/...."""


class _BadCall(Exception):
    """The reader's function cannot take the arguments the checker passes (wrong signature)."""


_FROM_READER = "_tformer_raised_by_reader"


def _describe_arg(value: object) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"tensor{tuple(shape)}"
    if callable(value) or hasattr(value, "parameters"):
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 20 else type(value).__name__


def _guarded(fn: Callable) -> Callable:
    """``fn`` as the checker sees it: a stub becomes :class:`_Unfilled`, a call its signature cannot
    take becomes :class:`_BadCall`, and an error raised inside ``fn`` is marked as the reader's."""
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: just call them
        signature = None
    label = getattr(fn, "__name__", "your function")

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as error:
                passed = [_describe_arg(a) for a in args] + [f"{k}=…" for k in kwargs]
                raise _BadCall(say("bad_call", label=label, passed=", ".join(passed),
                                   signature=signature, error=error)) from None
        try:
            out = fn(*args, **kwargs)
        except NotImplementedError:
            raise _Unfilled from None
        except Exception as error:
            try:
                setattr(error, _FROM_READER, True)
            except AttributeError:
                pass
            raise
        if out is None or out is Ellipsis:
            raise _Unfilled
        if isinstance(out, torch.Tensor) and out.device.type == "meta":
            raise CheckFailed(say("meta"))
        return out

    return call


def check(name: str, fn: Callable, *, quiet: bool = False, lang: str | None = None) -> bool:
    """Run the checker called ``name`` on the reader's ``fn``; print the verdict and return it.

    Every outcome is one printed line (two with a hint), never a traceback: a pass, the first
    failed case, "not implemented yet" for an unfilled stub (``raise NotImplementedError``, a
    body of ``...``, a function returning None), what to change when the signature cannot take
    the checker's arguments, or the error the reader's function raised.

    The verdict is in English or Chinese: ``lang`` ("en" or "zh_CN") if given, else the
    environment variable ``TFORMER_LANG``, else Chinese when the notebook cell being run contains
    Chinese characters, else English.

    Raises:
        TypeError: ``name`` is not a string or ``fn`` is not callable.
        ValueError: no checker has that name (the message lists the valid ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'attention.scaled_dot_product', got {name!r}")
    lang = language(lang)
    if not callable(fn):
        raise TypeError(
            f"fn must be a function (callable) to check, got {type(fn).__name__} ({fn!r}); "
            "pass the function itself, e.g. check(name, my_fn), not my_fn(...)"
        )
    checks = _registry()
    if name not in checks:
        raise ValueError(f"no exercise checker named {name!r}; valid names: {', '.join(sorted(checks))}")

    def show(mark: str, line: object, hint: object = "") -> None:
        if not quiet:
            print(f"{mark} {name}: {in_language(line, lang)}")
            if hint:
                print(in_language(say("hint", hint=hint), lang))

    try:
        passed = checks[name](_guarded(fn))
    except _Unfilled:
        show("…", NOT_IMPLEMENTED)
        return False
    except _BadCall as bad:
        show("✗", bad.args[0] if bad.args else str(bad))
        return False
    except CheckFailed as failure:
        show("✗", failure.message, failure.hint)
        return False
    except Exception as error:  # noqa: BLE001 (the verdict is one line, never a traceback)
        first_line = (str(error).strip().splitlines() or [""])[0]
        if getattr(error, _FROM_READER, False):
            show("✗", say("raised", kind=type(error).__name__, line=first_line))
        else:  # the checker could not use what came back (a wrong type or shape it did not foresee)
            show("✗", say("unusable", kind=type(error).__name__, line=first_line))
        return False
    show("✓", say("passed", n=passed))
    return True
