"""Argument checks shared by the public functions and constructors.

Every check raises a ``TypeError`` or ``ValueError`` whose message names the argument, the value
it got and what was expected, so a learner sees the mistake at the line they wrote.
"""

from __future__ import annotations

import dataclasses

import torch


def integer(name: str, value: object, *, minimum: int | None = None, why: str = "") -> int:
    """Return ``value`` if it is an ``int`` (not a bool) >= ``minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be an int >= {minimum}{why}")
    return value


def int_at_least(name: str, value: object, minimum: int, expected: str | None = None) -> int:
    """Return ``value`` if it is an ``int`` (not a bool) >= ``minimum``; else a ``ValueError``
    saying ``{name}={value!r} must be {expected}`` (default: "an int >= minimum")."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be {expected or f'an int >= {minimum}'}")
    return value


def real_between(name: str, value: object, low: float, high: float, expected: str) -> float:
    """Return ``value`` if it is a real number with ``low < value < high``; else a ``ValueError``
    saying ``{name}={value!r} must be {expected}``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ValueError(f"{name}={value!r} must be {expected}")
    return float(value)


def number(name: str, value: object) -> float:
    """Return ``value`` if it is a real number (int or float, not a bool), else a ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {value!r}")
    return value


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` > 0, else raise naming ``name``."""
    integer(name, value)
    if value <= 0:
        raise ValueError(f"{name}={value} must be a positive integer")
    return value


def positive_float(name: str, value: object, example: str = "") -> float:
    """Return ``value`` as a float if it is a finite number > 0."""
    hint = f" (e.g. {example})" if example else ""
    return real_between(name, value, 0, float("inf"), f"a positive float{hint}")


def boolean(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool (``1`` or ``"yes"`` are refused, not guessed)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def config_from_dict(cls: type, d: object, unknown_error: type[Exception] = ValueError):
    """``cls(**d)`` for a dataclass config, with clear errors for a non-dict and for unknown keys
    (missing keys take the defaults; the config's own ``__post_init__`` checks the values)."""
    if not isinstance(d, dict):
        raise TypeError(f"d must be a dict from {cls.__name__}.to_dict(), got {type(d).__name__}")
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise unknown_error(f"unknown {cls.__name__} fields in d: {sorted(unknown)}")
    return cls(**d)


def heads_divide(d_model: int, num_heads: int) -> None:
    """Multi-head attention splits d_model into num_heads equal slices (§3.2.2)."""
    positive_int("d_model", d_model)
    positive_int("num_heads", num_heads)
    if d_model % num_heads:
        raise ValueError(
            f"d_model={d_model} must be divisible by num_heads={num_heads} "
            "(each head gets d_model/num_heads dims)"
        )


def probability(name: str, value: object, *, upper_inclusive: bool = False) -> float:
    """Return ``value`` as a float in [0, 1) (or [0, 1] with ``upper_inclusive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} ({value!r})")
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        interval = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{name}={value} must lie in {interval}")
    return float(value)


def tensor(name: str, value: object, *, ndim_min: int = 1, floating: bool | None = None) -> torch.Tensor:
    """Check that ``value`` is a tensor with at least ``ndim_min`` dims (and float/int dtype)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() < ndim_min:
        raise ValueError(
            f"{name} must have at least {ndim_min} dimensions, got shape {tuple(value.shape)}"
        )
    if floating is True and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if floating is False and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(
            f"{name} must hold integer token ids (torch.long), got dtype {value.dtype}"
        )
    if floating is False and value.dtype not in (torch.long, torch.int32):
        # nn.Embedding looks up int64 or int32 indices only: uint8/int16 ids would fail inside torch
        raise TypeError(f"{name} must hold token ids as torch.long (or torch.int32), got dtype "
                        f"{value.dtype}; convert it with {name}.long()")
    return value


def broadcastable(name: str, shape: tuple[int, ...], target: tuple[int, ...], hint: str) -> None:
    """Raise unless ``shape`` broadcasts to ``target`` without changing ``target``."""
    if len(shape) > len(target):
        raise ValueError(
            f"{name} of shape {shape} has more dimensions than {target}; expected {hint}"
        )
    for got, want in zip(reversed(shape), reversed(target)):
        if got not in (1, want):
            raise ValueError(
                f"{name} of shape {shape} cannot broadcast to {target}; expected {hint}"
            )
