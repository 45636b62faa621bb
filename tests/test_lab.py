"""The chapters as a learner meets them in JupyterLab (the ``lab`` extra: JupyterLab with
``jupyterlab-myst``), opened in headless Chromium.

Starts ``jupyter lab`` on 127.0.0.1 at a free port with a random token, serving a temporary copy
of two chapters (so nothing in ``notebooks/`` can be touched), opens each and asserts on the page
after its scripts ran: every ``{exercise}`` is drawn as an exercise box, no raw directive text
(```` ```{exercise} ````, ``:label:``, ``:class: dropdown``) is visible, and every solution is a
collapsed ``<details>``. Screenshots (and the DOM) go to ``_build/screenshots/lab-*.png`` (``.html``). The server is stopped
whatever happens. Skips, saying why, where Chromium or the ``lab`` extra is missing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import chromium as find_chromium

pytestmark = pytest.mark.browser

bs4 = pytest.importorskip("bs4", reason="beautifulsoup4 comes with jupyter-book (the [book] extra)")
pytest.importorskip("jupyterlab", reason="JupyterLab is missing: install the lab extra (pip install -e '.[lab]')")
pytest.importorskip("jupyterlab_myst", reason="jupyterlab-myst is missing: install the lab extra")

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "_build" / "screenshots"
CHAPTERS = ("02_self_attention", "05_encoder")  # one exercise per cell, and several in one cell
RAW = ("```{exercise}", "```{solution}", ":label:", ":class: dropdown")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _directives(nb: dict) -> tuple[int, int]:
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return len(re.findall(r"^```\{exercise\}", text, re.M)), len(re.findall(r"^```\{solution\}", text, re.M))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base URL, token, served folder) of a JupyterLab started for this test module."""
    chromium = find_chromium()
    home = tmp_path_factory.mktemp("lab")
    served = home / "notebooks"
    served.mkdir()
    for name in CHAPTERS:
        shutil.copy2(ROOT / "notebooks" / f"{name}.ipynb", served)
    # Render every cell (JupyterLab 4 only draws the cells in view by default), so the whole
    # chapter is in the DOM to check.
    settings = home / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    token, port = secrets.token_hex(16), _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws")}
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={served}", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],  # CI containers
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited {server.returncode}:\n{(home / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within 120 s:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield chromium, base, token
    finally:  # stop the server (and its kernels) whatever happened
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if server.poll() is not None:
                break
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        log.close()


def _chromium_run(chromium: str, args: list[str], timeout: float = 180) -> str:
    with tempfile.TemporaryDirectory(prefix="tformer-lab-chromium-") as profile:
        try:
            proc = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"chromium did not finish within {timeout} s: {args[-1]}")
    if proc.returncode != 0:
        pytest.fail(f"chromium exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc.stdout


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_jupyterlab_draws_exercise_boxes_and_keeps_solutions_folded(lab, chapter):
    chromium, base, token = lab
    nb = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text(encoding="utf-8"))
    exercises, solutions = _directives(nb)
    assert exercises >= 2 and solutions >= 2
    url = f"{base}/lab/tree/{chapter}.ipynb?token={token}&reset"
    budget = ["--virtual-time-budget=60000", "--window-size=1400,1800"]
    html = _chromium_run(chromium, [*budget, "--dump-dom", url])
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / f"lab-{chapter}.html").write_text(html, encoding="utf-8")  # to see what failed
    dom = bs4.BeautifulSoup(html, "html.parser")
    _chromium_run(chromium, [*budget, f"--screenshot={SHOTS / f'lab-{chapter}.png'}", url])

    notebook = dom.select_one(".jp-Notebook")
    assert notebook is not None, f"{chapter}: JupyterLab did not open the notebook (title {dom.title!r})"
    markdown = notebook.select(".jp-MarkdownCell")
    assert markdown, f"{chapter}: no markdown cells rendered"
    for hidden in notebook.select(".lm-mod-hidden"):  # a rendered cell keeps its editor, hidden
        hidden.decompose()
    shown = " ".join(cell.get_text(" ") for cell in markdown)
    leaked = [raw for raw in RAW if raw in shown]
    assert leaked == [], f"{chapter}: raw MyST directive text is visible: {leaked}"

    boxes = notebook.select(".myst-exercise")
    titles = [(box, box.select_one(".myst-exercise-title").get_text(" ").strip()) for box in boxes
              if box.select_one(".myst-exercise-title") is not None]
    drawn = [box for box, title in titles if title.startswith("Exercise")]
    folded = [box for box, title in titles if title.startswith("Solution")]
    assert len(drawn) == exercises, f"{chapter}: {len(drawn)} exercise boxes drawn, {exercises} in the notebook"
    assert len(folded) == solutions, f"{chapter}: {len(folded)} solutions drawn, {solutions} in the notebook"
    assert all(box.name == "details" and not box.has_attr("open") for box in folded), (
        f"{chapter}: a solution is not a collapsed <details>")
