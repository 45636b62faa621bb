"""Translated notebooks from the English ones and the catalogs (the Chinese edition's ``.ipynb``).

A chapter's Chinese notebook is generated at build time, never kept in git:

* every markdown block — heading, paragraph, list item, table cell, the body and title of a
  directive (``{exercise}``, ``{solution}``, admonitions) — is found the way MyST parses it and
  Sphinx extracts it (the block's inline source, newlines as spaces, is its gettext ``msgid``), and
  replaced in place by its translation from the page's catalog
  (``locales/<lang>/LC_MESSAGES/notebooks/<chapter>.po``), so the markup around it (``## ``,
  ``- ``, ``| ``, fences, options) stays as it was;
* every comment in a code cell is a message of the chapter's comment catalog
  (``locales/<lang>/LC_MESSAGES/code-comments/<chapter>.po``; ``msgid`` is the comment's text
  without ``# ``) and is replaced by its translation; nothing else of a code cell changes, and
  outputs are copied as they are.

:func:`comment_messages` extracts the comments (``scripts/translations.py update`` merges them into
the comment catalogs); :func:`translate_notebook` writes one notebook; :func:`strip_comments` is
what ``tests/test_notebook_i18n.py`` compares to prove the code is the same.
"""

from __future__ import annotations

import copy
import io
import json
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCALES = ROOT / "locales"
COMMENTS = "code-comments"  # the folder of the comment catalogs, beside notebooks/ and book/
MYST_EXTENSIONS = {"amsmath", "colon_fence", "deflist", "dollarmath", "substitution"}
# Directives whose argument is a label, not a title to translate.
LABEL_ARGUMENT = {"solution", "solution-start", "exercise-start"}

# A translation that starts like block markup ("2. ", "- ", "# ", "> ") would become a list, a
# heading or a quote where it replaces a heading's or a paragraph's text: escape the marker.
_BLOCK_START = re.compile(r"^(\s*)(\d{1,9})([.)])(?=\s|$)|^(\s*)([-+*>#])(?=\s|$)")


def escape_block_start(text: str) -> str:
    """``text`` with a leading list, heading or quote marker backslash-escaped (it reads the same)."""
    match = _BLOCK_START.match(text)
    if not match:
        return text
    if match.group(2):
        return f"{match.group(1)}{match.group(2)}\\{match.group(3)}{text[match.end():]}"
    return f"{match.group(4)}\\{match.group(5)}{text[match.end():]}"


# ----------------------------------------------------------------------------- markdown


def _parser():
    from markdown_it.renderer import RendererHTML
    from myst_parser.config.main import MdParserConfig
    from myst_parser.parsers.mdit import create_md_parser

    return create_md_parser(MdParserConfig(enable_extensions=MYST_EXTENSIONS), RendererHTML)


@dataclass
class Block:
    """One translatable piece of a markdown cell: its ``msgid`` and where its text is."""

    msgid: str
    kind: str  # "inline" (heading, paragraph, cell, title), "code" or "math"
    lines: tuple[int, int]  # [first, last) line of the cell source
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (line, start col, end col)
    heading: bool = False  # a heading's text may start with "2. "; a paragraph's may not


def _directive_body_start(lines: list[str]) -> int:
    """Index of the first body line of a directive's content (after its ``:key: value`` options or
    ``---`` YAML block)."""
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() == "---":
                return i + 1
        return len(lines)
    i = 0
    while i < len(lines) and re.match(r"\s*:[\w-]+:", lines[i]):
        i += 1
    return i


def _blocks(md, text: str, source: list[str], offset: int) -> list[Block]:
    """The translatable blocks of ``text``, which is ``source[offset:...]`` as markdown-it sees it
    (possibly dedented); positions are located in ``source`` itself."""
    found: list[Block] = []
    cursor: dict[int, int] = {}
    tokens = md.parse(text)
    skip_until = -1
    for index, token in enumerate(tokens):
        if index < skip_until:
            continue
        if token.type == "inline" and token.map:
            block = _locate(token.content, token.map[0] + offset, source, cursor)
            if block:
                block.heading = index > 0 and tokens[index - 1].type == "heading_open"
                found.append(block)
        elif token.type in ("fence", "colon_fence") and token.map:
            info = token.info.strip()
            directive = re.match(r"\{([\w:-]+)\}\s*(.*)", info)
            first = token.map[0] + offset
            if directive:
                argument = directive.group(2).strip()
                if argument and directive.group(1) not in LABEL_ARGUMENT:
                    block = _locate(argument, first, source, cursor, after=source[first].find("}") + 1)
                    if block:
                        found.append(block)
                content = token.content.split("\n")
                start = _directive_body_start(content)
                body = "\n".join(content[start:])
                found += _blocks(md, body, source, first + 1 + start)
            else:
                code = token.content.rstrip("\n")
                found.append(Block(code, "code", (first + 1, first + 1 + len(code.split("\n")))))
        elif token.type == "code_block" and token.map:
            code = token.content.rstrip("\n")
            found.append(Block(code, "code", (token.map[0] + offset, token.map[0] + offset + len(code.split("\n")))))
        elif token.type in ("math_block", "math_block_label", "amsmath") and token.map:
            found.append(Block(token.content, "math", (token.map[0] + offset, token.map[1] + offset)))
    return found


def _locate(content: str, first: int, source: list[str], cursor: dict[int, int], after: int = 0) -> Block | None:
    """Find the lines of ``content`` in ``source`` from line ``first`` on (each line stripped of the
    markup markdown-it removed: indentation, list and quote markers, heading hashes, table pipes)."""
    msgid = content.replace("\n", " ").strip()
    if not msgid:
        return None
    spans = []
    for k, piece in enumerate(content.split("\n")):
        line = first + k
        if line >= len(source):
            return None
        piece = piece.strip()
        start = source[line].find(piece, max(cursor.get(line, 0), after if k == 0 else 0)) if piece else -1
        if start < 0:
            return None
        spans.append((line, start, start + len(piece)))
        cursor[line] = start + len(piece)
    return Block(msgid, "inline", (first, first + len(spans)), spans)


def markdown_blocks(text: str, md=None) -> list[Block]:
    """Every translatable block of one markdown cell, in order."""
    return _blocks(md or _parser(), text, text.split("\n"), 0)


def translate_markdown(text: str, translations: dict[str, str], md=None,
                       comments: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """``(translated text, msgids that had no translation)`` of one markdown cell.

    Code blocks are not messages of the page (Sphinx does not extract them): their comments are
    translated from ``comments``, the chapter's comment catalog, like those of code cells.
    """
    source = text.split("\n")
    edits: list[tuple[int, int, int, int, str]] = []  # (line, col, end line, end col, new)
    missing = []
    for block in markdown_blocks(text, md):
        if block.kind == "inline":
            new = translations.get(block.msgid)
            if not new:
                missing.append(block.msgid)
                continue
            if new == block.msgid:
                continue
            new = " ".join(new.split("\n"))
            (l0, c0, _), (l1, _, c1) = block.spans[0], block.spans[-1]
            edits.append((l0, c0, l1, c1, new if block.heading else escape_block_start(new)))
            continue
        old = block.msgid.strip("\n").split("\n")
        new = translations.get(block.msgid) or translations.get(block.msgid.strip("\n"))
        if block.kind == "code" and not new:
            new, gone = translate_code(block.msgid, comments or {})
            missing += gone
        rows = (new or block.msgid).strip("\n").split("\n")
        if rows == old:
            continue
        if len(rows) != len(old):
            missing.append(block.msgid)  # a translation that re-flows a block's lines: keep the English
            continue
        line = block.lines[0]
        for was, now in zip(old, rows):
            while line < len(source) and (was not in source[line]):
                line += 1
            if line == len(source):
                break
            if was != now:
                col = source[line].find(was)
                edits.append((line, col, line, col + len(was), now))
            line += 1
    for l0, c0, l1, c1, new in sorted(edits, reverse=True):
        source[l0:l1 + 1] = [source[l0][:c0] + new + source[l1][c1:]]
    return "\n".join(source), missing


# ----------------------------------------------------------------------------- code comments


@dataclass
class Comment:
    line: int  # 0-based line of the cell source
    col: int  # where the comment's text (after ``#`` and one space) starts
    text: str  # the msgid


_PRAGMA = re.compile(r"^(noqa|type:|fmt:|pragma|pylint:|%%|-\*-)", re.I)


def comment_messages(source: str) -> list[Comment]:
    """The comments of one code cell that have words to translate, with their positions."""
    comments = []
    masked = "\n".join("" if re.match(r"\s*[%!]", line) else line for line in source.split("\n"))
    try:
        tokens = [(t.start, t.string) for t in tokenize.generate_tokens(io.StringIO(masked).readline)
                  if t.type == tokenize.COMMENT]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        tokens = [((n + 1, line.index("#")), line[line.index("#"):].rstrip())
                  for n, line in enumerate(masked.split("\n")) if line.lstrip().startswith("#")]
    for (row, col), string in tokens:
        body = re.sub(r"^#+ ?", "", string)
        text = body.strip()
        if not re.search(r"[A-Za-z]{2,}", text) or _PRAGMA.match(text):
            continue
        comments.append(Comment(row - 1, col + (len(string) - len(body)), text))
    return comments


def translate_code(source: str, translations: dict[str, str]) -> tuple[str, list[str]]:
    """``(source with its comments translated, comments that had no translation)``."""
    lines = source.split("\n")
    missing = []
    for comment in sorted(comment_messages(source), key=lambda c: (c.line, c.col), reverse=True):
        new = translations.get(comment.text)
        if not new:
            missing.append(comment.text)
            continue
        line = lines[comment.line]
        start = line.index(comment.text, comment.col)
        lines[comment.line] = line[:start] + new + line[start + len(comment.text):]
    return "\n".join(lines), missing


def strip_comments(source: str) -> str:
    """A code cell without its comments and trailing spaces (what must be the same in every edition)."""
    lines = source.split("\n")
    masked = "\n".join("" if re.match(r"\s*[%!]", line) else line for line in lines)
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(masked).readline) if t.type == tokenize.COMMENT]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return "\n".join(re.sub(r"\s*#.*$", "", line) for line in lines)
    for token in sorted(tokens, key=lambda t: t.start, reverse=True):
        row, col = token.start
        lines[row - 1] = lines[row - 1][:col]
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------- notebooks


def _cell_source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _set_source(cell, text: str) -> None:
    # the nbformat on-disk form: a list of lines, each but the last with its newline
    cell["source"] = text.splitlines(keepends=True) if isinstance(cell.get("source"), list) else text


def load_translations(path: Path) -> dict[str, str]:
    """``msgid → msgstr`` of a catalog's finished messages (none when the catalog does not exist);
    untranslated and fuzzy messages are left out, as Sphinx leaves them out."""
    if not Path(path).is_file():
        return {}
    from editions import read_catalog

    return {m.id: m.string for m in read_catalog(path) if m.id and m.string and not m.fuzzy}


@dataclass
class Report:
    markdown_missing: list[str] = field(default_factory=list)
    comments_missing: list[str] = field(default_factory=list)


def translate_notebook(notebook: dict, pages: dict[str, str], comments: dict[str, str]) -> tuple[dict, Report]:
    """A translated copy of ``notebook`` (a parsed ``.ipynb``) and what stayed untranslated."""
    md = _parser()
    out = copy.deepcopy(notebook)
    report = Report()
    for cell in out.get("cells", []):
        text = _cell_source(cell)
        if cell.get("cell_type") == "markdown":
            new, missing = translate_markdown(text, pages, md, comments)
            report.markdown_missing += missing
        elif cell.get("cell_type") == "code":
            new, missing = translate_code(text, comments)
            report.comments_missing += missing
        else:
            continue
        if new != text:
            _set_source(cell, new)
    return out, report


def catalog_paths(chapter: str, language: str, locales: Path = LOCALES) -> tuple[Path, Path]:
    """The page catalog and the comment catalog of ``notebooks/<chapter>``."""
    base = Path(locales) / language / "LC_MESSAGES"
    return base / "notebooks" / f"{chapter}.po", base / COMMENTS / f"{chapter}.po"


def translated_notebook_bytes(path: Path, language: str, locales: Path = LOCALES) -> tuple[bytes, Report]:
    """The ``.ipynb`` file of ``path`` in ``language``, read from the catalogs as they are now."""
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    pages, comments = catalog_paths(Path(path).stem, language, locales)
    out, report = translate_notebook(notebook, load_translations(pages), load_translations(comments))
    return (json.dumps(out, indent=1, ensure_ascii=False) + "\n").encode("utf-8"), report


def write_translated_notebooks(sources: list[Path], dest: Path, language: str, locales: Path = LOCALES) -> dict[str, Report]:
    """Write each notebook of ``sources`` translated into ``dest`` (same file names), atomically."""
    import os

    dest.mkdir(parents=True, exist_ok=True)
    reports = {}
    for path in sources:
        data, reports[Path(path).stem] = translated_notebook_bytes(Path(path), language, locales)
        target = dest / Path(path).name
        part = target.with_name(target.name + ".part")
        part.write_bytes(data)
        os.replace(part, target)
    return reports


def notebook_comments(notebook: dict) -> list[tuple[str, str]]:
    """``(msgid, where)`` of every comment to translate in a notebook: those of its code cells and
    of the code blocks of its markdown cells (exercise solutions), in order; ``where`` is
    ``cell N, line L`` (both from 1)."""
    md = _parser()
    found = []
    for number, cell in enumerate(notebook.get("cells", []), 1):
        text = _cell_source(cell)
        if cell.get("cell_type") == "code":
            found += [(c.text, f"cell {number}, line {c.line + 1}") for c in comment_messages(text)]
        elif cell.get("cell_type") == "markdown":
            for block in markdown_blocks(text, md):
                if block.kind == "code":
                    found += [(c.text, f"cell {number}, line {block.lines[0] + c.line + 1}")
                              for c in comment_messages(block.msgid)]
    return found
