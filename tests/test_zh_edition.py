"""The Chinese edition as a learner meets it: headings, search, interface words, downloads.

The first tests build a small book with the edition extension (fast); the others read the built
site (``make book``; skipped when it is not built).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import editions  # noqa: E402
import notebook_i18n  # noqa: E402

SITE = ROOT / "_build" / "html"
ZH = SITE / "zh_CN"
CATALOGS = ROOT / "locales" / "zh_CN" / "LC_MESSAGES"
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
BIN = Path(sys.executable).parent
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
# A term of the glossary and a chapter that teaches it: Chinese search must find each there.
SEARCHES = {"词元": "notebooks/02_self_attention", "残差连接": "notebooks/05_encoder",
            "束搜索": "notebooks/09_inference", "梯度裁剪": "notebooks/01_why_not_rnn"}


def test_the_extras_pin_the_chinese_word_splitter_and_jupyterlabs_chinese_interface():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert "jieba==0.42.1" in extras["book"]
    assert "jupyterlab-language-pack-zh-cn==4.5.post3" in extras["lab"]
    pins = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    assert "jieba==0.42.1" in pins and "jupyterlab-language-pack-zh-cn==4.5.post3" in pins


def test_the_glossary_terms_feed_the_search_dictionary():
    terms = editions.glossary_terms()
    assert {"残差连接", "层归一化", "键值缓存", "束搜索", "词元"} <= set(terms)
    assert not any("/" in t or "," in t for t in terms)


# ------------------------------------------------------------------------- a small book


PAGE = """\
# A page

## 2. Learned positions

We add residual connections around every sub-layer.
"""
CATALOG = """\
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\\n"

msgid "A page"
msgstr "一页"

msgid "2. Learned positions"
msgstr "2. 学习得到的位置"

msgid "We add residual connections around every sub-layer."
msgstr "我们在每个子层周围加上残差连接。"
"""


@pytest.fixture(scope="module")
def small_book(tmp_path_factory) -> Path:
    pytest.importorskip("sphinx_book_theme", reason="the theme comes with jupyter-book (the [book] extra)")
    pytest.importorskip("jieba", reason="jieba is in the [book] extra")
    src = tmp_path_factory.mktemp("book") / "src"
    (src / "locales" / "zh_CN" / "LC_MESSAGES").mkdir(parents=True)
    (src / "index.md").write_text(PAGE, encoding="utf-8")
    (src / "locales" / "zh_CN" / "LC_MESSAGES" / "index.po").write_text(CATALOG, encoding="utf-8")
    (src / "conf.py").write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(ROOT / 'book' / '_ext')!r})
        extensions = ["myst_parser", "sphinx_togglebutton", "editions"]
        html_theme = "sphinx_book_theme"
        language = "zh_CN"
        locale_dirs = ["locales/"]
        gettext_compact = False
        author = "The tformer authors"
        """), encoding="utf-8")
    out = src.parent / "out"
    result = subprocess.run([str(BIN / "sphinx-build"), "-W", "-q", "-b", "html", str(src), str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def test_a_translated_heading_that_starts_with_a_number_stays_a_translated_heading(small_book):
    html = (small_book / "index.html").read_text(encoding="utf-8")
    assert re.search(r"<h2>2\. 学习得到的位置<a", html), re.findall(r"<h2>.*?<a", html)
    assert "Learned positions" not in html


def test_chinese_search_indexes_glossary_terms_as_words(small_book):
    index = _search_index(small_book / "searchindex.js")
    assert _docs(index, "残差连接") == {"index"} and _docs(index, "残差") == {"index"}
    assert "一页" in index["titleterms"]


def test_the_chinese_interface_words_of_a_small_book(small_book):
    html = (small_book / "index.html").read_text(encoding="utf-8")
    assert 'placeholder="搜索本书……"' in html
    assert "toggleHintShow = '点击显示'" in html and "toggleHintHide = '点击隐藏'" in html
    assert "打印成 PDF" in html and "列印" not in html
    assert 'title="链接到本标题"' in html and "Link to this heading" not in html
    assert re.search(r'component-author">\s*作者：tformer 课程作者', html)
    for page in ("index.html", "search.html", "genindex.html"):
        header = _soup((small_book / page).read_text(encoding="utf-8")).select_one(".bd-header-article")
        links = header.select(".edition-switch a") if header else []
        assert len(links) == 1 and links[0].get_text(strip=True) == "English", page


# ------------------------------------------------------------------------- the built site


def _soup(html: str):
    bs4 = pytest.importorskip("bs4")
    return bs4.BeautifulSoup(html, "html.parser")


def _search_index(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    return json.loads(text[text.index("(") + 1:text.rindex(")")])


@pytest.fixture(scope="module")
def built() -> Path:
    if not (ZH / "index.html").exists() or not (SITE / "index.html").exists():
        pytest.skip("the book is not built: run `make book`")
    return ZH


def _headings(path: Path) -> list[str]:
    page = _soup(path.read_text(encoding="utf-8"))
    article = page.select_one("article") or page
    out = []
    for heading in article.select("h1, h2, h3"):
        for link in heading.select("a.headerlink"):
            link.decompose()
        out.append(" ".join(heading.get_text(" ").split()))
    return out


def _plain(msgid: str) -> str:
    return " ".join(re.sub(r"[`*]", "", msgid).split())


def test_every_heading_of_every_chinese_chapter_is_chinese_where_its_catalog_translates_it(built):
    problems = []
    for chapter in CHAPTERS:
        catalog = editions.read_catalog(CATALOGS / "notebooks" / f"{chapter}.po")
        same = {_plain(m.id) for m in catalog if m.id and m.string == m.id}
        zh, en = _headings(built / "notebooks" / f"{chapter}.html"), _headings(SITE / "notebooks" / f"{chapter}.html")
        if len(zh) != len(en):
            problems.append(f"{chapter}: {len(zh)} headings in Chinese, {len(en)} in English")
        problems += [f"{chapter}: {text!r}" for text in zh if not CJK.search(text) and text not in same]
    assert not problems, "headings left in English on Chinese pages:\n" + "\n".join(problems)


def test_chinese_search_finds_glossary_terms_in_their_chapters(built):
    index = _search_index(built / "searchindex.js")
    terms = index["terms"]
    chinese = [t for t in terms if CJK.search(t)]
    assert len(chinese) > 1000, f"only {len(chinese)} Chinese terms in the search index"
    for term, chapter in SEARCHES.items():
        docs = _docs(index, term)  # a page is under "titleterms" where the word is in a heading, as the search page reads it
        assert docs, f"{term!r} is not in the Chinese search index"
        assert chapter in docs, (term, docs)


def _docs(index: dict, term: str) -> set[str]:
    found = set()
    for kind in ("terms", "titleterms"):
        docs = index[kind].get(term, [])
        found |= {index["docnames"][d] for d in (docs if isinstance(docs, list) else [docs])}
    return found


def test_the_chinese_pages_say_the_interface_in_chinese(built):
    html = (built / "notebooks" / "05_encoder.html").read_text(encoding="utf-8")
    assert 'placeholder="搜索本书……"' in html and "toggleHintShow = '点击显示'" in html
    assert "打印成 PDF" in html and "列印" not in html and "Search this book" not in html
    assert "作者：tformer 课程作者" in html and "The tformer authors" not in html
    assert "课程 .zip" in html and 'href="../tformer-course.zip"' in html  # zh_CN/tformer-course.zip
    assert "轮到你了（练习 ex05-post-ln）" in html  # the comments of the code, as in the .ipynb


def test_the_edition_switch_is_in_the_header_of_every_page_search_and_index_included(built):
    pages = [f"{d}.html" for d in ["book/intro", "notebooks/05_encoder"]] + ["search.html", "genindex.html"]
    for page in pages:
        for here, there in ((SITE / page, ZH / page), (ZH / page, SITE / page)):
            header = _soup(here.read_text(encoding="utf-8")).select_one(".bd-header-article")
            links = header.select(".edition-switch a") if header else []
            assert len(links) == 1, f"{here}: no edition switch in the header"
            assert (here.parent / links[0]["href"]).resolve() == there.resolve()


def test_the_chinese_landing_page_says_what_stays_english_and_where_the_notebooks_are(built):
    page = _soup((built / "book" / "intro.html").read_text(encoding="utf-8"))
    note = page.select_one(".edition-note")
    assert note is not None
    text = note.get_text(" ")
    assert "API 参考" in text and "只有英文" in text and ".ipynb" in text
    assert note.select_one('a[href="../tformer-course.zip"]') is not None


def _markdown_share(notebook: dict) -> float:
    md, parts = notebook_i18n._parser(), []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            parts += [editions.LINK.sub(" ", editions._outside_markup(b.msgid))
                      for b in notebook_i18n.markdown_blocks(notebook_i18n._cell_source(cell), md) if b.kind == "inline"]
    text = " ".join(parts)
    cjk, latin = len(CJK.findall(text)), len(re.findall(r"[A-Za-z]+", text))
    return cjk / max(1, cjk + latin)


def _same_code(en: dict, zh: dict) -> bool:
    return all(notebook_i18n.strip_comments(notebook_i18n._cell_source(a)) == notebook_i18n.strip_comments(
        notebook_i18n._cell_source(b)) and a.get("outputs") == b.get("outputs")
        for a, b in zip(en["cells"], zh["cells"]) if a["cell_type"] == "code") and len(en["cells"]) == len(zh["cells"])


def test_the_ipynb_behind_every_chinese_chapter_page_is_the_chinese_notebook(built):
    for chapter in CHAPTERS:
        html = (built / "notebooks" / f"{chapter}.html").read_text(encoding="utf-8")
        assert f"_sources/notebooks/{chapter}.ipynb" in html
        zh = json.loads((built / "_sources" / "notebooks" / f"{chapter}.ipynb").read_text(encoding="utf-8"))
        en = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text(encoding="utf-8"))
        assert _markdown_share(zh) >= 0.85, chapter
        assert _same_code(en, zh), chapter
    english = SITE / "_sources" / "notebooks" / f"{CHAPTERS[0]}.ipynb"
    assert english.read_bytes() == (ROOT / "notebooks" / f"{CHAPTERS[0]}.ipynb").read_bytes()


def test_the_chinese_course_zip_holds_every_chapter_in_chinese_and_a_chinese_guide(built):
    with zipfile.ZipFile(built / "tformer-course.zip") as z:
        guide = z.read("tformer-course/RUN-IT.md").decode("utf-8")
        for chapter in CHAPTERS:
            zh = json.loads(z.read(f"tformer-course/notebooks/{chapter}.ipynb"))
            en = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text(encoding="utf-8"))
            assert _markdown_share(zh) >= 0.85 and _same_code(en, zh), chapter
    assert len(CJK.findall(guide)) > 300 and "jupyter lab notebooks" in guide
    assert "Settings → Language" in guide and "中文(简体, 中国)" in guide
