"""Build the Chinese edition of the book into ``_build/html/zh_CN`` (``make book`` runs it after the
English one).

Same sources, same committed notebook outputs (nothing is executed), with Sphinx's
``language = "zh_CN"``: every prose message is replaced by its translation from
``locales/zh_CN/LC_MESSAGES`` (see ``scripts/translations.py``). Warnings are errors, as for the
English book; ``book/_ext/editions.py`` stops the build on a broken or unfinished translation and
names the ``.po`` file and line. The build has its own output folder (``_build/zh_CN``) so the two
editions never share cached doctrees, and is then copied under the English site, whose pages link
to it (and back).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LANGUAGE = "zh_CN"
TITLE = "tformer：Transformer，从为什么、是什么到怎么用"
WORK = ROOT / "_build" / LANGUAGE
SITE = ROOT / "_build" / "html" / LANGUAGE


def config() -> dict:
    data = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    data["title"] = TITLE
    sphinx = data.setdefault("sphinx", {})
    settings = sphinx.setdefault("config", {})
    settings["language"] = LANGUAGE
    # jupyter-book reads these relative to the config file, which now lives in _build/zh_CN
    sphinx["local_extensions"] = {name: str(ROOT / path) for name, path in sphinx.get("local_extensions", {}).items()}
    data["bibtex_bibfiles"] = [str(ROOT / path) for path in data.get("bibtex_bibfiles", [])]
    settings["locale_dirs"] = [str(ROOT / path) for path in settings.get("locale_dirs", ["locales/"])]
    return data


def main(argv: list[str] | None = None) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "_config.yml"
    path.write_text(yaml.safe_dump(config(), allow_unicode=True, sort_keys=False), encoding="utf-8")
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "--config", str(path),
               "--path-output", str(WORK), "--warningiserror", "--keep-going", *(argv or [])]
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode:
        return result.returncode
    if SITE.exists():
        shutil.rmtree(SITE)
    shutil.copytree(WORK / "_build" / "html", SITE)
    print(f"Chinese edition: {SITE.relative_to(ROOT)}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
