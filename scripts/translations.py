"""Keep the Chinese edition's catalogs (``locales/zh_CN/LC_MESSAGES``) in step with the English.

    python scripts/translations.py update            # extract the English messages, merge them in
    python scripts/translations.py comments          # only the comments of the chapters' code
    python scripts/translations.py prefill           # numbers, code and math translate to themselves
    python scripts/translations.py stats             # translated / untranslated / fuzzy, per catalog
    python scripts/translations.py check             # broken markup or syntax, with file and line
    python scripts/translations.py dump notebooks/02_self_attention > todo.txt
    python scripts/translations.py apply notebooks/02_self_attention todo.txt

``update`` runs Sphinx's gettext builder over the book (through ``jupyter-book``) and then
``sphinx-intl update``: new English messages arrive untranslated, changed ones arrive *fuzzy* with
the old translation as a starting point, and ``make test`` fails until each is translated and its
fuzzy flag removed. ``dump`` writes the unfinished messages of one catalog as plain text blocks —
``=== N`` then the English, no escaping — and ``apply`` reads the same blocks with the Chinese in
place of the English, checks each one's markup (code, math, roles, links must stay as they are)
and writes the catalog. Editing the ``.po`` file by hand (Poedit, an editor) works just as well.

The comments of the chapters' code have their own catalogs, ``code-comments/<chapter>.po`` (one
message per comment line, its text without ``# ``); ``update`` (or ``comments`` alone) extracts
them from the notebooks and merges them the same way. The Chinese notebooks (download button,
course zip) are generated from both catalogs when the book is built (``book/_ext/notebook_i18n.py``).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import editions  # noqa: E402
import notebook_i18n  # noqa: E402

LANGUAGE = "zh_CN"
CATALOGS = ROOT / "locales" / LANGUAGE / "LC_MESSAGES"
POT = ROOT / "_build" / "gettext" / "_build" / "gettext"
BLOCK = re.compile(r"^=== (\d+)[ \t]*\n", re.M)
WIDTH = 0  # no line wrapping: one message, one line, small diffs


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def extract(out: Path = POT.parents[1]) -> Path:
    """Run the gettext builder; returns the folder of ``.pot`` files (one per page or chapter)."""
    subprocess.run([_bin("jupyter-book"), "build", str(ROOT), "--builder", "custom", "--custom-builder",
                    "gettext", "--path-output", str(out), "--all", "-q"], check=True, stdout=subprocess.DEVNULL)
    return out / "_build" / "gettext"


def update(_args=None) -> None:
    pot = extract()
    subprocess.run([_bin("sphinx-intl"), "update", "-p", str(pot), "-l", LANGUAGE, "-d", str(ROOT / "locales"),
                    "-w", str(WIDTH), "--no-obsolete"], check=True)
    comments()
    prefill()
    stats()


def comment_template(notebook: Path):
    """A catalog template of the comments of one chapter's code (``#.`` names cell and line)."""
    import json

    from babel.messages.catalog import Catalog

    template = Catalog(locale=None, project="tformer", fuzzy=False)
    found = notebook_i18n.notebook_comments(json.loads(notebook.read_text(encoding="utf-8")))
    for msgid, where in found:
        if msgid in template:
            template[msgid].auto_comments.append(where)
        else:
            template.add(msgid, auto_comments=[where], locations=[(f"notebooks/{notebook.name}", None)])
    return template


def comments(_args=None) -> None:
    """Extract the comments of every chapter's code and merge them into ``code-comments/<chapter>.po``:
    a new comment arrives untranslated, a changed one fuzzy (with the old translation), a removed
    one is dropped."""
    from babel.messages.catalog import Catalog

    folder = CATALOGS / notebook_i18n.COMMENTS
    folder.mkdir(parents=True, exist_ok=True)
    chapters = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for notebook in chapters:
        path = folder / f"{notebook.stem}.po"
        template = comment_template(notebook)
        catalog = editions.read_catalog(path) if path.exists() else Catalog(locale=LANGUAGE, project="tformer")
        created = catalog.creation_date
        catalog.update(template, no_fuzzy_matching=False, update_header_comment=False)
        catalog.creation_date = created  # the file changes only where a comment did
        catalog.obsolete.clear()
        _write(path, catalog)
    for stale in sorted(set(folder.glob("*.po")) - {folder / f"{n.stem}.po" for n in chapters}):
        stale.unlink()
        print(f"{stale.relative_to(ROOT)}: removed (its chapter is gone)")


def _path(doc: str) -> Path:
    path = Path(doc)
    if path.suffix != ".po":
        path = CATALOGS / f"{doc}.po"
    if not path.is_file():
        raise SystemExit(f"{doc}: no catalog {path} (run `update` first)")
    return path


def _write(path: Path, catalog) -> None:
    from babel.messages.pofile import write_po

    buffer = io.BytesIO()
    write_po(buffer, catalog, width=WIDTH, omit_header=False)
    tmp = path.with_suffix(".po.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def dump(args) -> None:
    catalog = editions.read_catalog(_path(args.doc))
    for number, message in enumerate(catalog):
        if message.id and (args.all or not message.string or message.fuzzy):
            print(f"=== {number}")
            print(message.string if args.all and message.string else message.id)


def apply(args) -> None:
    path = _path(args.doc)
    catalog = editions.read_catalog(path)
    messages = list(catalog)
    text = Path(args.file).read_text(encoding="utf-8")
    parts = BLOCK.split(text)
    if parts[0].strip():
        raise SystemExit(f"{args.file}: text before the first '=== N' line")
    problems, done = [], 0
    for number, body in zip(parts[1::2], parts[2::2]):
        index = int(number)
        if not 0 < index < len(messages):
            raise SystemExit(f"{args.file}: no message {index} in {path}")
        message, translation = messages[index], body.strip("\n")
        found = editions.message_problems(message.id, translation)
        if found:
            problems += [f"=== {index}: {p}" for p in found]
            continue
        message.string = translation
        message.flags.discard("fuzzy")
        done += 1
    _write(path, catalog)
    print(f"{path.relative_to(ROOT)}: {done} message(s) translated, {len(problems)} refused")
    for line in problems:
        print("  " + line)
    if problems:
        raise SystemExit(1)


def prefill(_args=None) -> None:
    """Messages with nothing to translate (numbers, code, math, symbols) get themselves as translation."""
    for path in sorted(CATALOGS.rglob("*.po")):
        catalog, filled = editions.read_catalog(path), 0
        for message in catalog:
            if message.id and (not message.string or message.fuzzy) and not editions.needs_translation(message.id):
                message.string, filled = message.id, filled + 1
                message.flags.discard("fuzzy")
        if filled:
            _write(path, catalog)
            print(f"{path.relative_to(CATALOGS)}: {filled} message(s) with nothing to translate")


def stats(_args=None) -> None:
    total = [0, 0, 0]
    for path in sorted(CATALOGS.rglob("*.po")):
        catalog = editions.read_catalog(path)
        messages = [m for m in catalog if m.id]
        todo = sum(1 for m in messages if not m.string)
        fuzzy = sum(1 for m in messages if m.string and m.fuzzy)
        total = [total[0] + len(messages) - todo - fuzzy, total[1] + todo, total[2] + fuzzy]
        print(f"{path.relative_to(CATALOGS)}: {len(messages) - todo - fuzzy} translated, {todo} untranslated, {fuzzy} fuzzy")
    print(f"all: {total[0]} translated, {total[1]} untranslated, {total[2]} fuzzy")


def check(_args=None) -> int:
    errors, unfinished = editions.check_catalogs(LANGUAGE)
    for line in errors + unfinished:
        print(line)
    print(f"{len(errors)} broken, {len(unfinished)} unfinished (outside {sorted(editions.ENGLISH_ONLY)})")
    return 1 if errors or unfinished else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("update", help="extract the English messages and merge them into the catalogs")
    sub.add_parser("comments", help="extract the comments of the chapters' code into code-comments/*.po")
    sub.add_parser("prefill", help="copy messages that have nothing to translate (numbers, code, math)")
    sub.add_parser("stats", help="how much of each catalog is translated")
    sub.add_parser("check", help="broken or unfinished translations, with file and line")
    d = sub.add_parser("dump", help="unfinished messages of one catalog as '=== N' blocks")
    d.add_argument("doc", help="e.g. notebooks/02_self_attention (or a .po path)")
    d.add_argument("--all", action="store_true", help="every message, with its translation where it has one")
    a = sub.add_parser("apply", help="fill one catalog from '=== N' blocks")
    a.add_argument("doc")
    a.add_argument("file")
    args = parser.parse_args(argv)
    result = {"update": update, "comments": comments, "prefill": prefill, "stats": stats, "check": check, "dump": dump, "apply": apply}[args.command](args)
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
