"""The Chinese edition stays in step with the English one.

Every prose message of the book (notebook markdown cells and pages) has a Chinese translation in
``locales/zh_CN/LC_MESSAGES``; none is missing, fuzzy or stale against the English sources (Sphinx's
gettext builder is run here and compared), and none breaks the markup that must stay as it is. A
broken translation stops the Chinese build with the ``.po`` file and line named — checked on a small
Sphinx project built here with the book's own extension.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

babel = pytest.importorskip("babel", reason="babel comes with Sphinx (the [book] extra)")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import editions  # noqa: E402

LANGUAGE = "zh_CN"
CATALOGS = ROOT / "locales" / LANGUAGE / "LC_MESSAGES"
BIN = Path(sys.executable).parent


def _ids(path: Path) -> set[str]:
    return {m.id for m in editions.read_catalog(path) if m.id}


# ------------------------------------------------------------------------- the real catalogs


def test_every_message_outside_the_api_page_is_translated_and_none_is_broken():
    errors, unfinished = editions.check_catalogs(LANGUAGE)
    assert not errors, "broken translations:\n" + "\n".join(errors[:20])
    assert not unfinished, (
        f"{len(unfinished)} untranslated or fuzzy message(s) (translate them: see book/setup.md):\n"
        + "\n".join(unfinished[:20])
    )


@pytest.fixture(scope="module")
def english_messages(tmp_path_factory) -> dict[str, set[str]]:
    """The messages Sphinx's gettext builder extracts from the English sources now, by document."""
    jupyter_book = BIN / "jupyter-book"
    if not jupyter_book.exists():
        pytest.skip("jupyter-book is not installed (the [book] extra)")
    out = tmp_path_factory.mktemp("gettext")
    subprocess.run([str(jupyter_book), "build", str(ROOT), "--builder", "custom", "--custom-builder", "gettext",
                    "--path-output", str(out), "--all", "-q"], check=True, stdout=subprocess.DEVNULL)
    pot = out / "_build" / "gettext"
    return {p.relative_to(pot).with_suffix("").as_posix(): _ids(p) for p in pot.rglob("*.pot")}


def test_the_catalogs_are_not_stale_against_the_english_sources(english_messages):
    docs = {p.relative_to(CATALOGS).with_suffix("").as_posix() for p in CATALOGS.rglob("*.po")
            if editions.is_page_catalog(p)}  # code-comments/ is checked by tests/test_notebook_i18n.py
    assert set(english_messages) - docs == set(), "pages without a catalog: run `make translations`"
    assert docs - set(english_messages) == set(), "catalogs of pages the book no longer has"
    problems = []
    for doc, english in sorted(english_messages.items()):
        catalog = _ids(CATALOGS / f"{doc}.po")
        new, gone = english - catalog, catalog - english
        if doc in editions.ENGLISH_ONLY:
            # the API page is the package's docstrings, which stay English: a docstring edit needs
            # no catalog update, but a translation of a message that is gone is stale
            translated = {m.id for m in editions.read_catalog(CATALOGS / f"{doc}.po") if m.id and m.string}
            new, gone = set(), translated - english
        problems += [f"{doc}: English message without a translation: {m[:80]!r}" for m in sorted(new)]
        problems += [f"{doc}: translated message no longer in the English: {m[:80]!r}" for m in sorted(gone)]
    assert not problems, (
        "the catalogs are stale: run `make translations`, then translate what it marks\n" + "\n".join(problems[:20])
    )


def test_the_book_builds_the_chinese_edition_from_the_catalogs():
    config = (ROOT / "_config.yml").read_text(encoding="utf-8")
    assert 'locale_dirs: ["locales/"]' in config and "editions: book/_ext" in config
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    book = makefile.split("\nbook:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/build_zh_book.py" in book and "--warningiserror" in book


# ------------------------------------------------------------------------- the checker


@pytest.mark.parametrize(
    "msgid, msgstr, expected",
    [
        ("Divide by $\\sqrt{d_k}$.", "除以 $\\sqrt{d_k}$。", None),
        ("Divide by $\\sqrt{d_k}$.", "除以 $\\sqrt{d_k$。", "math must stay"),  # a broken placeholder
        ("Divide by $\\sqrt{d_k}$.", "除以 sqrt(d_k)。", "drops '$\\\\sqrt{d_k}$'"),
        ("Call `generate(ids)` now.", "现在调用 `generate(ids)`。", None),
        ("Call `generate(ids)` now.", "现在调用 `生成(ids)`。", "code must stay"),
        ("See {ref}`ch-gpt`.", "见 {ref}`ch-gpt`。", None),
        ("See {ref}`ch-gpt`.", "见 {ref}`第十章`。", "adds '{ref}`第十章`'"),  # a translated target
        ("See {ref}`the GPT chapter <ch-gpt>`.", "见 {ref}`GPT 一章 <ch-gpt>`。", None),
        ("See {ref}`the GPT chapter <ch-gpt>`.", "见 {ref}`GPT 一章 <ch-bert>`。", "role must stay"),
        ("As in {cite}`vaswani2017attention`.", "如 {cite}`vaswani2017attention` 所述。", None),
        ("Read [the docs](https://pytorch.org/docs).", "读[文档](https://pytorch.org/docs)。", None),
        ("Read [the docs](https://pytorch.org/docs).", "读[文档](https://pytorch.org)。", "link must stay"),
        ("**Step 1, scores.** Compare.", "**第 1 步：打分**。比较。", None),
        ("**Step 1, scores.** Compare.", "**第 1 步：打分。**比较。", "will not close the bold"),
        ("a **query**: what", "**查询：它在找什么", "unpaired **"),
        ("Use the `mask`.", "使用 `mask 参数。", "unpaired backtick"),
    ],
)
def test_message_problems(msgid, msgstr, expected):
    problems = editions.message_problems(msgid, msgstr)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_messages_with_nothing_to_translate_are_recognised():
    assert not editions.needs_translation("`torch.nn.Transformer`")
    assert not editions.needs_translation("$d_k = 64$")
    assert not editions.needs_translation("1.02×")
    assert not editions.needs_translation("2026-12-01 23:59 UTC")  # a timestamp of a generated table
    assert editions.needs_translation("Self-attention")
    assert editions.needs_translation("see `x` and $y$ here")


def _po(path: Path, entries: list[tuple[str, str]], header: bool = True) -> Path:
    lines = ['msgid ""', 'msgstr ""', '"Content-Type: text/plain; charset=UTF-8\\n"', ""] if header else []
    for msgid, msgstr in entries:
        lines += [f'msgid "{msgid}"', f'msgstr "{msgstr}"', ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_a_catalog_that_does_not_parse_is_named_with_its_line(tmp_path):
    bad = tmp_path / "bad.po"
    bad.write_text('msgid ""\nmsgstr ""\n\nmsgid "Hello"\nmsgstr "你好\n', encoding="utf-8")  # no closing quote
    errors, _ = editions.catalog_problems(bad)
    assert len(errors) == 1 and errors[0].startswith(f"{bad}:") and "not a valid .po file" in errors[0]


def test_catalog_problems_name_the_file_and_line(tmp_path):
    po = _po(tmp_path / "page.po", [("Title", "标题"), ("See {ref}`sec-a`.", "见 {ref}`第一节`。"), ("Rest", "")])
    errors, unfinished = editions.catalog_problems(po)
    assert errors == [f"{po}:8: the translation drops '{{ref}}`sec-a`' and adds '{{ref}}`第一节`' "
                      "(role must stay as in the English)"]
    assert unfinished == [f"{po}:11: untranslated: 'Rest'"]


# ------------------------------------------------------------------------- a small book, built


PAGE = """\
# A page

(sec-a)=
## First section

See {ref}`sec-a`, call `f(x)` and divide by $\\sqrt{d}$.
"""


def _project(tmp_path: Path, entries: list[tuple[str, str]]) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.md").write_text(PAGE, encoding="utf-8")
    (src / "conf.py").write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(ROOT / 'book' / '_ext')!r})
        extensions = ["myst_parser", "editions"]
        html_theme = "sphinx_book_theme"  # the edition switch sits in its article header
        language = "zh_CN"
        locale_dirs = ["locales/"]
        gettext_compact = False
        """), encoding="utf-8")
    _po(src / "locales" / "zh_CN" / "LC_MESSAGES" / "index.po", entries)
    return src


GOOD = [
    ("A page", "一页"),
    ("First section", "第一节"),
    ("See {ref}`sec-a`, call `f(x)` and divide by $\\\\sqrt{d}$.", "见 {ref}`sec-a`，调用 `f(x)` 并除以 $\\\\sqrt{d}$。"),
]


def _build(src: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("myst_parser", reason="myst-parser comes with jupyter-book (the [book] extra)")
    return subprocess.run([str(BIN / "sphinx-build"), "-W", "-q", "-b", "html", str(src), str(src.parent / "out")],
                          capture_output=True, text=True, timeout=300)


def test_a_small_book_builds_in_chinese_with_a_link_to_the_english(tmp_path):
    result = _build(_project(tmp_path, GOOD))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "第一节" in html and "调用" in html and "First section" not in html
    assert re.search(r'class="edition-switch">\s*<a class="btn btn-sm" href="../index.html" hreflang="en"', html)


@pytest.mark.parametrize(
    "entries, named",
    [
        (GOOD[:2] + [(GOOD[2][0], "见 {ref}`第一节`，调用 `f(x)` 并除以 $\\\\sqrt{d}$。")], "role must stay"),
        (GOOD[:2] + [(GOOD[2][0], "见 {ref}`sec-a`，调用 `f(x)` 并除以 $\\\\sqrt{d$。")], "math must stay"),
        (GOOD[:2] + [(GOOD[2][0], "")], "untranslated"),
    ],
    ids=["translated role target", "broken math placeholder", "untranslated message"],
)
def test_a_broken_or_missing_translation_fails_the_build_naming_file_and_line(tmp_path, entries, named):
    result = _build(_project(tmp_path, entries))
    assert result.returncode != 0
    assert "locales/zh_CN/LC_MESSAGES/index.po:11: " in result.stderr and named in result.stderr, result.stderr


def test_a_catalog_with_invalid_syntax_fails_the_build_naming_file_and_line(tmp_path):
    src = _project(tmp_path, GOOD)
    po = src / "locales" / "zh_CN" / "LC_MESSAGES" / "index.po"
    po.write_text(po.read_text(encoding="utf-8").replace('msgstr "第一节"', 'msgstr "第一节'), encoding="utf-8")
    result = _build(src)
    assert result.returncode != 0
    assert "index.po:" in result.stderr and "not a valid .po file" in result.stderr, result.stderr


# ------------------------------------------------------------------------- the built editions

SITE = ROOT / "_build" / "html"
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
NOT_PROSE = ["pre", "code", ".math", "math", "script", "style", ".cell_output", ".output", ".edition-switch"]
# pages whose text is mostly English by nature: the docstrings, and the titles of cited papers
MOSTLY_ENGLISH = {"book/api", "book/bibliography"}


def _toc_docs() -> list[str]:
    yaml = pytest.importorskip("yaml")
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


@pytest.fixture(scope="module")
def built() -> Path:
    bs4 = pytest.importorskip("bs4", reason="beautifulsoup4 comes with jupyter-book (the [book] extra)")
    if not (SITE / "zh_CN" / "index.html").exists():
        pytest.skip("the book is not built: run `make book` (CI builds it before the tests)")
    return bs4


def _prose(bs4, path: Path) -> str:
    page = bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    main = page.select_one("article") or page.select_one("main") or page
    for selector in NOT_PROSE:
        for element in main.select(selector):
            element.decompose()
    return main.get_text(" ")


def test_every_chinese_page_is_mostly_chinese_prose(built):
    shares = {}
    for doc in _toc_docs():
        text = _prose(built, SITE / "zh_CN" / f"{doc}.html")
        cjk, latin = len(CJK.findall(text)), len(re.findall(r"[A-Za-z]+", text))
        shares[doc] = cjk / max(1, cjk + latin)
    low = {d: round(s, 2) for d, s in shares.items() if d not in MOSTLY_ENGLISH and s < (0.85 if d.startswith("notebooks/") else 0.7)}
    assert not low, f"pages of the Chinese edition with too little Chinese (CJK characters / (those + Latin words)): {low}"
    english = _prose(built, SITE / "notebooks" / "05_encoder.html")
    assert len(CJK.findall(english)) < 0.05 * len(re.findall(r"[A-Za-z]+", english))  # the English stays English


def test_every_page_links_to_itself_in_the_other_edition(built):
    for doc in _toc_docs():
        for page, other in ((SITE / f"{doc}.html", SITE / "zh_CN" / f"{doc}.html"),
                            (SITE / "zh_CN" / f"{doc}.html", SITE / f"{doc}.html")):
            html = built.BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
            links = html.select(".edition-switch a")
            assert len(links) == 1, f"{page}: no link to the other edition"
            assert (page.parent / links[0]["href"]).resolve() == other.resolve(), (page, links[0]["href"])


def test_the_chinese_sidebar_has_chinese_part_captions(built):
    page = built.BeautifulSoup((SITE / "zh_CN" / "notebooks" / "05_encoder.html").read_text(encoding="utf-8"),
                               "html.parser")
    captions = [c.get_text() for c in page.select(".caption-text")]
    assert len(captions) >= 4 and all(CJK.search(c) for c in captions), captions
