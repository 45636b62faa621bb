"""The publishing workflow (.github/workflows/pages.yml) builds the book as CI does and deploys it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "pages.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def _uses(job: dict) -> list[str]:
    return [step["uses"].split("@")[0] for step in job["steps"] if "uses" in step]


def test_workflow_runs_on_push_to_main_and_by_hand(workflow):
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as True
    assert "main" in triggers["push"]["branches"]
    assert "workflow_dispatch" in triggers


def test_workflow_has_the_permissions_pages_needs(workflow):
    assert workflow["permissions"]["pages"] == "write"
    assert workflow["permissions"]["id-token"] == "write"


def test_build_job_runs_make_book_and_uploads_the_html(workflow):
    build = workflow["jobs"]["build"]
    assert _uses(build) == [
        "actions/checkout", "actions/setup-python", "actions/configure-pages",
        "actions/upload-pages-artifact",
    ]
    runs = [step["run"].strip() for step in build["steps"] if "run" in step]
    # The only steps: torch's CPU wheel into .venv (so pip never pulls the CUDA build), then make book.
    assert runs[-1] == "make book" and len(runs) == 2
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs[0]
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    # the artifact must come after the build step
    names = [s.get("run") or s.get("uses") for s in build["steps"]]
    assert names.index("make book") < names.index(upload["uses"])


def test_deploy_job_deploys_the_artifact_after_the_build(workflow):
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert _uses(deploy) == ["actions/deploy-pages"]
    assert deploy["environment"]["name"] == "github-pages"
    assert "steps.deployment.outputs.page_url" in deploy["environment"]["url"]


def test_make_book_target_exists_and_builds_html_with_warnings_as_errors():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "\nbook:" in makefile
    assert "jupyter-book build . --warningiserror" in makefile


# ---------------------------------------------------------------------------- scripts/execute_notebooks.py
def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def executor(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    module = _load_script("execute_notebooks")
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    good = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A tiny chapter\n\nText."),
        nbformat.v4.new_code_cell("import os\nprint(os.path.basename(os.getcwd()), 6 * 7)"),
    ])
    good.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    bad = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")])
    bad.metadata["kernelspec"] = good.metadata["kernelspec"]
    nbformat.write(good, nb_dir / "01_tiny.ipynb")
    nbformat.write(bad, nb_dir / "02_broken.ipynb")
    monkeypatch.setattr(module, "NOTEBOOKS", nb_dir)
    monkeypatch.setattr(module, "TIMES", tmp_path / "book" / "_static" / "execution_times.json")
    monkeypatch.setattr(module, "PAGE", tmp_path / "book" / "execution.md")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    (tmp_path / "book").mkdir()
    return module


def test_execute_notebooks_runs_in_place_in_the_notebooks_folder_and_records_times(executor, tmp_path):
    assert executor.main(["--only", "01_tiny"]) == 0
    nb = json.loads((tmp_path / "notebooks" / "01_tiny.ipynb").read_text())
    assert "".join(nb["cells"][1]["outputs"][0]["text"]) == "notebooks 42\n"  # cwd = notebooks/
    times = json.loads(executor.TIMES.read_text())
    rec = times["notebooks"]["01_tiny"]
    assert rec["status"] == "ok" and rec["seconds"] > 0 and rec["title"] == "A tiny chapter"
    assert "cores" in rec["machine"] and times["machine"]["torch"]
    page = executor.PAGE.read_text()
    assert "{doc}`A tiny chapter <../notebooks/01_tiny>`" in page and "| chapter | seconds |" in page


def test_execute_notebooks_reports_a_failing_notebook_and_leaves_it_unchanged(executor, tmp_path):
    before = (tmp_path / "notebooks" / "02_broken.ipynb").read_text()
    assert executor.main([]) == 1  # both run; one fails
    assert (tmp_path / "notebooks" / "02_broken.ipynb").read_text() == before
    times = json.loads(executor.TIMES.read_text())["notebooks"]
    assert times["01_tiny"]["status"] == "ok"
    assert times["02_broken"]["status"] == "failed" and "broken on purpose" in times["02_broken"]["error"]
    assert "failed: " in executor.PAGE.read_text()


def test_execute_notebooks_rejects_an_unknown_name(executor, capsys):
    assert executor.main(["--only", "99_nope"]) == 2
    assert "01_tiny" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the site names its source
def _course_zip_extension():
    import importlib.util

    spec = importlib.util.spec_from_file_location("course_zip", ROOT / "book" / "_ext" / "course_zip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_step_passes_the_repository_from_github(workflow):
    build = workflow["jobs"]["build"]
    step = next(s for s in build["steps"] if s.get("run", "").strip() == "make book")
    assert step["env"]["GITHUB_REPOSITORY"] == "${{ github.repository }}"
    assert step["env"]["GITHUB_SERVER_URL"] == "${{ github.server_url }}"


def test_repository_url_comes_from_github_repository_and_is_absent_locally():
    ext = _course_zip_extension()
    assert ext.repository_url({}) is None
    assert ext.repository_url({"GITHUB_REPOSITORY": "ada/tformer"}) == "https://github.com/ada/tformer"
    assert ext.repository_url({"GITHUB_REPOSITORY": "ada/tformer",
                               "GITHUB_SERVER_URL": "https://git.example.org/"}) == "https://git.example.org/ada/tformer"
    with pytest.raises(ValueError, match="owner/name"):
        ext.repository_url({"GITHUB_REPOSITORY": "no slash here"})


def test_config_loads_the_course_zip_extension():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["sphinx"]["local_extensions"]["course_zip"] == "book/_ext"


def test_built_site_offers_the_course_zip_on_the_setup_page_and_every_chapter():
    html = ROOT / "_build" / "html"
    if not (html / "index.html").exists():
        pytest.skip("the book is not built (make book)")
    assert (html / "tformer-course.zip").is_file()
    setup = (html / "book" / "setup.html").read_text(encoding="utf-8")
    assert 'href="../tformer-course.zip"' in setup
    chapters = sorted((html / "notebooks").glob("[0-9]*.html"))
    assert chapters
    for page in chapters:
        text = page.read_text(encoding="utf-8")
        assert 'href="../tformer-course.zip"' in text, f"{page.name} has no course .zip download"
        # right after the page's own .ipynb in the download menu
        assert text.index(f"_sources/notebooks/{page.stem}.ipynb") < text.index("tformer-course.zip")
