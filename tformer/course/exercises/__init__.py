"""Checkers for the exercises at the end of each chapter.

In an exercise cell a reader writes a function and hands it over::

    from tformer.course.exercises import check
    check("attention.scaled_dot_product", my_attention)

``check`` runs the reader's function on several cases, compares it with the reference and prints
either a pass or the first case that failed together with a hint about the usual mistake.

Each chapter's checkers live in a module of this package (``attention.py``, ``layers.py``, …)
that defines ``CHECKS: dict[str, Callable[[Callable], int]]``. A checker receives the reader's
callable, returns the number of cases it passed, and raises :class:`CheckFailed` otherwise.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable


class CheckFailed(AssertionError):
    """A case the reader's function got wrong; ``hint`` points at the likely mistake."""

    def __init__(self, message: str, hint: str = "") -> None:
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


def check(name: str, fn: Callable, *, quiet: bool = False) -> bool:
    """Run the checker called ``name`` on the reader's ``fn``; print the verdict and return it.

    Raises:
        TypeError: ``name`` is not a string or ``fn`` is not callable.
        ValueError: no checker has that name (the message lists the valid ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'attention.scaled_dot_product', got {name!r}")
    if not callable(fn):
        raise TypeError(
            f"fn must be a function (callable) to check, got {type(fn).__name__} ({fn!r}); "
            "pass the function itself, e.g. check(name, my_fn), not my_fn(...)"
        )
    checks = _registry()
    if name not in checks:
        raise ValueError(f"no exercise checker named {name!r}; valid names: {', '.join(sorted(checks))}")
    try:
        passed = checks[name](fn)
    except CheckFailed as failure:
        if not quiet:
            print(f"✗ {name}: {failure.message}")
            if failure.hint:
                print(f"  Hint: {failure.hint}")
        return False
    except Exception as error:  # the reader's function crashed: show it as a failed case
        if not quiet:
            print(f"✗ {name}: your function raised {type(error).__name__}: {error}")
        return False
    if not quiet:
        print(f"✓ {name}: all {passed} cases pass")
    return True
