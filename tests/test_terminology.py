"""One Chinese term per concept and Chinese typography across the zh catalogs
(``scripts/check_terminology.py``): the checker's rules on small examples, and the real catalogs
with no finding left."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("babel", reason="babel comes with Sphinx (the [book] extra)")

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_terminology", ROOT / "scripts" / "check_terminology.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_terminology"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


terminology = _checker()


@pytest.mark.parametrize(
    "msgid, msgstr, rule",
    [
        ("The recipe of chapter 8.", "第 8 章的训练配方。", "term: recipe"),
        ("Run the notebook.", "运行这个笔记本。", "term: notebook"),
        ("Each LayerNorm has a gain.", "每个 LayerNorm 都有一个增益。", "term: layer normalisation (LayerNorm)"),
        ("The KV cache grows.", "KV 缓存会变大。", "term: KV cache"),
        ("Greedy decoding picks the best.", "贪心搜索每步选最好的。", "term: greedy decoding"),
        ("After each epoch.", "每个 epoch 之后。", "term: epoch"),
        ("Eq. (1) of the paper.", "论文中的公式 (1)。", "term: equation (N)"),
        ("A one-hot target.", "一个 one-hot 目标。", "term: one-hot"),
    ],
)
def test_a_variant_of_a_glossary_term_is_flagged(msgid, msgstr, rule):
    assert [r for r, _ in terminology.term_findings(msgid, msgstr)] == [rule]


@pytest.mark.parametrize(
    "msgid, msgstr",
    [
        ("Each LayerNorm has a gain.", "每个层归一化（LayerNorm）都有一个增益。"),  # the gloss at first use
        ("Call `nn.LayerNorm`.", "调用 `nn.LayerNorm`。"),  # code is code
        ("After each epoch.", "每轮之后。"),
        ("It runs on a laptop.", "它能在笔记本电脑上运行。"),  # a laptop is not a notebook
        ("The recipe of chapter 8.", "第 8 章的训练方案。"),
        ("the process of training", "训练流程"),  # 流程 is a variant of recipe only where the English says recipe
    ],
)
def test_the_chosen_term_and_code_are_not_flagged(msgid, msgstr):
    assert terminology.term_findings(msgid, msgstr) == []


@pytest.mark.parametrize(
    "msgstr, rule",
    [
        ("目标句子是 “I bought”。", "space next to full-width punctuation"),
        ("这一点 ，很重要。", "space next to full-width punctuation"),
        ("解码器将在{ref}`ch-decoder`中读取它。", "cross-reference without a space"),
        ("由 [Tatoeba 项目](https://tatoeba.org)的志愿者撰写。", "cross-reference without a space"),
        ("循环神经网络, 门控循环单元", "half-width punctuation between Chinese characters"),
    ],
)
def test_a_typography_slip_is_flagged(msgstr, rule):
    assert [r for r, _ in terminology.typography_findings(msgstr)] == [rule]


@pytest.mark.parametrize(
    "msgstr",
    [
        "解码器将在 {ref}`ch-decoder` 中读取它。",
        "调用 `f(x)`，然后返回。",  # code next to full-width punctuation needs no space
        "见 {cite}`vaswani2017attention`，第 3 节。",
        "由 [Tatoeba 项目](https://tatoeba.org) 的志愿者撰写。",
        "取值为 `a, b`：两个数。",  # a comma inside code is the code's
    ],
)
def test_correct_typography_is_not_flagged(msgstr):
    assert terminology.typography_findings(msgstr) == []


def test_a_finding_names_the_file_and_line(tmp_path):
    po = tmp_path / "zh_CN" / "LC_MESSAGES" / "notebooks" / "01_x.po"
    po.parent.mkdir(parents=True)
    po.write_text('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                  'msgid "Greedy decoding."\nmsgstr "贪心搜索。"\n', encoding="utf-8")
    found = terminology.catalog_findings(po)
    assert [(f.line, f.rule) for f in found] == [(5, "term: greedy decoding")]
    assert str(found[0]).startswith(f"{po}:5: term: greedy decoding: '贪心搜索'")


def test_the_catalogs_use_one_term_per_concept_and_chinese_typography():
    found = terminology.findings()
    assert not found, (f"{len(found)} terminology or typography finding(s) "
                       "(python scripts/check_terminology.py lists them all):\n" + "\n".join(map(str, found[:40])))
