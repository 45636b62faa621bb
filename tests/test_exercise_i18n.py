"""The checker speaks the learner's language: every message has English and Chinese with the same
placeholders, and the language is chosen by lang=, then TFORMER_LANG, then the Chinese of the
notebook cell being run, then English."""

from __future__ import annotations

import importlib
import pkgutil
import re
import string

import pytest
import torch

import tformer.course.exercises as exercises
from tformer.course.exercises import NOT_IMPLEMENTED, check, language
from tformer.course.exercises import _text as text_module

CJK = re.compile(r"[\u4e00-\u9fff]")


def _tables():
    yield "tformer.course.exercises", exercises.MESSAGES
    for info in pkgutil.iter_modules(exercises.__path__):
        module = importlib.import_module(f"tformer.course.exercises.{info.name}")
        if hasattr(module, "MESSAGES"):
            yield module.__name__, module.MESSAGES


TABLES = list(_tables())
ENTRIES = [(mod, key, en, zh) for mod, table in TABLES for key, (en, zh) in table.items()]


def _fields(template: str) -> list[tuple[str, str]]:
    return sorted((name, spec) for _, name, spec, _ in string.Formatter().parse(template) if name is not None)


def test_every_checker_module_has_a_message_table():
    names = {mod.rsplit(".", 1)[-1] for mod, _ in TABLES}
    assert {"attention", "why", "layers", "training", "distributed", "gpt", "pretrained", "llm", "beam",
            "paper", "rnn", "finetune", "_common"} <= names
    assert len(ENTRIES) > 250


@pytest.mark.parametrize("mod, key, en, zh", ENTRIES, ids=[f"{m.rsplit('.', 1)[-1]}:{k}" for m, k, _, _ in ENTRIES])
def test_every_chinese_message_has_the_placeholders_of_its_english(mod, key, en, zh):
    assert _fields(en) == _fields(zh), f"{mod} {key}: {_fields(en)} vs {_fields(zh)}"
    assert CJK.search(zh) or key in {"case_join"}, f"{mod} {key} has no Chinese: {zh!r}"
    assert en.strip() and not CJK.search(en)


def test_a_missing_placeholder_in_a_translation_is_caught_by_the_comparison():
    assert _fields("case {i} ({name}): {detail}") != _fields("用例 {i}：{detail}")
    assert _fields("{want:.5f}") != _fields("{want}")


# --- the four ways the language is chosen --------------------------------------------------------


def _wrong_attention(q, k, v, mask=None):
    return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v  # no √d_k


def test_explicit_lang_argument_prints_chinese_message_and_hint(capsys, monkeypatch):
    monkeypatch.setenv("TFORMER_LANG", "en")  # the argument wins over the environment
    assert check("attention.scaled_dot_product", _wrong_attention, lang="zh_CN") is False
    first, hint = capsys.readouterr().out.splitlines()
    assert first.startswith("✗ attention.scaled_dot_product: 用例 1（单个序列（T=4, d_k=16），无掩码）：最大绝对误差")
    assert hint.startswith("  提示：softmax 之前要把分数除以 √d_k")


def test_explicit_english_wins_over_a_chinese_environment(capsys, monkeypatch):
    monkeypatch.setenv("TFORMER_LANG", "zh_CN")
    check("attention.scaled_dot_product", _wrong_attention, lang="en")
    assert "case 1 (one sequence" in capsys.readouterr().out


def test_environment_variable_chooses_chinese(capsys, monkeypatch):
    monkeypatch.setenv("TFORMER_LANG", "zh_CN")
    check("train.noam_lr", lambda s, d, w: ...)
    assert capsys.readouterr().out == f"… train.noam_lr: {NOT_IMPLEMENTED.zh}\n"
    assert NOT_IMPLEMENTED.zh == "尚未实现——请先补全上面的函数"


def test_environment_variable_en_wins_over_a_chinese_cell(monkeypatch):
    monkeypatch.setenv("TFORMER_LANG", "en")
    monkeypatch.setattr(text_module, "_current_cell_source", lambda: "# 轮到你了")
    assert language() == "en"


def test_chinese_in_the_running_ipython_cell_chooses_chinese(capsys, monkeypatch):
    """A real IPython shell runs a cell whose comment is Chinese, as a Chinese notebook's stub is."""
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.delenv("TFORMER_LANG", raising=False)
    shell = InteractiveShell.instance()
    try:
        shell.run_cell("from tformer.course.exercises import check\n"
                       "# 轮到你了（ex08-noam）\n"
                       "def my_lr(step, d_model, warmup):\n    ...\n"
                       "passed = check('train.noam_lr', my_lr)\n", store_history=True)
        out_zh = capsys.readouterr().out
        shell.run_cell("# Your turn (ex08-noam)\npassed = check('train.noam_lr', my_lr)\n", store_history=True)
        out_en = capsys.readouterr().out
    finally:
        InteractiveShell.clear_instance()
    assert out_zh == "… train.noam_lr: 尚未实现——请先补全上面的函数\n"
    assert out_en == "… train.noam_lr: not implemented yet — fill in the function above\n"


def test_english_by_default_outside_ipython(capsys, monkeypatch):
    monkeypatch.delenv("TFORMER_LANG", raising=False)
    assert language() == "en"
    check("train.noam_lr", lambda s, d, w: d**-0.5 * min(s**-0.5, s * w**-1.5))
    assert capsys.readouterr().out == "✓ train.noam_lr: all 11 cases pass\n"


def test_a_passing_verdict_in_chinese(capsys):
    check("train.noam_lr", lambda s, d, w: d**-0.5 * min(s**-0.5, s * w**-1.5), lang="zh_CN")
    assert capsys.readouterr().out == "✓ train.noam_lr: 全部 11 个用例通过\n"


@pytest.mark.parametrize("value", ["zh", "fr", "", "EN"])
def test_an_unknown_lang_argument_is_a_value_error_naming_it(value):
    with pytest.raises(ValueError, match="lang must be 'en' or 'zh_CN'"):
        check("train.noam_lr", lambda s, d, w: 1.0, lang=value)


def test_chinese_wrong_signature_and_raised_error_messages(capsys):
    def attention(q, k):
        return q

    check("attention.scaled_dot_product", attention, lang="zh_CN")
    assert "检查器调用 attention(tensor(4, 16), tensor(4, 16), tensor(4, 16))" in capsys.readouterr().out

    def raises(q, k, v, mask=None):
        raise ValueError("boom")

    check("attention.scaled_dot_product", raises, lang="zh_CN")
    assert capsys.readouterr().out == "✗ attention.scaled_dot_product: 你的函数抛出了 ValueError：boom\n"


@pytest.mark.parametrize("name", exercises.available())
def test_every_checker_prints_chinese_for_an_answer_of_the_wrong_type(name, capsys):
    assert check(name, lambda *a, **k: "not a tensor", lang="zh_CN") is False
    lines = capsys.readouterr().out.splitlines()
    assert 1 <= len(lines) <= 2 and all(CJK.search(line) for line in lines), lines
