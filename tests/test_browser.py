"""The built book as a reader meets it: every page opened in headless Chromium, in both editions.

Serves ``_build/html`` on 127.0.0.1 and loads each page of ``_toc.yml`` with Debian's ``chromium``
(``scripts/install_chromium.sh`` installs it), reading the DOM after the page's JavaScript ran.
Checks that each page loads, shows its figures, holds no error output from a cell, keeps its
exercise solutions collapsed, offers its notebook for download, and that the search page finds
"attention". The Chinese edition (``_build/html/zh_CN``, built by ``scripts/build_zh_book.py``) gets
the same checks, every page of either edition links to the same page in the other, and Chinese text
is drawn by fonts that have CJK glyphs (asked of Chromium itself over the DevTools protocol), not as
boxes. Screenshots of the intro and of one chapter in each edition go to ``_build/screenshots/`` for
review.

The book is built first, as ``make book`` builds it, if ``_build/html`` or ``_build/html/zh_CN`` is
missing or older than its sources (CI builds it just before the tests). Skips, saying why, where
Chromium (or a font with Chinese glyphs, for the font check) is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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
ZH = "zh_CN"  # the Chinese edition's folder in _build/html (book/_ext/editions.py: EDITIONS)
SHOTS = ROOT / "_build" / "screenshots"
SOURCES = ("_config.yml", "_toc.yml", "book/**/*.md", "book/**/*.bib", "notebooks/*.ipynb",
           "book/_ext/*.py", "book/_ext/static/*")
ZH_SOURCES = (*SOURCES, f"locales/{ZH}/LC_MESSAGES/**/*.po")  # the Chinese edition also reads its catalogs
# Without the background-networking switches Chromium keeps trying to reach Google's services
# and, on a machine without internet, never exits.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
]
PROGRESS = re.compile(r"\d+%\||it/s\]|s/it\]|^\s*$")  # a tqdm bar's line (or blank) on stderr


# ---------------------------------------------------------------------------- fixtures
def _newest(patterns: tuple[str, ...]) -> float:
    times = [p.stat().st_mtime for pattern in patterns for p in ROOT.glob(pattern) if p.is_file()]
    return max(times, default=0.0)


def _stale(index: Path, patterns: tuple[str, ...]) -> bool:
    return not index.exists() or index.stat().st_mtime < _newest(patterns)


def _build(what: str, command: list[str]) -> None:
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_chromium()


@pytest.fixture(scope="module")
def book(chromium) -> Path:
    """``_build/html`` with the Chinese edition in ``_build/html/zh_CN``, built first as ``make book``
    builds them if either is missing or older than a source file (or, for Chinese, a catalog)."""
    if not (ROOT / "_config.yml").exists() or not (ROOT / "_toc.yml").exists():
        pytest.skip("no _config.yml/_toc.yml: there is no book to open")
    english = _stale(HTML / "index.html", SOURCES)
    # a new English build is followed by a new Chinese one, as in `make book`
    chinese = english or _stale(HTML / ZH / "index.html", ZH_SOURCES)
    if english or chinese:
        jb = Path(sys.executable).with_name("jupyter-book")
        if not jb.exists():
            pytest.skip(f"_build/html is missing or stale and {jb} is not installed to rebuild it")
        if english:
            _build("`jupyter-book build`", [str(jb), "build", ".", "--warningiserror", "--keep-going"])
        # warnings are errors there too: an untranslated or broken message stops it, naming its .po file
        _build("`scripts/build_zh_book.py` (the Chinese edition)", [sys.executable, "scripts/build_zh_book.py"])
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


def _dump_edition(chromium: str, server: str, edition: str = "") -> dict:
    docs = toc_files()
    with ThreadPoolExecutor(max_workers=2) as pool:
        doms = pool.map(lambda d: dump_dom(chromium, page_url(server, d, edition)), docs)
        return dict(zip(docs, doms))


@pytest.fixture(scope="module")
def pages(chromium, server) -> dict:
    """{doc: parsed DOM} for every page of the table of contents (two browsers at a time)."""
    return _dump_edition(chromium, server)


@pytest.fixture(scope="module")
def zh_pages(chromium, server) -> dict:
    """{doc: parsed DOM} for every page of the table of contents in the Chinese edition (``/zh_CN/``)."""
    return _dump_edition(chromium, server, ZH)


# ---------------------------------------------------------------------------- checks
def _local_file(page_url: str, src: str) -> Path:
    return HTML / unquote(urlparse(urljoin(page_url, src)).path).lstrip("/")


def page_url(server: str, doc: str, edition: str = "") -> str:
    """Address of ``doc`` in an edition: ``""`` (English, the site's root) or ``"zh_CN"``."""
    return urljoin(server, f"{edition}/{doc}.html" if edition else f"{doc}.html")


def page_problems(doc: str, dom, server: str, edition: str = "") -> list[str]:
    """Everything a reader would see as broken on one page (an empty list when it is fine).

    ``edition`` is the folder of a translated edition (``"zh_CN"``): the page is ``/zh_CN/<doc>.html``
    and is held to the same checks, against the same notebook.
    """
    problems = []
    article = dom.select_one("article")
    doc_url = page_url(server, doc, edition)
    where = f"{edition}/{doc}" if edition else doc  # in the messages
    if article is None or dom.select_one("h1") is None:
        return [f"{where}: no article/h1 in the page: did it load? title={dom.title!r}"]
    # the theme: its navigation is there and every local stylesheet and script it loads exists
    if dom.select_one(".bd-sidebar-primary") is None:
        problems.append(f"{where}: no sidebar: the sphinx-book-theme layout is missing")
    for tag, attr in (("link[rel=stylesheet]", "href"), ("script[src]", "src")):
        for el in dom.select(tag):
            ref = el.get(attr, "")
            if ref and not ref.startswith(("http:", "https:", "//", "data:")):
                path = _local_file(doc_url, ref)
                if not path.is_file() or path.stat().st_size == 0:
                    problems.append(f"{where}: {ref} is missing from the build")
    # figures: every image shown is a real, non-empty file; a notebook shows all its PNG outputs
    for img in article.select("img"):
        src = img.get("src", "")
        if src.startswith(("data:", "http:", "https:")):
            continue
        path = _local_file(doc_url, src)
        if not path.is_file() or path.stat().st_size == 0:
            problems.append(f"{where}: image {src} is missing or empty")
        elif path.suffix == ".png" and path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
            problems.append(f"{where}: image {src} is not a PNG")
    nb = _notebook(doc)
    if nb is not None:
        outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        want = sum("image/png" in o.get("data", {}) for o in outputs)
        shown = len(article.select(".cell_output img"))
        if shown < want:
            problems.append(f"{where}: the notebook has {want} PNG outputs but the page shows {shown}")
        for o in outputs:
            if o.get("output_type") == "error":
                problems.append(f"{where}: a cell output is an error: {o.get('ename')}: {o.get('evalue')}")
        # download button: the page offers its own .ipynb, and the server has it
        links = [a["href"] for a in dom.select("a.btn-download-source-button") if a.get("href", "").endswith(".ipynb")]
        if not links:
            problems.append(f"{where}: no .ipynb download entry in the page header")
        for href in links:
            path = _local_file(doc_url, href)
            if not path.is_file() or "cells" not in json.loads(path.read_text(encoding="utf-8")):
                problems.append(f"{where}: the .ipynb download {href} is not served")
    # error output from a cell: tracebacks, and stderr other than progress bars
    for block in article.select(".output.traceback, .output.error"):
        problems.append(f"{where}: error output shown: {block.get_text()[:200]!r}")
    if "Traceback (most recent call last)" in article.get_text():
        problems.append(f"{where}: a traceback is shown on the page")
    for block in article.select(".output.stderr"):
        pre = block.select_one("pre")  # the text only, not the copy button's tooltip
        lines = (pre or block).get_text().splitlines()
        noisy = [line for line in lines if not PROGRESS.search(line)]
        if noisy:
            problems.append(f"{where}: stderr output shown (a warning?): {noisy[0][:200]!r}")
    # exercises: every solution is collapsed until the reader asks for it
    for sol in article.select(".solution"):
        classes = sol.get("class", [])
        button = sol.select_one("button.toggle-button")
        collapsed = "toggle-hidden" in classes and button is not None and button.get("aria-expanded") == "false"
        opened_details = [d for d in sol.find_all("details") if d.has_attr("open")]
        if "dropdown" not in classes or not collapsed or opened_details:
            problems.append(f"{where}: solution {sol.get('id')} is shown open (use :class: dropdown)")
    return problems


# ---------------------------------------------------------------------------- tests
def test_every_page_loads_with_figures_no_errors_and_hidden_solutions(pages, server):
    problems = [p for doc, dom in pages.items() for p in page_problems(doc, dom, server)]
    assert not problems, "\n".join(problems)


def test_every_chinese_page_loads_with_figures_no_errors_and_hidden_solutions(zh_pages, server):
    """The Chinese edition is held to the English pages' checks, page for page, and says it is
    Chinese (``<html lang="zh-CN">``: what gives it the CJK font stack of ``editions.css``)."""
    problems = [p for doc, dom in zh_pages.items() for p in page_problems(doc, dom, server, ZH)]
    for doc, dom in zh_pages.items():
        lang = dom.html.get("lang") if dom.html is not None else None
        if lang != "zh-CN":
            problems.append(f"{ZH}/{doc}: <html lang={lang!r}>, not 'zh-CN'")
    assert not problems, "\n".join(problems)


def switch_problems(doc: str, dom, server: str, edition: str, other: str, hreflang: str) -> list[str]:
    """Why the page ``doc`` of ``edition`` does not link, in its header, to the same page of ``other``
    (``""`` is English) whose file the server has (an empty list when it does)."""
    where = f"{edition}/{doc}" if edition else doc
    here = page_url(server, doc, edition)
    links = dom.select(".bd-header-article .edition-switch a[href]")
    if len(links) != 1:
        return [f"{where}: {len(links)} edition-switch links in the header (book/_ext/editions.py puts one on every page)"]
    link, problems = links[0], []
    target, want = urljoin(here, link["href"]), page_url(server, doc, other)
    if target != want:
        problems.append(f"{where}: the edition switch goes to {target}, not {want}")
    elif not _local_file(here, link["href"]).is_file():
        problems.append(f"{where}: the edition switch goes to {link['href']}, which is not in the build")
    if link.get("hreflang") != hreflang:
        problems.append(f"{where}: the edition switch has hreflang={link.get('hreflang')!r}, not {hreflang!r}")
    h1 = dom.select_one("article h1")
    if h1 is not None and h1 not in link.find_all_next("h1"):
        problems.append(f"{where}: the edition switch is not at the top of the page (above the title)")
    return problems


def test_every_page_links_to_the_same_page_in_the_other_edition(pages, zh_pages, server):
    """English pages link to their Chinese page and back, and the linked files exist."""
    problems = [p for doc, dom in pages.items() for p in switch_problems(doc, dom, server, "", ZH, "zh-CN")]
    problems += [p for doc, dom in zh_pages.items() for p in switch_problems(doc, dom, server, ZH, "", "en")]
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


def _screenshot_chapter(pages: dict) -> str:
    """The chapter to photograph: the first with figures (else the first notebook, else any page)."""
    docs = list(pages)
    with_figures = [d for d in docs if pages[d].select("article .cell_output img")]
    return (with_figures or [d for d in docs if _notebook(d)] or docs[1:] or docs)[0]


def test_screenshots_of_intro_and_a_chapter(chromium, server, pages):
    SHOTS.mkdir(parents=True, exist_ok=True)
    docs = list(pages)
    chapter = _screenshot_chapter(pages)
    _screenshot(chromium, urljoin(server, f"{docs[0]}.html"), SHOTS / "intro.png")
    # tall enough to reach the chapter's first figures
    _screenshot(chromium, urljoin(server, f"{chapter}.html"), SHOTS / f"{Path(chapter).name}.png", 4800)


def test_screenshot_of_a_chinese_chapter(chromium, server, pages):
    """The same chapter in Chinese, ``_build/screenshots/zh_CN-<chapter>.png``, to review beside the
    English one: its Chinese should read as characters, not boxes (the font check proves it for a
    few nodes; the picture shows the whole top of the page)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    chapter = _screenshot_chapter(pages)
    _screenshot(chromium, page_url(server, chapter, ZH), SHOTS / f"{ZH}-{Path(chapter).name}.png", 4800)


# ---------------------------------------------------------------------------- Chinese glyphs
# Han ideographs (with extension A and the compatibility block), CJK symbols and punctuation, kana,
# and full-width forms: characters that only a font with CJK glyphs draws, and that a font without
# them draws as boxes ("tofu").
CJK = re.compile(r"[\u2e80-\u2fff\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef]")
# The nodes whose fonts are checked, at most so many of each: the title, a section heading, body
# paragraphs and a cell's output (monospace, where the CJK glyphs come from a fallback font).
FONT_NODES = (("article h1", 1), ("article h2", 1), ("article p", 4), ("article .cell_output pre", 1))
HIDDEN = {"solution", "toggle-hidden", "dropdown"}  # collapsed content is not drawn: nothing to ask


def cjk_families() -> set[str]:
    """Every family name (in every language) of the installed fonts that cover Chinese."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        pytest.skip("fc-list (fontconfig) is not installed: cannot tell which fonts have Chinese glyphs")
    out = subprocess.run([fc_list, ":lang=zh", "family"], capture_output=True, text=True, timeout=60).stdout
    families = {name.strip() for line in out.splitlines() for name in line.split(",") if name.strip()}
    if not families:
        pytest.skip("no font with Chinese glyphs is installed (`fc-list :lang=zh` is empty): "
                    "run `bash scripts/install_chromium.sh`, which installs fonts-wqy-zenhei")
    return families


def most_chinese_chapter() -> str:
    """The notebook chapter of ``_toc.yml`` with the most Chinese characters in its built article."""
    counts = {}
    for doc in toc_files():
        path = HTML / ZH / f"{doc}.html"
        if _notebook(doc) is None or not path.is_file():
            continue
        html = path.read_text(encoding="utf-8")
        start, end = html.find("<article"), html.rfind("</article>")
        counts[doc] = len(CJK.findall(html[start:end])) if 0 <= start < end else 0
    if not counts or max(counts.values()) == 0:
        pytest.fail(f"no chapter of _build/html/{ZH} has Chinese text in its article: {counts}")
    return max(counts, key=counts.get)


@contextlib.contextmanager
def devtools_browser(chromium: str, timeout: float = 30):
    """A headless Chromium serving the DevTools protocol on a free port; yields its browser
    websocket URL (read from the ``DevTools listening on ws://...`` line it prints on stderr).
    The browser and every process it started are killed on exit, whatever happened."""
    with tempfile.TemporaryDirectory(prefix="tformer-chromium-") as tmp:
        log_path = Path(tmp) / "stderr.log"
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                [chromium, *FLAGS, f"--user-data-dir={tmp}/profile", "--remote-debugging-port=0", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True,  # its own process group, so that one signal ends all its processes
            )
        try:
            deadline = time.monotonic() + timeout
            while True:
                log_text = log_path.read_text(encoding="utf-8", errors="replace")
                found = re.search(r"DevTools listening on (ws://\S+)\n", log_text)
                if found:
                    break
                if proc.poll() is not None:
                    pytest.fail(f"chromium exited {proc.returncode} before opening its DevTools port:\n"
                                f"{log_text[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"chromium did not open its DevTools port within {timeout} s")
                time.sleep(0.05)
            yield found.group(1)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """End ``proc``'s process group (the browser, its renderers and helpers): SIGTERM, then, after
    at most 10 s, SIGKILL for whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # a browser that is stuck, and any helper it left behind
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class DevTools:
    """The few Chrome DevTools Protocol calls the font check needs, over one websocket (tornado's)."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.last_id = 0

    @classmethod
    async def connect(cls, url: str) -> DevTools:
        from tornado.websocket import websocket_connect

        # DOM.getDocument of a whole chapter is a few MB of JSON: above tornado's default limit
        return cls(await websocket_connect(url, connect_timeout=10, max_message_size=256 * 2**20))

    async def call(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        """Send one command (to the page of ``session``, else to the browser) and return its result;
        events that arrive meanwhile are dropped."""
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self.connection.write_message(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(self.connection.read_message(), max(deadline - time.monotonic(), 0.01))
            if raw is None:
                raise ConnectionError(f"chromium closed the DevTools connection during {method}")
            reply = json.loads(raw)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply["result"]

    def close(self) -> None:
        self.connection.close()


def _text(node: dict) -> str:
    """The text a DOM node (of ``DOM.getDocument``) shows: its text nodes, scripts and styles left out."""
    if node.get("nodeType") == 3:
        return node.get("nodeValue", "")
    if node.get("nodeName") in ("SCRIPT", "STYLE", "TEMPLATE"):
        return ""
    return "".join(_text(child) for child in node.get("children", []))


def _classes(node: dict) -> set[str]:
    attrs = node.get("attributes", [])
    pairs = dict(zip(attrs[::2], attrs[1::2]))
    return set(pairs.get("class", "").split())


async def platform_fonts(browser_url: str, url: str, timeout: float = 30) -> list[dict]:
    """Open ``url`` in the browser at ``browser_url`` and ask, for the first few shown nodes of
    :data:`FONT_NODES` with Chinese text, which platform fonts drew their text and how many glyphs
    each: ``[{"selector", "text", "fonts": [{"familyName", "glyphCount", ...}]}]``."""
    devtools = await DevTools.connect(browser_url)
    try:
        target = await devtools.call("Target.createTarget", url="about:blank")
        attached = await devtools.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        session = attached["sessionId"]
        await devtools.call("Page.navigate", session, url=url)
        deadline = time.monotonic() + timeout
        ready = f"document.URL === {json.dumps(url)} && document.readyState === 'complete'"
        while True:
            loaded = await devtools.call("Runtime.evaluate", session, expression=ready, returnByValue=True)
            if loaded["result"].get("value"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading within {timeout} s")
            await asyncio.sleep(0.1)
        await devtools.call("Runtime.evaluate", session, expression="document.fonts.ready.then(() => true)",
                            awaitPromise=True, returnByValue=True)
        await devtools.call("DOM.enable", session)
        await devtools.call("CSS.enable", session)
        root = (await devtools.call("DOM.getDocument", session, depth=-1))["root"]
        nodes, hidden = {}, set()

        def index(node: dict, parent_hidden: bool) -> None:
            nodes[node["nodeId"]] = node
            is_hidden = parent_hidden or node.get("nodeName") == "DETAILS" or bool(_classes(node) & HIDDEN)
            if is_hidden:
                hidden.add(node["nodeId"])
            for child in node.get("children", []):
                index(child, is_hidden)

        index(root, False)
        found = []
        for selector, count in FONT_NODES:
            query = await devtools.call("DOM.querySelectorAll", session, nodeId=root["nodeId"], selector=selector)
            ids = query["nodeIds"]
            chosen = [i for i in ids if i not in hidden and len(CJK.findall(_text(nodes[i]))) >= 2][:count]
            for node_id in chosen:
                fonts = (await devtools.call("CSS.getPlatformFontsForNode", session, nodeId=node_id))["fonts"]
                found.append({"selector": selector, "text": _text(nodes[node_id]), "fonts": fonts})
        try:
            await devtools.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - closing is a courtesy: the browser is killed on the way out
            pass
        return found
    finally:
        devtools.close()


def font_problems(node: dict, families: set[str]) -> list[str]:
    """Why one node's Chinese is not all drawn by fonts with CJK glyphs (an empty list when it is).

    Every Chinese character must be a glyph of a CJK font, so those fonts draw (nearly) as many
    glyphs as the text has Chinese characters — Chromium may leave out a character of a nested
    inline element, so 90% is required — and the other fonts (a Latin face beside them, as for
    code) no more glyphs than it has other characters: a font without CJK glyphs drawing Chinese
    would draw boxes, which the second condition catches exactly.
    """
    text = node["text"]
    chinese = len(CJK.findall(text))
    other = len(text) - chinese  # an upper bound: collapsed white space draws nothing
    cjk_glyphs = sum(f["glyphCount"] for f in node["fonts"] if f["familyName"] in families)
    where = f"{node['selector']} {text.strip()[:40]!r}"
    problems = []
    if cjk_glyphs < 0.9 * chinese:
        problems.append(f"{where}: {chinese} Chinese characters but only {cjk_glyphs} glyphs from fonts with "
                        f"CJK glyphs; fonts used: {node['fonts']}")
    for font in node["fonts"]:
        if font["familyName"] not in families and font["glyphCount"] > other:
            problems.append(f"{where}: {font['familyName']} (no CJK glyphs) drew {font['glyphCount']} glyphs, more "
                            f"than the {other} non-Chinese characters: Chinese drawn as boxes")
    return problems


def test_chinese_text_is_drawn_by_fonts_with_cjk_glyphs(chromium, server):
    """The Chinese chapter with the most Chinese, asked of Chromium over the DevTools protocol
    (``CSS.getPlatformFontsForNode``): every Chinese character of its title, a heading, a few
    paragraphs and an output is drawn by an installed font that has CJK glyphs (``fc-list :lang=zh``),
    none by a fallback such as DejaVu Sans, which would show boxes."""
    pytest.importorskip("tornado", reason="tornado (the DevTools websocket client) comes with jupyter (the [book] extra)")
    families = cjk_families()
    chapter = most_chinese_chapter()
    url = page_url(server, chapter, ZH)
    with devtools_browser(chromium) as browser_url:
        try:
            nodes = asyncio.run(asyncio.wait_for(platform_fonts(browser_url, url), timeout=60))
        except (OSError, RuntimeError, TimeoutError, asyncio.TimeoutError) as error:
            pytest.fail(f"DevTools on {url}: {type(error).__name__}: {error}")
    assert any(n["selector"] == "article p" for n in nodes), f"no paragraph with Chinese text on {url}"
    assert len(nodes) >= 3, f"only {len(nodes)} nodes with Chinese text on {url}"
    used = sorted({(f["familyName"], n["selector"]) for n in nodes for f in n["fonts"]})
    print(f"{ZH}/{chapter}: fonts drawing {len(nodes)} nodes: {used}")
    problems = [p for node in nodes for p in font_problems(node, families)]
    assert not problems, "\n".join(problems)
