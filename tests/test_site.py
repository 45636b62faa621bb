"""The publishing workflow (.github/workflows/pages.yml) builds the book as CI does and deploys it."""

from __future__ import annotations

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
    assert runs == ["make book"]
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
