"""Sphinx extension of the tformer book: one source, two editions (English and 中文).

The Chinese edition is the same notebooks and pages built with ``language = "zh_CN"``: Sphinx
replaces every prose message by its translation from ``locales/zh_CN/LC_MESSAGES/<doc>.po``
(gettext catalogs kept with ``sphinx-intl``; see ``book/setup.md``). This extension

* checks every catalog of the language being built before anything is read. A translation that
  breaks what must stay as it is — inline code, math, a role and its target (``{ref}`x```,
  ``{cite}`x```), a link's address, a substitution, a label — or a catalog that does not parse,
  stops the build with the ``.po`` file and line named, so a broken translation can never give a
  silently English or broken page. Untranslated or fuzzy messages are warnings (errors under ``-W``,
  as ``make book`` builds) except on the pages in :data:`ENGLISH_ONLY`;
* translates the captions of the table of contents, which sphinx-external-toc adds after Sphinx's
  own translation step;
* puts a link to the same page in the other edition in the header of every page (search and index
  included; ``templates/edition-switch.html``);
* gives Chinese pages a font stack that has CJK glyphs (``_static/editions.css``);
* in a translated edition: says the theme's and extensions' interface words in that language
  (:data:`INTERFACE`), keeps a translated heading that starts with "2. " a heading, gives Sphinx's
  Chinese search a word list (jieba, with the glossary's terms), translates the comments of the
  chapters' code from ``code-comments/<chapter>.po``, and writes each chapter's translated
  ``.ipynb`` (``notebook_i18n.py``) where the page's download button points.

:func:`catalog_problems` and :func:`check_catalogs` are also used by ``scripts/translations.py``
and ``tests/test_translations.py``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCALES = ROOT / "locales"
EDITIONS = {"en": ("English", ""), "zh_CN": ("中文", "zh_CN")}  # language → (name, folder in _build/html)
# Pages whose messages may stay English in a translated edition: the API reference is the
# package's docstrings (its page says so in every language).
ENGLISH_ONLY = {"book/api"}

# What a translation must carry over unchanged. Roles come first: their backticks are not code.
ROLE = re.compile(r"\{([A-Za-z][\w:+.-]*)\}(`+)(.*?)\2", re.S)
CODE = re.compile(r"(`+)(.+?)\1", re.S)
DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)
INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\s)([^$]+?)(?<![\s\\])\$(?!\d)")
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
SUBSTITUTION = re.compile(r"\{\{\s*([\w.-]+)\s*\}\}")
LABEL = re.compile(r"^\(([\w.:-]+)\)=", re.M)
FOOTNOTE = re.compile(r"\[\^([\w-]+)\]")
# Roles whose content is a target (a label, a key, a document, a term), not text to translate.
# ``{ref}`text <target>``` keeps only its target: the text may be translated.
TEXT_ROLES = {"sub", "sup", "abbr", "guilabel", "kbd", "menuselection"}


def _role_target(role: str, content: str) -> str:
    match = re.search(r"<([^<>]+)>\s*$", content)
    return match.group(1) if match and role not in TEXT_ROLES else content


def protected(text: str) -> dict[str, Counter]:
    """The pieces of one message that a translation must keep as they are, by kind."""
    found: dict[str, Counter] = {}
    roles = Counter()
    for match in ROLE.finditer(text):
        role, content = match.group(1), match.group(3)
        roles[f"{{{role}}}" if role in TEXT_ROLES else f"{{{role}}}`{_role_target(role, content)}`"] += 1
    found["role"] = roles
    rest = ROLE.sub(" ", text)
    found["code"] = Counter(m.group(0) for m in CODE.finditer(rest))
    rest = CODE.sub(" ", rest)
    found["math"] = Counter(m.group(0) for m in DISPLAY_MATH.finditer(rest))
    rest = DISPLAY_MATH.sub(" ", rest)
    found["math"] += Counter(m.group(0) for m in INLINE_MATH.finditer(rest))
    found["link"] = Counter(m.group(1) for m in LINK.finditer(text)) + Counter(AUTOLINK.findall(text))
    found["substitution"] = Counter(SUBSTITUTION.findall(text))
    found["label"] = Counter(LABEL.findall(text))
    found["footnote"] = Counter(FOOTNOTE.findall(text))
    return found


def _outside_markup(text: str, inline_math: bool = True) -> str:
    """``text`` with its roles, inline code and math (display, and inline unless told) blanked out."""
    rest = DISPLAY_MATH.sub(" ", CODE.sub(" ", ROLE.sub(" ", text)))
    return INLINE_MATH.sub(" ", rest) if inline_math else rest


def _unbalanced(text: str) -> list[str]:
    """Markup a translation opened and never closed (counted outside code, roles and math)."""
    rest = _outside_markup(text)
    problems = []
    if rest.count("`") % 2:
        problems.append("an unpaired backtick (`)")
    if len(re.findall(r"(?<!\\)\$", rest)) % 2:
        problems.append("an unpaired $ (inline math)")
    if rest.count("**") % 2:
        problems.append("an unpaired ** (bold)")
    return problems


# CommonMark ends ``**bold**`` only where the closing ``**`` is "right-flanking": after punctuation
# it must be followed by a space or more punctuation. ``**第 1 步。**接着`` therefore stays
# literal asterisks; the full stop belongs after the ``**``. The same holds, mirrored, for openings.
_PUNCT = r"""[，。：；！？、（）「」『』“”‘’《》【】,.:;!?()\[\]"'—–-]"""


def _flanking(text: str) -> list[str]:
    rest = _outside_markup(text, inline_math=False)
    problems = []
    for match in re.finditer(r"\*\*(.+?)\*\*", rest):
        inner, before, after = match.group(1), rest[: match.start()], rest[match.end():]
        if re.search(_PUNCT + "$", inner) and after and not re.match(r"[\s*]|" + _PUNCT, after):
            problems.append(f"**{inner}** ends in punctuation and is followed by {after[:1]!r}: CommonMark "
                            "will not close the bold there (move the punctuation after the **)")
        if re.match(_PUNCT, inner) and before and not re.search(r"[\s*]$|" + _PUNCT + "$", before):
            problems.append(f"**{inner}** starts with punctuation right after {before[-1:]!r}: CommonMark "
                            "will not open the bold there (move the punctuation before the **)")
    return problems


def needs_translation(msgid: str) -> bool:
    """Whether a message has words to translate once code, math, roles and links are set aside."""
    rest = _outside_markup(msgid)
    rest = LINK.sub(" ", AUTOLINK.sub(" ", rest))
    rest = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", " ", rest)  # a timestamp of a generated table
    return re.search(r"[A-Za-z]{2,}", rest) is not None and not re.fullmatch(r"\s*\\[\s\S]*", msgid)


def message_problems(msgid: str, msgstr: str) -> list[str]:
    """Why ``msgstr`` is not a faithful translation of ``msgid``'s markup (empty: nothing wrong)."""
    if not msgstr:
        return []
    problems = []
    want, got = protected(msgid), protected(msgstr)
    for kind in want:
        missing, extra = want[kind] - got[kind], got[kind] - want[kind]
        if missing or extra:
            parts = []
            if missing:
                parts.append("drops " + ", ".join(repr(x) for x in sorted(missing)))
            if extra:
                parts.append("adds " + ", ".join(repr(x) for x in sorted(extra)))
            problems.append(f"the translation {' and '.join(parts)} ({kind} must stay as in the English)")
    new = set(_unbalanced(msgstr)) - set(_unbalanced(msgid))
    problems += [f"the translation has {p}" for p in sorted(new)]
    problems += [p for p in _flanking(msgstr) if p not in _flanking(msgid)]
    return problems


_PO_STRING = r'"(?:[^"\\]|\\.)*"'
_PO_LINE = re.compile(rf"(?:(?:msgctxt|msgid|msgid_plural|msgstr(?:\[\d+\])?)\s+)?{_PO_STRING}\s*")


def _syntax_errors(path: Path) -> list[str]:
    """Lines of a ``.po`` file that are neither blank, a comment, nor a keyword with a closed,
    correctly escaped string (babel's reader accepts some of them silently)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        return [f"{path}: not a valid .po file: not UTF-8 ({error})"]
    errors = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text and not text.startswith("#") and not _PO_LINE.fullmatch(text):
            errors.append(f"{path}:{number}: not a valid .po file: {text[:60]!r} is not a keyword and a "
                          'closed "string" (an unescaped or missing quote?)')
    return errors


def read_catalog(path: Path):
    """The catalog at ``path`` (babel), or a ``ValueError`` naming the file and line that does not parse."""
    from babel.messages.pofile import PoFileError, read_po

    errors = _syntax_errors(Path(path))
    if errors:
        raise ValueError(errors[0])
    with open(path, "rb") as handle:
        try:
            return read_po(handle, abort_invalid=True)
        except PoFileError as error:
            line = getattr(error, "lineno", "?")
            raise ValueError(f"{path}:{line}: not a valid .po file: {error}") from None
        except (UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"{path}: not a valid .po file: {error}") from None


def catalog_docname(path: Path, language: str, locales: Path = LOCALES) -> str:
    return path.relative_to(locales / language / "LC_MESSAGES").with_suffix("").as_posix()


# Catalogs that are not a page's: the comments of the chapters' code (``code-comments/<chapter>.po``,
# see ``notebook_i18n.py``) and any catalog of program text. Their messages are single lines of a
# program, and their Python placeholders ({name}, {value:.3f}, %s) must stay as they are.
PAGE_FOLDERS = ("book", "notebooks")
PLACEHOLDER = re.compile(r"\{[A-Za-z_][\w.]*(?:\[[^\]{}]*\])?(?:![rsa])?(?::[^{}]*)?\}|\{\}|%\(\w+\)[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]|%[-#0 +]*\d*(?:\.\d+)?[dsrfgx]")


def is_page_catalog(path: Path) -> bool:
    """Whether ``path`` is the catalog of a page or chapter (not of program text)."""
    parts = Path(path).parts
    return "LC_MESSAGES" in parts and parts[parts.index("LC_MESSAGES") + 1] in PAGE_FOLDERS


def placeholder_problems(msgid: str, msgstr: str) -> list[str]:
    """Python format placeholders a translation of program text dropped or added."""
    want, got = Counter(PLACEHOLDER.findall(msgid)), Counter(PLACEHOLDER.findall(msgstr))
    missing, extra = want - got, got - want
    parts = []
    if missing:
        parts.append("drops the placeholder(s) " + ", ".join(repr(x) for x in sorted(missing)))
    if extra:
        parts.append("adds " + ", ".join(repr(x) for x in sorted(extra)))
    if not parts:
        return []
    return [f"the translation {' and '.join(parts)} (the program fills them in: keep them as in the English)"]


def program_text_problems(msgid: str, msgstr: str) -> list[str]:
    """Why ``msgstr`` cannot replace ``msgid`` in a program (a comment or a message of the code)."""
    if not msgstr:
        return []
    problems = []
    if "\n" in msgstr.strip("\n") or "\r" in msgstr:
        problems.append("the translation has a newline: it must be one line (what follows a newline in a "
                        "comment would run as code)")
    elif msgstr != msgstr.strip("\n"):
        problems.append("the translation starts or ends with a newline: it must be one line")
    return problems + placeholder_problems(msgid, msgstr)


def catalog_problems(path: Path) -> tuple[list[str], list[str]]:
    """``(errors, unfinished)`` of one catalog, each line ``path:line: what``.

    Errors are broken markup and syntax; unfinished are untranslated and fuzzy messages. A catalog
    of program text (comments of the code) must also keep each message one line and its
    placeholders.
    """
    try:
        catalog = read_catalog(path)
    except ValueError as error:
        return [str(error)], []
    program = not is_page_catalog(path)
    errors, unfinished = [], []
    for message in catalog:
        if not message.id:
            continue  # the header
        where = f"{path}:{message.lineno}"
        if not message.string:
            unfinished.append(f"{where}: untranslated: {message.id[:70]!r}")
            continue
        if message.fuzzy:
            unfinished.append(f"{where}: fuzzy (check the translation, then remove the flag): {message.id[:70]!r}")
        errors += [f"{where}: {problem}" for problem in message_problems(message.id, message.string)]
        if program:
            errors += [f"{where}: {problem}" for problem in program_text_problems(message.id, message.string)]
    return errors, unfinished


def check_catalogs(language: str, locales: Path = LOCALES, english_only=ENGLISH_ONLY) -> tuple[list[str], list[str]]:
    """``(errors, unfinished)`` over every catalog of ``language``; ``english_only`` pages' untranslated
    messages are not counted as unfinished."""
    errors, unfinished = [], []
    for path in sorted((locales / language / "LC_MESSAGES").rglob("*.po")):
        e, u = catalog_problems(path)
        errors += e
        if catalog_docname(path, language, locales) not in english_only:
            unfinished += u
    return errors, unfinished


# ----------------------------------------------------------------------------- Sphinx


def _check(app) -> None:
    from sphinx.errors import ExtensionError
    from sphinx.util import logging

    language = app.config.language or "en"
    if language == "en":
        return
    locales = Path(app.srcdir) / app.config.locale_dirs[0]
    if not (locales / language / "LC_MESSAGES").is_dir():
        raise ExtensionError(f"language={language!r} but {locales / language / 'LC_MESSAGES'} does not exist")
    errors, unfinished = check_catalogs(language, locales)
    if errors:
        shown = "\n  ".join(errors[:30])
        more = f"\n  ... and {len(errors) - 30} more" if len(errors) > 30 else ""
        raise ExtensionError(f"{len(errors)} broken translation(s):\n  {shown}{more}")
    logger = logging.getLogger(__name__)
    for line in unfinished:
        logger.warning(line, type="editions", subtype="unfinished")


def _translate_toc_captions(app, doctree) -> None:
    """Translate the captions of the table of contents ("Part I — Why", ...).

    sphinx-external-toc inserts the root page's toctrees after Sphinx's own translation step, so
    their captions would stay English in every page's sidebar; they are messages of the root
    page's catalog (``gettext`` extracts them there), and are looked up in it here.
    """
    from os import path

    from sphinx import addnodes
    from sphinx.locale import init as init_locale
    from sphinx.util.i18n import docname_to_domain

    language = app.config.language or "en"
    toctrees = [n for n in doctree.findall(addnodes.toctree) if n.get("caption")]
    if language == "en" or not toctrees:
        return
    dirs = [path.join(app.srcdir, d) for d in app.config.locale_dirs]
    domain = docname_to_domain(app.env.docname, app.config.gettext_compact)
    catalog, found = init_locale(dirs, language, domain, namespace="editions-toc")
    if found:
        for node in toctrees:
            node["caption"] = catalog.gettext(node["caption"])


def _depth(pagename: str) -> int:
    return pagename.count("/")


def other_edition_url(pagename: str, language: str) -> tuple[str, str]:
    """``(label, relative url)`` of ``pagename`` in the other edition, from a page of ``language``."""
    up = "../" * _depth(pagename)
    if language == "en":
        return EDITIONS["zh_CN"][0], f"{up}{EDITIONS['zh_CN'][1]}/{pagename}.html"
    return EDITIONS["en"][0], f"{up}../{pagename}.html"


# What a reader of a translated edition needs to know first, at the top of its landing page.
EDITION_NOTE = {
    "zh_CN": (
        '<div class="admonition note edition-note">\n<p class="admonition-title">关于中文版</p>\n'
        "<p>本书的正文、代码注释和练习检查器的提示都有中文；代码、数学公式和单元格的输出与英文版相同。"
        "API 参考（<code>tformer</code> 的文档字符串）只有英文。</p>\n"
        "<p>每一章页面顶部的下载按钮（<i class=\"fas fa-download\"></i>）提供该章的中文 notebook（.ipynb），"
        '「课程 .zip」（<a href="{zip}">{zip_name}</a>）里是全部中文 notebook、<code>tformer</code> 的 wheel '
        "和一份中文的运行说明（RUN-IT.md，包括怎样把 JupyterLab 的界面切换成中文）。</p>\n</div>\n"
    ),
}


def _add_switch(app, pagename, templatename, context, doctree) -> None:
    """The link to this page in the other edition, for ``templates/edition-switch.html`` (in the
    article header of every page, the search and index pages included); on the landing page of a
    translated edition, :data:`EDITION_NOTE`."""
    language = app.config.language or "en"
    label, url = other_edition_url(pagename, language)
    context["edition_switch"] = {"label": label, "url": url, "lang": "zh-CN" if language == "en" else "en"}
    if language in EDITION_NOTE and pagename == app.config.root_doc and "body" in context:
        from course_zip import zip_name

        name = zip_name(language)
        context["body"] = EDITION_NOTE[language].format(zip=context["pathto"](name, 1), zip_name=name) + context["body"]


# ----------------------------------------------------------------------------- the Chinese interface

# The theme's and extensions' own words, in the register of the book (the theme's zh_CN catalog
# says 列印 and 笔记本; the book says 打印 and notebook). Keys are the English messages; the theme
# sometimes passes its own translation through ``translate`` again, so those are keys too.
INTERFACE = {
    "zh_CN": {
        "Print to PDF": "打印成 PDF",
        "列印成 PDF": "打印成 PDF",
        "Download notebook file": "下载 .ipynb 文件",
        "下载笔记本文件": "下载 .ipynb 文件",
        "Download source file": "下载源文件",
        "Download this page": "下载本页",
        "By": "作者：",
        "Search": "搜索",
    },
}
# Sphinx's own words (and the pydata theme's, which go through Sphinx's catalog) that its zh_CN
# catalog leaves English.
INTERFACE_SPHINX = {
    "zh_CN": {
        "Link to this heading": "链接到本标题",
        "System Settings": "跟随系统设置",
    },
}
# Settings of the theme and extensions that hold interface text, per language.
INTERFACE_CONFIG = {
    "zh_CN": {
        "togglebutton_hint": "点击显示",
        "togglebutton_hint_hide": "点击隐藏",
        "author": "tformer 课程作者",
    },
}
SEARCH_BAR_TEXT = {"zh_CN": "搜索本书……"}


class _Overrides:
    """A gettext translator that answers from ``overrides`` first, then from the theme's catalog."""

    def __init__(self, overrides: dict[str, str], fallback) -> None:
        self.overrides, self.fallback = overrides, fallback

    def gettext(self, message: str) -> str:
        return self.overrides.get(message) or self.fallback.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.overrides.get(singular if n == 1 else plural) or self.fallback.ngettext(singular, plural, n)

    def __getattr__(self, name):
        return getattr(self.fallback, name)


def _interface_config(app, config) -> None:
    language = config.language or "en"
    templates = str(Path(__file__).parent / "templates")
    if templates not in config.templates_path:
        config.templates_path.append(templates)
    options = dict(config.html_theme_options or {})
    end = options.get("article_header_end", "article-header-buttons.html")
    end = [t.strip() for t in end.split(",")] if isinstance(end, str) else list(end)
    if "edition-switch.html" not in end:
        options["article_header_end"] = ["edition-switch.html", *end]
    footer = options.get("footer_content_items", "author.html, copyright.html, last-updated.html, extra-footer.html")
    footer = [t.strip() for t in footer.split(",")] if isinstance(footer, str) else list(footer)
    options["footer_content_items"] = ["tformer-author.html" if t == "author.html" else t for t in footer]
    if language in SEARCH_BAR_TEXT:
        options["search_bar_text"] = SEARCH_BAR_TEXT[language]
    config.html_theme_options = options
    for name, value in INTERFACE_CONFIG.get(language, {}).items():
        setattr(config, name, value)
    if language != "en":
        config.html_search_options = {**(config.html_search_options or {}), **_search_options(app, language)}
        _escape_block_markers_in_translations()


def _interface_translations(app) -> None:
    from sphinx import locale

    overrides = INTERFACE.get(app.config.language or "en")
    if not overrides:
        return
    sphinx = INTERFACE_SPHINX.get(app.config.language or "en", {})
    for key, translator in list(locale.translators.items()):
        if key[1] in ("booktheme", "sphinx") and not isinstance(translator, _Overrides):
            locale.translators[key] = _Overrides(overrides if key[1] == "booktheme" else sphinx, translator)


# ----------------------------------------------------------------------------- search


def glossary_terms(path: Path = ROOT / "book" / "glossary.md") -> list[str]:
    """The Chinese terms of the glossary's table (its second column), each alternative separately."""
    terms = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.search(r"[\u4e00-\u9fff]", cells[1]):
            for term in re.split(r"\s*[/,，、]\s*", cells[1]):
                term = re.sub(r"[（(].*?[)）]", "", term).strip()
                if re.search(r"[\u4e00-\u9fff]", term) and term not in terms:
                    terms.append(term)
    return terms


def _search_options(app, language: str) -> dict:
    """A jieba user dictionary with the glossary's terms, so that 残差连接 or 梯度裁剪 stay one word
    in the search index (jieba alone splits them) besides their parts."""
    if not language.startswith("zh"):
        return {}
    words = glossary_terms() + ["词元", "束搜索", "梯度裁剪", "标签平滑", "残差连接", "键值缓存", "贪心解码"]
    out = Path(app.outdir).parent / "jieba-dict.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    # jieba reads "word frequency"; terms with spaces or Latin letters are left to its splitter
    lines = sorted({f"{w} 100000" for w in words if " " not in w and not re.search("[A-Za-z]", w)})
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"dict": str(out)}


# ----------------------------------------------------------------------------- headings like "2. …"


def _escape_block_markers_in_translations() -> None:
    """A translation of a heading or paragraph that starts with "2. " (or "- ", "> ") is parsed by
    Sphinx's i18n step as a list, not as text, and silently dropped: chapter 11b's "2. Learned
    positions → rotary embeddings" stayed English although translated. Sphinx parses each
    translation alone with ``publish_msgstr``; escaping the marker there keeps it text ("2\\. "
    reads "2. ")."""
    from sphinx.transforms import i18n

    if getattr(i18n.publish_msgstr, "_tformer", False):
        return
    from notebook_i18n import escape_block_start

    original = i18n.publish_msgstr

    def publish_msgstr(app, source, source_path, source_line, config, settings):
        if not source.startswith("::"):  # a literal block's translation is indented code
            source = escape_block_start(source)
        return original(app, source, source_path, source_line, config, settings)

    publish_msgstr._tformer = True
    i18n.publish_msgstr = publish_msgstr


# ----------------------------------------------------------------------------- the chapters' code


def _translate_code_comments(app, doctree) -> None:
    """On a chapter page of a translated edition, the comments of the code (cells and solutions)
    from ``code-comments/<chapter>.po`` — as in the edition's ``.ipynb``. Outputs stay as they are."""
    from docutils import nodes

    language = app.config.language or "en"
    docname = app.env.docname
    if language == "en" or not docname.startswith("notebooks/"):
        return
    from notebook_i18n import catalog_paths, load_translations, translate_code

    locales = Path(app.srcdir) / app.config.locale_dirs[0]
    comments = load_translations(catalog_paths(docname.split("/", 1)[1], language, locales)[1])
    if not comments:
        return
    for node in doctree.findall(nodes.literal_block):
        parent, output = node.parent, False
        while parent is not None:
            if "cell_output" in parent.get("classes", []):
                output = True
                break
            parent = parent.parent
        if output or node.get("language") not in (None, "default", "python", "ipython3", "ipython", "python3", "none"):
            continue
        text = node.astext()
        new, _ = translate_code(text, comments)
        if new != text:
            node.children = [nodes.Text(new)]
            node.rawsource = new


def _write_translated_notebooks(app, exception) -> None:
    """The ``.ipynb`` behind every chapter page of a translated edition (its download button) is the
    translated notebook, generated now from the English one and the catalogs."""
    language = app.config.language or "en"
    if exception is not None or language == "en" or app.builder.format != "html":
        return
    from notebook_i18n import write_translated_notebooks
    from sphinx.errors import ExtensionError
    from sphinx.util import logging

    locales = Path(app.srcdir) / app.config.locale_dirs[0]
    sources = sorted(Path(app.srcdir, d + ".ipynb") for d in app.env.found_docs
                     if d.startswith("notebooks/") and Path(app.srcdir, d + ".ipynb").is_file())
    try:
        reports = write_translated_notebooks(sources, Path(app.outdir) / "_sources" / "notebooks", language, locales)
    except ValueError as error:  # a catalog that does not parse
        raise ExtensionError(str(error)) from None
    logger = logging.getLogger(__name__)
    for chapter, report in reports.items():
        for msgid in report.markdown_missing:
            if needs_translation(msgid):
                logger.warning(f"notebooks/{chapter}.ipynb: a markdown block without a translation in the "
                               f"catalog: {msgid[:70]!r}", type="editions", subtype="notebook")
        for msgid in report.comments_missing:
            logger.warning(f"notebooks/{chapter}.ipynb: a comment without a translation in "
                           f"code-comments/{chapter}.po (run scripts/translations.py update): {msgid[:70]!r}",
                           type="editions", subtype="notebook")


def setup(app):
    import sys

    static = Path(__file__).parent / "static"
    if str(Path(__file__).parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).parent))
    app.connect("config-inited", _interface_config, priority=100)  # before sphinx-togglebutton reads its hints
    app.connect("builder-inited", _check)
    app.connect("builder-inited", _interface_translations)
    app.connect("html-page-context", _add_switch)
    app.connect("doctree-read", _translate_toc_captions)
    app.connect("doctree-read", _translate_code_comments)
    app.connect("build-finished", _write_translated_notebooks)
    app.connect("config-inited", lambda a, config: config.html_static_path.append(str(static)))
    app.add_css_file("editions.css")
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
