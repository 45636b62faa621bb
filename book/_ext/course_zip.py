"""Sphinx extension of the tformer book: the learner's own copy of the course.

* After an HTML build, writes ``tformer-course.zip`` (every chapter, the ``tformer`` wheel, the
  pinned constraints and a "run it" guide; see ``scripts/build_course_zip.py``) into the output
  folder, so ``make book`` publishes it with the site; the Chinese edition writes
  its own ``tformer-course.zip`` (Chinese notebooks and guide) into its folder, so the pages of each
  edition, setup page included, link their own.
* On every page that has a download menu (the theme's ``.ipynb`` / source / ``.pdf`` buttons), adds
  a "course .zip" entry right after the ``.ipynb`` one.
* Where ``GITHUB_REPOSITORY`` (``owner/name``, set by GitHub Actions; see
  ``.github/workflows/pages.yml``) is set, names the source: the theme's repository and
  open-issue buttons point at ``$GITHUB_SERVER_URL/owner/name``. A local build without it shows
  neither button and builds the same, warnings as errors.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ZIP_NAME = "tformer-course.zip"


def _builder_module():
    spec = importlib.util.spec_from_file_location("build_course_zip", ROOT / "scripts" / "build_course_zip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def repository_url(env: dict | None = None) -> str | None:
    """``https://github.com/owner/name`` from ``GITHUB_REPOSITORY`` (and ``GITHUB_SERVER_URL``),
    or None when it is unset; a malformed value is an error, not a silently broken link."""
    env = os.environ if env is None else env
    repo = env.get("GITHUB_REPOSITORY", "").strip()
    if not repo:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
        raise ValueError(f"GITHUB_REPOSITORY={repo!r} must look like 'owner/name'")
    server = env.get("GITHUB_SERVER_URL", "").strip().rstrip("/") or "https://github.com"
    return f"{server}/{repo}"


def set_repository(app, config) -> None:
    url = repository_url()
    if url is None:
        return
    options = dict(config.html_theme_options or {})
    options.update(repository_url=url, repository_branch=os.environ.get("GITHUB_REF_NAME") or "main",
                   use_repository_button=True, use_issues_button=True)
    config.html_theme_options = options


# The download menu's entry, per edition.
BUTTON = {
    "en": ("course .zip", "Download every chapter with the tformer wheel, to run on your own machine"),
    "zh_CN": ("课程 .zip", "下载全部章节（中文 notebook）和 tformer 的 wheel，在你自己的电脑上运行"),
}


def zip_name(language: str) -> str:
    return _builder_module().ZIP_NAMES.get(language or "en", ZIP_NAME)


def add_zip_button(app, pagename, templatename, context, doctree) -> None:
    language = app.config.language or "en"
    text, tooltip = BUTTON.get(language, BUTTON["en"])
    for button in context.get("header_buttons", []):
        if button.get("label") != "download-buttons":
            continue
        entries = button["buttons"]
        # A notebook page's own source is its .ipynb ("download-source-button"); a page built
        # from another format may also have a "download-notebook-button".
        labels = [b.get("label") for b in entries]
        anchor = next((lab for lab in ("download-notebook-button", "download-source-button") if lab in labels), None)
        after = labels.index(anchor) + 1 if anchor else 0
        entries.insert(after, {
            "type": "link",
            "url": context["pathto"](zip_name(language), 1),
            "text": text,
            "tooltip": tooltip,
            "icon": "fas fa-file-archive",
            "label": "download-course-zip-button",
        })


def write_zip(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        language = app.config.language or "en"
        out = _builder_module().build(Path(app.outdir) / zip_name(language), language)
        print(f"course_zip: wrote {out}")


def setup(app):
    app.connect("config-inited", set_repository)
    # sphinx-book-theme fills the download menu at priority 501; run after it.
    app.connect("html-page-context", add_zip_button, priority=900)
    app.connect("build-finished", write_zip)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
