"""Bilingual checker messages: every message and hint exists in English and in Chinese.

Each checker module keeps one table ``MESSAGES = {key: (english, chinese)}`` of ``str.format``
templates with the same ``{placeholders}`` in both languages (a test checks this). ``texts(table)``
gives the module a function ``say(key, **values)`` that returns a :class:`Text`: a ``str`` holding
the English, with the Chinese in its ``zh`` attribute. A :class:`Text` passed as a value is put in
its own language on each side, so case names and hints compose.

The language of the printed verdict is chosen by :func:`language`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

LANGS = ("en", "zh_CN")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class Text(str):
    """English text (the ``str`` value) with its Chinese translation in ``zh``."""

    zh: str

    def __new__(cls, en: str, zh: str | None = None) -> Text:
        obj = super().__new__(cls, en)
        obj.zh = en if zh is None else zh
        return obj

    def __add__(self, other: object) -> Text:
        if isinstance(other, str):
            return Text(str(self) + str(other), self.zh + getattr(other, "zh", str(other)))
        return NotImplemented

    def __radd__(self, other: object) -> Text:
        if isinstance(other, str):
            return Text(str(other) + str(self), getattr(other, "zh", str(other)) + self.zh)
        return NotImplemented


def in_language(text: object, lang: str) -> str:
    """``text`` in ``lang`` ("en" or "zh_CN"); a plain string is the same in both."""
    if lang == "zh_CN":
        return str(getattr(text, "zh", text))
    return str(text)


def texts(*tables: Mapping[str, tuple[str, str]]) -> Callable[..., Text]:
    """``say(key, **values)``: the entry ``key`` of the first of ``tables`` that has it, formatted
    in both languages."""

    def say(key: str, **values: object) -> Text:
        en, zh = next(table[key] for table in tables if key in table)
        return Text(
            en.format(**{k: (str(v) if isinstance(v, Text) else v) for k, v in values.items()}),
            zh.format(**{k: (v.zh if isinstance(v, Text) else v) for k, v in values.items()}),
        )

    return say


def _current_cell_source() -> str:
    try:
        from IPython import get_ipython  # noqa: PLC0415 (only inside a kernel)
    except ImportError:
        return ""
    shell = get_ipython()
    if shell is None:
        return ""
    history = shell.user_ns.get("In") or [""]
    return str(history[-1]) if history else ""


def language(lang: str | None = None) -> str:
    """The language of the verdict: ``lang`` if given, else the environment variable
    ``TFORMER_LANG`` (``zh_CN`` or ``en``), else Chinese if the notebook cell being run contains
    Chinese characters (the Chinese notebooks' "your turn" comments), else English.

    Raises:
        ValueError: ``lang`` is neither None, "en" nor "zh_CN".
    """
    if lang is not None:
        if lang not in LANGS:
            raise ValueError(f"lang must be 'en' or 'zh_CN', got {lang!r}")
        return lang
    env = os.environ.get("TFORMER_LANG", "").strip()
    if env:
        return "zh_CN" if env.lower().replace("-", "_").startswith("zh") else "en"
    if _CJK.search(_current_cell_source()):
        return "zh_CN"
    return "en"
