"""The Chinese notebooks are generated from the English ones and the catalogs, and hold the same code.

* markdown blocks (headings, paragraphs, list items, table cells, directive bodies) are replaced by
  their catalog translations in place, markup around them kept;
* comments of code cells (and of the code in solutions) come from ``code-comments/<chapter>.po``,
  which holds exactly the comments the notebooks have now;
* every chapter's Chinese notebook is mostly Chinese prose, its code is byte-identical to the
  English once comments are removed, its outputs are the same, and its "your turn" cells carry
  Chinese (which is how the checker knows to answer in Chinese);
* a comment translation that would change the code, or drops a placeholder, stops the build naming
  the ``.po`` file and line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("myst_parser", reason="myst-parser comes with jupyter-book (the [book] extra)")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import editions  # noqa: E402
import notebook_i18n  # noqa: E402

LANGUAGE = "zh_CN"
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------- markdown


def test_each_kind_of_markdown_block_is_replaced_in_place():
    text = textwrap.dedent("""\
        ## 2. Learned positions

        A paragraph
        on two lines.

        - first item
          continued
        - second `x`

        | kind | value |
        |---|---|
        | dtype | `bool` |

        ```{exercise}
        :label: ex-a

        Do it with `f(x)`.

            check("a", f)
        ```""")
    zh = {"2. Learned positions": "2. 学习得到的位置", "A paragraph on two lines.": "一段话。",
          "first item continued": "第一项", "second `x`": "第二项 `x`", "kind": "种类", "value": "值",
          "dtype": "数据类型", "`bool`": "`bool`", "Do it with `f(x)`.": "用 `f(x)` 来做。"}
    out, missing = notebook_i18n.translate_markdown(text, zh)
    assert missing == []
    assert out == textwrap.dedent("""\
        ## 2. 学习得到的位置

        一段话。

        - 第一项
        - 第二项 `x`

        | 种类 | 值 |
        |---|---|
        | 数据类型 | `bool` |

        ```{exercise}
        :label: ex-a

        用 `f(x)` 来做。

            check("a", f)
        ```""")


def test_a_paragraph_translation_that_starts_like_a_list_stays_a_paragraph():
    out, _ = notebook_i18n.translate_markdown("Second, the heads.", {"Second, the heads.": "2. 然后是头。"})
    assert out == "2\\. 然后是头。"
    assert notebook_i18n.escape_block_start("- 项") == "\\- 项"
    assert notebook_i18n.escape_block_start("第 2. 步") == "第 2. 步"


def test_a_block_without_translation_stays_english_and_is_reported():
    out, missing = notebook_i18n.translate_markdown("# Title\n\nText.", {"Title": "标题"})
    assert out == "# 标题\n\nText." and missing == ["Text."]


# ------------------------------------------------------------------------- code comments


CELL = '''\
# Your turn (exercise ex-a): replace each ... with your code.
def f(x):  # return "# not a comment"
    s = "# a string, not a comment"
    return ...  # (B, T, d_model)
'''


def test_comments_are_found_by_the_tokenizer_not_inside_strings():
    found = [(c.line, c.text) for c in notebook_i18n.comment_messages(CELL)]
    assert found == [(0, "Your turn (exercise ex-a): replace each ... with your code."),
                     (1, 'return "# not a comment"'), (3, "(B, T, d_model)")]


def test_a_translated_cell_differs_only_in_its_comments():
    zh = {"Your turn (exercise ex-a): replace each ... with your code.": "轮到你了（练习 ex-a）：把每个 ... 换成你的代码。",
          "(B, T, d_model)": "(B, T, d_model)，形状"}
    out, missing = notebook_i18n.translate_code(CELL, zh)
    assert out.splitlines()[0] == "# 轮到你了（练习 ex-a）：把每个 ... 换成你的代码。"
    assert out.splitlines()[3] == "    return ...  # (B, T, d_model)，形状"
    assert missing == ['return "# not a comment"']
    assert notebook_i18n.strip_comments(out) == notebook_i18n.strip_comments(CELL)
    assert '"# a string, not a comment"' in notebook_i18n.strip_comments(CELL)


# ------------------------------------------------------------------------- the real chapters


@pytest.fixture(scope="module")
def chinese() -> dict[str, tuple[dict, dict, notebook_i18n.Report]]:
    out = {}
    for path in CHAPTERS:
        data, report = notebook_i18n.translated_notebook_bytes(path, LANGUAGE)
        out[path.stem] = (json.loads(path.read_text(encoding="utf-8")), json.loads(data), report)
    return out


def _prose(notebook: dict) -> str:
    """The text of a notebook's markdown blocks with code, math, roles and link targets set aside."""
    md, parts = notebook_i18n._parser(), []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            for block in notebook_i18n.markdown_blocks(notebook_i18n._cell_source(cell), md):
                if block.kind == "inline":
                    parts.append(editions.LINK.sub(" ", editions._outside_markup(block.msgid)))
    return " ".join(parts)


def _share(text: str) -> float:
    cjk, latin = len(CJK.findall(text)), len(re.findall(r"[A-Za-z]+", text))
    return cjk / max(1, cjk + latin)


def test_every_chapter_has_a_mostly_chinese_notebook(chinese):
    shares = {name: round(_share(_prose(zh)), 3) for name, (_, zh, _) in chinese.items()}
    low = {name: share for name, share in shares.items() if share < 0.85}
    assert not low, f"Chinese notebooks with too little Chinese prose (CJK / (CJK + Latin words)): {low}"
    assert _share(_prose(chinese["05_encoder"][0])) < 0.05  # the English stays English


def test_every_markdown_block_and_comment_of_every_chapter_has_its_translation(chinese):
    missing = [f"{name}: {m[:60]!r}" for name, (_, _, report) in chinese.items()
               for m in report.markdown_missing if editions.needs_translation(m)]
    missing += [f"{name} (comment): {m[:60]!r}" for name, (_, _, report) in chinese.items()
                for m in report.comments_missing]
    assert not missing, "\n".join(missing[:20])


def test_the_chinese_notebooks_have_the_same_code_and_outputs(chinese):
    for name, (en, zh, _) in chinese.items():
        assert [c["cell_type"] for c in en["cells"]] == [c["cell_type"] for c in zh["cells"]], name
        assert en["metadata"] == zh["metadata"], name
        for number, (a, b) in enumerate(zip(en["cells"], zh["cells"]), 1):
            if a["cell_type"] != "code":
                continue
            source_a, source_b = notebook_i18n._cell_source(a), notebook_i18n._cell_source(b)
            assert notebook_i18n.strip_comments(source_a) == notebook_i18n.strip_comments(source_b), (name, number)
            assert a.get("outputs") == b.get("outputs") and a.get("metadata") == b.get("metadata"), (name, number)
            assert a.get("execution_count") == b.get("execution_count"), (name, number)


def test_every_your_turn_cell_of_a_chinese_notebook_speaks_chinese(chinese):
    stubs = 0
    for name, (en, zh, _) in chinese.items():
        for a, b in zip(en["cells"], zh["cells"]):
            if a["cell_type"] == "code" and notebook_i18n._cell_source(a).lstrip().startswith("# Your turn"):
                stubs += 1
                first = notebook_i18n._cell_source(b).splitlines()[0]
                assert CJK.search(first) and "Your turn" not in first, (name, first)
    assert stubs >= 15


def test_the_comment_catalogs_hold_exactly_the_comments_of_the_notebooks():
    folder = ROOT / "locales" / LANGUAGE / "LC_MESSAGES" / notebook_i18n.COMMENTS
    assert {p.stem for p in folder.glob("*.po")} == {p.stem for p in CHAPTERS}
    problems = []
    for path in CHAPTERS:
        want = {m for m, _ in notebook_i18n.notebook_comments(json.loads(path.read_text(encoding="utf-8")))}
        have = {m.id for m in editions.read_catalog(folder / f"{path.stem}.po") if m.id}
        problems += [f"{path.stem}: comment not in the catalog: {m!r}" for m in sorted(want - have)]
        problems += [f"{path.stem}: catalog entry of a comment that is gone: {m!r}" for m in sorted(have - want)]
    assert not problems, "run `scripts/translations.py update` and translate:\n" + "\n".join(problems[:20])


# ------------------------------------------------------------------------- bad translations


@pytest.mark.parametrize(
    "msgid, msgstr, named",
    [
        ("(B, T, d_model)", "(B, T, d_model)\nimport os", "has a newline"),
        ("the first gradient is huge", "第一个梯度\n非常大", "has a newline"),
        ("expected {want}, got {got:.3f}", "期望 {want}，得到 {gotten:.3f}", "drops the placeholder(s) '{got:.3f}'"),
        ("row %d of %s", "第 %d 行", "drops the placeholder(s) '%s'"),
    ],
    ids=["code after a newline", "a newline", "a renamed placeholder", "a missing %s"],
)
def test_a_comment_or_hint_translation_that_breaks_the_program_is_named_with_file_and_line(tmp_path, msgid, msgstr, named):
    po = tmp_path / "zh_CN" / "LC_MESSAGES" / notebook_i18n.COMMENTS / "01_x.po"
    po.parent.mkdir(parents=True)
    escaped = msgstr.replace("\n", "\\n")
    po.write_text(f'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\nmsgid "{msgid}"\n'
                  f'msgstr "{escaped}"\n', encoding="utf-8")
    errors, _ = editions.check_catalogs(LANGUAGE, tmp_path)
    assert len(errors) == 1 and errors[0].startswith(f"{po}:5: ") and named in errors[0], errors
    # the same translation in a page's catalog is prose: a newline there is only a line break
    page = tmp_path / "zh_CN" / "LC_MESSAGES" / "notebooks" / "01_x.po"
    page.parent.mkdir(parents=True)
    page.write_text(po.read_text(encoding="utf-8"), encoding="utf-8")
    assert not editions.is_page_catalog(po) and editions.is_page_catalog(page)


def test_a_broken_comment_translation_fails_the_chinese_build(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.md").write_text("# A page\n\nText.\n", encoding="utf-8")
    (src / "conf.py").write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(ROOT / 'book' / '_ext')!r})
        extensions = ["myst_parser", "editions"]
        language = "zh_CN"
        locale_dirs = ["locales/"]
        gettext_compact = False
        """), encoding="utf-8")
    base = src / "locales" / "zh_CN" / "LC_MESSAGES"
    base.mkdir(parents=True)
    header = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
    (base / "index.po").write_text(header + 'msgid "A page"\nmsgstr "一页"\n\nmsgid "Text."\nmsgstr "文字。"\n',
                                   encoding="utf-8")
    (base / notebook_i18n.COMMENTS).mkdir()
    (base / notebook_i18n.COMMENTS / "01_x.po").write_text(
        header + 'msgid "warm up"\nmsgstr "预热\\nimport os"\n', encoding="utf-8")
    result = subprocess.run([str(BIN / "sphinx-build"), "-W", "-q", "-b", "html", str(src), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"LC_MESSAGES/{notebook_i18n.COMMENTS}/01_x.po:5: " in result.stderr, result.stderr
    assert "newline" in result.stderr


def test_a_changed_comment_arrives_fuzzy_with_its_old_translation_and_a_removed_one_goes(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("translations_script", ROOT / "scripts" / "translations.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    catalogs = tmp_path / "locales" / LANGUAGE / "LC_MESSAGES"
    monkeypatch.setattr(script, "ROOT", tmp_path)
    monkeypatch.setattr(script, "CATALOGS", catalogs)
    (tmp_path / "notebooks").mkdir()
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": ["x = 1  # the first gradient is very large\n", "y = 2  # a new comment"]}
    (tmp_path / "notebooks" / "01_x.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4,
                                                                   "nbformat_minor": 5}), encoding="utf-8")
    po = catalogs / notebook_i18n.COMMENTS / "01_x.po"
    po.parent.mkdir(parents=True)
    po.write_text('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                  'msgid "the first gradient is huge"\nmsgstr "第一个梯度非常大"\n\n'
                  'msgid "a comment that is gone"\nmsgstr "已删除的注释"\n', encoding="utf-8")
    script.comments()
    messages = {m.id: m for m in editions.read_catalog(po) if m.id}
    assert set(messages) == {"the first gradient is very large", "a new comment"}
    changed = messages["the first gradient is very large"]
    assert changed.fuzzy and changed.string == "第一个梯度非常大"
    assert not messages["a new comment"].string
    errors, unfinished = editions.catalog_problems(po)
    assert errors == [] and len(unfinished) == 2


def test_an_unfilled_your_turn_cell_of_a_chinese_notebook_prints_the_checker_in_chinese(chinese, monkeypatch):
    """The checker answers in Chinese where the executed cell's source holds Chinese (branch
    `checkers`); the Chinese notebook's "your turn" cells do, through their translated comments."""
    source = (ROOT / "tformer" / "course" / "exercises" / "__init__.py").read_text(encoding="utf-8")
    if "TFORMER_LANG" not in source:
        pytest.skip("the checker does not speak Chinese yet (its messages come with the bilingual checker)")
    interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
    import contextlib
    import io

    monkeypatch.delenv("TFORMER_LANG", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    _, zh, _ = chinese["03_positional_encoding"]
    cells = [notebook_i18n._cell_source(c) for c in zh["cells"] if c["cell_type"] == "code"]
    stub = next(c for c in cells if c.startswith("# 轮到你了"))
    setup = "\n".join(line for line in cells[0].splitlines() if not line.startswith("%"))
    setup += "\nfrom tformer.course.exercises import check\n"  # as an earlier cell of the chapter does
    shell = interactiveshell.InteractiveShell.instance()
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert shell.run_cell(setup, store_history=True).success
            shell.run_cell(stub, store_history=True)  # as a kernel runs a cell
    finally:
        interactiveshell.InteractiveShell.clear_instance()
    printed = out.getvalue()
    assert printed.strip() and CJK.search(printed), printed
