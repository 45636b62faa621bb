"""The built book as a reader meets it: every page opened in headless Chromium.

Serves ``_build/html`` on 127.0.0.1 and loads each page of ``_toc.yml`` with Debian's ``chromium``
(``scripts/install_chromium.sh`` installs it), reading the DOM after the page's JavaScript ran.
Checks that each page loads, shows its figures, holds no error output from a cell, keeps its
exercise solutions collapsed, offers its notebook for download, and that the search page finds
"attention". Screenshots of the intro and of one chapter go to ``_build/screenshots/`` for review.

The book is built first if ``_build/html`` is missing or older than its sources (CI builds it just
before the tests). Skips, saying why, where Chromium is not installed.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest
from helpers import chromium as find_chromium

pytestmark = pytest.mark.browser

bs4 = pytest.importorskip("bs4", reason="beautifulsoup4 comes with jupyter-book (the [book] extra)")
yaml = pytest.importorskip("yaml", reason="PyYAML comes with jupyter-book (the [book] extra)")

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
SOURCES = ("_config.yml", "_toc.yml", "book/**/*.md", "book/**/*.bib", "notebooks/*.ipynb")
# Without the background-networking switches Chromium keeps trying to reach Google's services
# and, on a machine without internet, never exits.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
]
PROGRESS = re.compile(r"\d+%\||it/s\]|s/it\]|^\s*$")  # a tqdm bar's line (or blank) on stderr


# ---------------------------------------------------------------------------- fixtures
def _newest_source() -> float:
    times = [p.stat().st_mtime for pattern in SOURCES for p in ROOT.glob(pattern)]
    return max(times, default=0.0)


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_chromium()


@pytest.fixture(scope="module")
def book(chromium) -> Path:
    """``_build/html``, built first if it is missing or older than a source file."""
    if not (ROOT / "_config.yml").exists() or not (ROOT / "_toc.yml").exists():
        pytest.skip("no _config.yml/_toc.yml: there is no book to open")
    index = HTML / "index.html"
    if not index.exists() or index.stat().st_mtime < _newest_source():
        jb = Path(sys.executable).with_name("jupyter-book")
        if not jb.exists():
            pytest.skip(f"_build/html is missing or stale and {jb} is not installed to rebuild it")
        proc = subprocess.run(
            [str(jb), "build", ".", "--warningiserror", "--keep-going"],
            cwd=ROOT, capture_output=True, text=True, timeout=1800,
        )
        if proc.returncode != 0:
            pytest.fail(f"`jupyter-book build` failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return HTML


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture(scope="module")
def server(book):
    """Base URL of ``_build/html`` served on 127.0.0.1 at a free port."""
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(book))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _run_chromium(chromium: str, args: list[str], timeout: float = 120) -> str:
    with tempfile.TemporaryDirectory(prefix="tformer-chromium-") as profile:
        try:
            proc = subprocess.run(
                [chromium, *FLAGS, f"--user-data-dir={profile}", *args],
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"chromium did not finish within {timeout} s: {' '.join(args)}")
    if proc.returncode != 0:
        pytest.fail(f"chromium exited {proc.returncode} for {args[-1]}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def dump_dom(chromium: str, url: str, budget_ms: int = 3000):
    """The page's DOM after its scripts ran for ``budget_ms`` of virtual time, parsed."""
    html = _run_chromium(chromium, [f"--virtual-time-budget={budget_ms}", "--dump-dom", url])
    return bs4.BeautifulSoup(html, "html.parser")


def toc_files() -> list[str]:
    """Every document of ``_toc.yml`` in reading order (root first), without extension."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return [re.sub(r"\.(md|ipynb)$", "", f) for f in files]


def _notebook(doc: str) -> dict | None:
    path = ROOT / f"{doc}.ipynb"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


@pytest.fixture(scope="module")
def pages(chromium, server) -> dict:
    """{doc: parsed DOM} for every page of the table of contents (two browsers at a time)."""
    docs = toc_files()
    with ThreadPoolExecutor(max_workers=2) as pool:
        doms = pool.map(lambda d: dump_dom(chromium, urljoin(server, f"{d}.html")), docs)
        return dict(zip(docs, doms))


# ---------------------------------------------------------------------------- checks
def _local_file(page_url: str, src: str) -> Path:
    return HTML / unquote(urlparse(urljoin(page_url, src)).path).lstrip("/")


def page_problems(doc: str, dom, server: str) -> list[str]:
    """Everything a reader would see as broken on one page (an empty list when it is fine)."""
    problems = []
    article = dom.select_one("article")
    if article is None or dom.select_one("h1") is None:
        return [f"{doc}: no article/h1 in the page: did it load? title={dom.title!r}"]
    page_url = urljoin(server, f"{doc}.html")
    # the theme: its navigation is there and every local stylesheet and script it loads exists
    if dom.select_one(".bd-sidebar-primary") is None:
        problems.append(f"{doc}: no sidebar: the sphinx-book-theme layout is missing")
    for tag, attr in (("link[rel=stylesheet]", "href"), ("script[src]", "src")):
        for el in dom.select(tag):
            ref = el.get(attr, "")
            if ref and not ref.startswith(("http:", "https:", "//", "data:")):
                path = _local_file(page_url, ref)
                if not path.is_file() or path.stat().st_size == 0:
                    problems.append(f"{doc}: {ref} is missing from the build")
    # figures: every image shown is a real, non-empty file; a notebook shows all its PNG outputs
    for img in article.select("img"):
        src = img.get("src", "")
        if src.startswith(("data:", "http:", "https:")):
            continue
        path = _local_file(page_url, src)
        if not path.is_file() or path.stat().st_size == 0:
            problems.append(f"{doc}: image {src} is missing or empty")
        elif path.suffix == ".png" and path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
            problems.append(f"{doc}: image {src} is not a PNG")
    nb = _notebook(doc)
    if nb is not None:
        outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        want = sum("image/png" in o.get("data", {}) for o in outputs)
        shown = len(article.select(".cell_output img"))
        if shown < want:
            problems.append(f"{doc}: the notebook has {want} PNG outputs but the page shows {shown}")
        for o in outputs:
            if o.get("output_type") == "error":
                problems.append(f"{doc}: a cell output is an error: {o.get('ename')}: {o.get('evalue')}")
        # download button: the page offers its own .ipynb, and the server has it
        links = [a["href"] for a in dom.select("a.btn-download-source-button") if a.get("href", "").endswith(".ipynb")]
        if not links:
            problems.append(f"{doc}: no .ipynb download entry in the page header")
        for href in links:
            path = _local_file(page_url, href)
            if not path.is_file() or "cells" not in json.loads(path.read_text(encoding="utf-8")):
                problems.append(f"{doc}: the .ipynb download {href} is not served")
    # error output from a cell: tracebacks, and stderr other than progress bars
    for block in article.select(".output.traceback, .output.error"):
        problems.append(f"{doc}: error output shown: {block.get_text()[:200]!r}")
    if "Traceback (most recent call last)" in article.get_text():
        problems.append(f"{doc}: a traceback is shown on the page")
    for block in article.select(".output.stderr"):
        pre = block.select_one("pre")  # the text only, not the copy button's tooltip
        lines = (pre or block).get_text().splitlines()
        noisy = [line for line in lines if not PROGRESS.search(line)]
        if noisy:
            problems.append(f"{doc}: stderr output shown (a warning?): {noisy[0][:200]!r}")
    # exercises: every solution is collapsed until the reader asks for it
    for sol in article.select(".solution"):
        classes = sol.get("class", [])
        button = sol.select_one("button.toggle-button")
        collapsed = "toggle-hidden" in classes and button is not None and button.get("aria-expanded") == "false"
        opened_details = [d for d in sol.find_all("details") if d.has_attr("open")]
        if "dropdown" not in classes or not collapsed or opened_details:
            problems.append(f"{doc}: solution {sol.get('id')} is shown open (use :class: dropdown)")
    return problems


# ---------------------------------------------------------------------------- tests
def test_every_page_loads_with_figures_no_errors_and_hidden_solutions(pages, server):
    problems = [p for doc, dom in pages.items() for p in page_problems(doc, dom, server)]
    assert not problems, "\n".join(problems)


def test_chapter_pages_offer_their_notebook_for_download(pages):
    chapters = [doc for doc in pages if _notebook(doc) is not None]
    if not chapters:
        pytest.skip("no notebook chapters in _toc.yml yet")
    for doc in chapters:
        hrefs = [a.get("href", "") for a in pages[doc].select("a.btn-download-source-button")]
        assert any(h.endswith(f"{Path(doc).name}.ipynb") for h in hrefs), (doc, hrefs)


def test_search_page_finds_attention(chromium, server):
    dom = dump_dom(chromium, urljoin(server, "search.html?q=attention"), budget_ms=10000)
    results = dom.select("#search-results ul.search li")
    summary = dom.select_one("#search-results .search-summary")
    assert results, f"no search results for 'attention': {summary.get_text() if summary else dom.title}"
    assert any("attention" in li.get_text().lower() for li in results)


def _screenshot(chromium: str, url: str, shot: Path, height: int = 1800) -> None:
    shot.unlink(missing_ok=True)
    _run_chromium(chromium, [f"--window-size=1280,{height}", "--virtual-time-budget=3000", f"--screenshot={shot}", url])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000, f"{shot} looks blank ({shot.stat().st_size} bytes)"


def test_screenshots_of_intro_and_a_chapter(chromium, server, pages):
    SHOTS.mkdir(parents=True, exist_ok=True)
    docs = list(pages)
    with_figures = [d for d in docs if pages[d].select("article .cell_output img")]
    chapter = (with_figures or [d for d in docs if _notebook(d)] or docs[1:] or docs)[0]
    _screenshot(chromium, urljoin(server, f"{docs[0]}.html"), SHOTS / "intro.png")
    # tall enough to reach the chapter's first figures
    _screenshot(chromium, urljoin(server, f"{chapter}.html"), SHOTS / f"{Path(chapter).name}.png", 4800)
