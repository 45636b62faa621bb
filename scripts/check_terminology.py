"""One Chinese term per concept, and the Chinese typography of the book, across the zh catalogs.

    python scripts/check_terminology.py            # every finding, "file:line: what", and a count
    python scripts/check_terminology.py --summary  # counts per concept and rule only

Terminology: :data:`TERMS` names, per concept, the term the book uses (the glossary's, and
《动手学深度学习》's where that differs), and the variants that count as drift. A variant is
flagged in a translation (``msgstr``) outside code, math and roles; the English term in full-width
parentheses right after the Chinese one — 「层归一化（LayerNorm）」, the first use in a chapter — is
not a variant. Every chosen term must also be in the glossary (``book/glossary.md``).

Typography (as 《动手学深度学习》 writes Chinese): no space next to full-width punctuation; a space
between Chinese and a cross-reference or link, as between Chinese and any Latin text; full-width
punctuation (，；：！？) between Chinese characters, not half-width.

``tests/test_terminology.py`` fails while any finding is left.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import editions  # noqa: E402

CATALOGS = ROOT / "locales" / "zh_CN" / "LC_MESSAGES"
GLOSSARY = ROOT / "book" / "glossary.md"
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
FULL_WIDTH = "，。：；！？、（）「」『』“”‘’《》【】"


@dataclass(frozen=True)
class Term:
    concept: str  # the English, as the glossary's first column says it
    chosen: str  # the book's Chinese term
    variants: tuple[str, ...]  # regular expressions of renderings that count as drift
    english: str = ""  # only messages whose English matches this (a regex, case-insensitive) are checked
    d2l: str = ""  # 《动手学深度学习》's term, where it differs from ours


TERMS = (
    Term("token", "词元", ("标记", "令牌", "记号"), english=r"\btokens?\b"),
    Term("recipe", "方案", ("配方", "流程"), english=r"\brecipes?\b"),
    Term("notebook", "notebook", ("笔记本(?!电脑)",), d2l="Jupyter 记事本"),
    Term("learned positional embedding", "可学习的位置嵌入",
         ("可学习的?位置编码", "学习得到的位置", "学到的位置"), english=r"\blearn(ed|t) position"),
    Term("one-hot", "独热", (r"one-hot",), english=r"one-hot"),
    Term("layer normalisation (LayerNorm)", "层归一化", (r"LayerNorms?(?!\w)",), english=r"LayerNorm|layer norm"),
    Term("KV cache", "键值缓存", (r"KV\s*缓存", r"KV cache"), english=r"\bKV cache|key.value cache"),
    Term("greedy decoding", "贪心解码", ("贪心搜索", "贪婪解码", "贪婪搜索"), english=r"\bgreedy"),
    Term("epoch", "轮", (r"(?<![\w-])epochs?(?![\w-])",), english=r"\bepochs?\b"),
    Term("equation (N)", "式", (r"公式\s*[（(]?\s*\d", r"方程\s*[（(]?\s*\d"), english=r"\bEq(\.|uation)s?\s*\(?\d"),
    Term("beam search", "束搜索", ("波束搜索", "集束搜索", "光束搜索"), english=r"\bbeam"),
    Term("gradient clipping", "梯度裁剪", ("梯度截断", "梯度剪裁"), english=r"\bclip"),
    Term("residual connection", "残差连接", ("残差链接", "跳跃连接", "跳连"), english=r"\bresidual"),
    Term("label smoothing", "标签平滑", ("标签光滑", "标签平滑化"), english=r"label smoothing"),
)


@dataclass
class Finding:
    path: Path
    line: int
    rule: str  # "term: <concept>" or a typography rule
    detail: str

    def __str__(self) -> str:
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{where}:{self.line}: {self.rule}: {self.detail}"


def _text(msgstr: str) -> str:
    """A translation with code, math, roles, link targets and HTML each replaced by one ``\\x00``
    (so that neither their words nor their spaces count, and what is next to them still is)."""
    mask = "\x00"
    rest = editions.ROLE.sub(mask, msgstr)
    rest = editions.CODE.sub(mask, rest)
    rest = editions.DISPLAY_MATH.sub(mask, rest)
    rest = editions.INLINE_MATH.sub(mask, rest)
    rest = editions.LINK.sub("]" + mask, rest)
    return re.sub(r"<[^>\n]+>", mask, rest)


def _without_glosses(text: str) -> str:
    """``text`` without the English glosses in full-width parentheses (「层归一化（LayerNorm）」)."""
    return re.sub(rf"（[^（）{CJK}]*）", "（）", text)


def term_findings(msgid: str, msgstr: str) -> list[tuple[str, str]]:
    """``(rule, detail)`` of every variant of a :data:`TERMS` concept in one translation."""
    found = []
    text = _without_glosses(_text(msgstr))
    for term in TERMS:
        if term.english and not re.search(term.english, msgid, re.I):
            continue
        for variant in term.variants:
            for match in re.finditer(variant, text):
                context = text[max(0, match.start() - 8):match.end() + 8].strip().replace("\x00", "▪")
                found.append((f"term: {term.concept}", f"{match.group(0)!r} where the book says "
                                                       f"{term.chosen!r} (…{context}…)"))
    return found


# Typography. Spaces inside code, math or roles are theirs; the text around them is checked.
SPACE_AT_FULL_WIDTH = re.compile(rf"(?<=[{FULL_WIDTH}]) +(?=\S)|(?<=\S) +(?=[{FULL_WIDTH}])")
ROLE_OR_LINK = re.compile(r"\{[\w:+.-]+\}(`+).*?\1|\[[^\]\n]*\]\([^)\s]+\)", re.S)
HALF_WIDTH_BETWEEN_CJK = re.compile(rf"(?<=[{CJK}])[,;:!?](?=\s*[{CJK}])")


def typography_findings(msgstr: str) -> list[tuple[str, str]]:
    found = []
    text = _text(msgstr)
    for match in SPACE_AT_FULL_WIDTH.finditer(text):
        before, after = text[max(0, match.start() - 6):match.start()], text[match.end():match.end() + 6]
        found.append(("space next to full-width punctuation", f"…{before}␣{after}…".replace("\x00", "▪")))
    for match in ROLE_OR_LINK.finditer(msgstr):
        role = match.group(0)
        if role.startswith("{cite") or role.startswith("{sup") or role.startswith("{sub"):
            continue
        before, after = msgstr[match.start() - 1:match.start()], msgstr[match.end():match.end() + 1]
        if (before and re.match(rf"[{CJK}]", before)) or (after and re.match(rf"[{CJK}]", after)):
            found.append(("cross-reference without a space", f"{msgstr[max(0, match.start() - 6):match.end() + 6]!r}"))
    for match in HALF_WIDTH_BETWEEN_CJK.finditer(text):
        found.append(("half-width punctuation between Chinese characters",
                      f"{match.group(0)!r} in …{text[max(0, match.start() - 6):match.end() + 6]}…".replace("\x00", "▪")))
    return found


def catalog_findings(path: Path) -> list[Finding]:
    findings = []
    for message in editions.read_catalog(path):
        if not message.id or not message.string or message.string == message.id:
            continue
        for rule, detail in term_findings(message.id, message.string) + typography_findings(message.string):
            findings.append(Finding(Path(path), message.lineno, rule, detail))
    return findings


def glossary_findings(path: Path = GLOSSARY) -> list[Finding]:
    """Concepts whose chosen term the glossary does not name, and half-width commas in its Chinese column."""
    text = path.read_text(encoding="utf-8")
    findings = []
    rows = {}
    for number, line in enumerate(text.splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.search(rf"[{CJK}]", cells[1]):
            rows[number] = cells
            if "," in cells[1]:
                findings.append(Finding(path, number, "half-width punctuation between Chinese characters",
                                        f"{cells[1]!r} (the glossary's 中文 column: use 、 or ／)"))
    chinese = " ".join(cells[1] for cells in rows.values())
    for term in TERMS:
        if term.chosen not in chinese:
            findings.append(Finding(path, 1, f"term: {term.concept}",
                                    f"the glossary does not name the book's term {term.chosen!r}"
                                    + (f" (《动手学深度学习》: {term.d2l})" if term.d2l else "")))
    return findings


def findings(catalogs: Path = CATALOGS, glossary: Path = GLOSSARY) -> list[Finding]:
    found = []
    for path in sorted(catalogs.rglob("*.po")):
        if editions.catalog_docname(path, "zh_CN", catalogs.parents[1]) in editions.ENGLISH_ONLY:
            continue
        found += catalog_findings(path)
    return found + glossary_findings(glossary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", action="store_true", help="counts per concept and rule only")
    args = parser.parse_args(argv)
    found = findings()
    if not args.summary:
        for finding in found:
            print(finding)
    for rule, count in sorted(Counter(f.rule for f in found).items()):
        print(f"{count:4d}  {rule}")
    print(f"{len(found)} finding(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
