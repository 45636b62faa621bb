"""The benchmark runner (`python -m tformer bench`) and the performance page renderer."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest

import tformer.benchmarks as bench
from tformer.benchmarks import gpt as gpt_bench
from tformer.benchmarks import kv_cache as kv_bench
from tformer.data.sources import tiny_shakespeare

ROOT = Path(__file__).resolve().parents[1]


def _fake_module(name: str, run) -> types.ModuleType:
    module = types.ModuleType(name)
    module.run = run
    return module


@pytest.fixture
def fake_benchmarks(monkeypatch):
    """Four fake benchmarks: one that works, one that raises, one missing, one returning junk."""
    calls = []

    def good(quick: bool = False) -> dict:
        calls.append(("good", quick))
        return {
            "title": "Good", "summary": "ratio 1.50", "hardware_note": "absolute on X",
            "metrics": {"ratio": 1.5, "nan": float("nan")},
            "table": [{"T": 8, "ratio": 1.5}, {"T": 16, "ratio": 2.0}],
            "plot": {"kind": "line", "x": "T", "y": ["ratio"], "hline": 1.0, "title": "Good plot",
                     "xlabel": "T", "ylabel": "ratio"},
        }

    def bad(quick: bool = False) -> dict:
        calls.append(("bad", quick))
        raise RuntimeError("the kernel exploded")

    def junk(quick: bool = False) -> list:
        calls.append(("junk", quick))
        return [1, 2, 3]

    monkeypatch.setitem(sys.modules, "fakebench_good", _fake_module("fakebench_good", good))
    monkeypatch.setitem(sys.modules, "fakebench_bad", _fake_module("fakebench_bad", bad))
    monkeypatch.setitem(sys.modules, "fakebench_junk", _fake_module("fakebench_junk", junk))
    monkeypatch.setattr(bench, "BENCHMARKS", {
        "good": "fakebench_good",
        "bad": "fakebench_bad",
        "missing": "fakebench_missing_no_such_module",
        "junk": "fakebench_junk",
    })
    return calls


def test_unknown_only_name_exits_2_and_lists_valid_names(capsys):
    assert bench.main(["--only", "attention,nope", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err
    for name in ("attention", "fused", "model", "kv_cache", "gpt", "translation"):
        assert name in err


def test_empty_only_is_rejected(capsys):
    assert bench.main(["--only", ",", "--quick"]) == 2
    assert "valid names" in capsys.readouterr().err


def test_failed_benchmarks_are_reported_and_the_rest_still_run(fake_benchmarks, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--out", str(out)]) == 1
    # every benchmark was attempted, in order, with quick=True passed through
    assert fake_benchmarks == [("good", True), ("bad", True), ("junk", True)]
    doc = json.loads(out.read_text())
    res = doc["benchmarks"]
    assert list(res) == ["good", "bad", "missing", "junk"]
    assert res["good"]["status"] == "ok" and res["good"]["metrics"]["ratio"] == 1.5
    assert res["good"]["metrics"]["nan"] is None  # NaN is not JSON: written as null
    assert res["bad"]["status"] == "failed" and "RuntimeError: the kernel exploded" in res["bad"]["error"]
    assert "does not exist" in res["missing"]["error"]
    assert "expected a dict" in res["junk"]["error"]
    printed = capsys.readouterr()
    assert "FAILED" in printed.out and "bad, missing, junk" in printed.err


def test_results_record_the_machine(fake_benchmarks, tmp_path):
    out = tmp_path / "r.json"
    bench.main(["--only", "good", "--out", str(out)])
    machine = json.loads(out.read_text())["machine"]
    for key in ("platform", "cpu", "cores", "torch", "torch_threads", "date"):
        assert machine[key] not in (None, ""), key
    assert machine["cores"] >= 1 and machine["torch_threads"] >= 1


def test_only_updates_one_entry_and_keeps_the_others(fake_benchmarks, tmp_path):
    out = tmp_path / "r.json"
    assert bench.main(["--only", "good,bad", "--out", str(out)]) == 1
    assert bench.main(["--only", "good", "--out", str(out)]) == 0  # all selected ran: exit 0
    res = json.loads(out.read_text())["benchmarks"]
    assert set(res) == {"good", "bad"} and res["good"]["status"] == "ok"


def test_quick_run_does_not_overwrite_the_committed_results():
    assert bench.default_out(quick=False).parts[-3:] == ("_static", "bench", "results.json")
    assert "_build" in bench.default_out(quick=True).parts


def test_command_line_reports_unknown_name():
    if importlib.util.find_spec("tformer.__main__") is None:
        pytest.skip("tformer/__main__.py (the `python -m tformer` CLI) does not exist yet")
    proc = subprocess.run(
        [sys.executable, "-m", "tformer", "bench", "--only", "nope"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    assert "valid names" in proc.stderr and "attention" in proc.stderr


@pytest.mark.parametrize("name", ["attention", "fused", "model"])
def test_quick_benchmark_follows_the_result_contract(name):
    res = bench.run_one(name, quick=True)
    assert res["status"] == "ok", res.get("error")
    assert res["title"] and res["summary"] and "cores" in res["hardware_note"]
    assert res["table"] and all(v is not None and v > 0 for v in res["metrics"].values())
    json.dumps(res)


def _load_renderer():
    spec = importlib.util.spec_from_file_location("render_performance", ROOT / "scripts" / "render_performance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_performance_page_shows_results_failures_and_plots(fake_benchmarks, tmp_path):
    out = tmp_path / "bench" / "results.json"
    bench.main(["--quick", "--out", str(out)])
    page = tmp_path / "performance.md"
    assert _load_renderer().main(["--results", str(out), "--page", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("(performance)=\n# Performance")
    assert "## Good" in text and "**ratio 1.50.**" in text and "| T | ratio |" in text
    assert "`bad`: not measured" in text and "the kernel exploded" in text
    assert "```{figure} bench/good.png" in text
    png = tmp_path / "bench" / "good.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_performance_page_without_results_says_how_to_measure(tmp_path):
    page = tmp_path / "performance.md"
    assert _load_renderer().main(["--results", str(tmp_path / "none.json"), "--page", str(page)]) == 0
    assert "make bench" in page.read_text()


def test_a_benchmark_that_changes_threads_does_not_change_the_next(monkeypatch):
    import torch

    before = torch.get_num_threads()

    def greedy(quick: bool = False) -> dict:
        torch.set_num_threads(1)
        return {"title": "t", "summary": "s", "metrics": {}, "table": []}

    monkeypatch.setitem(sys.modules, "fakebench_threads", _fake_module("fakebench_threads", greedy))
    monkeypatch.setattr(bench, "BENCHMARKS", {"threads": "fakebench_threads"})
    assert bench.run_one("threads")["status"] == "ok"
    assert torch.get_num_threads() == before


def test_a_missing_dependency_of_a_benchmark_is_named(monkeypatch):
    module = types.ModuleType("fakebench_dep")
    module.__dict__["run"] = lambda quick=False: __import__("no_such_dependency_xyz")
    monkeypatch.setitem(sys.modules, "fakebench_dep", module)
    monkeypatch.setattr(bench, "BENCHMARKS", {"dep": "fakebench_dep"})
    res = bench.run_one("dep")
    assert res["status"] == "failed" and "no_such_dependency_xyz" in res["error"]


def test_benchmark_reads_the_shipped_tiny_shakespeare_when_no_data_file_is_given(monkeypatch):
    text = tiny_shakespeare()
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    calls = []

    def small_shakespeare():  # the real text is 1 MB; a slice keeps the quick run quick
        calls.append(True)
        return text[:3000]

    monkeypatch.setattr(gpt_bench, "tiny_shakespeare", small_shakespeare)
    result = gpt_bench.run(quick=True)
    assert calls == [True]
    assert result["metrics"]["iterations"] == 20
    assert math.isfinite(result["metrics"]["val_loss"])


def test_benchmark_runs_quick_on_a_small_data_file_and_names_a_missing_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="no text file at .*none.txt"):
        gpt_bench.run(quick=True, data=tmp_path / "none.txt")
    path = tmp_path / "t.txt"
    path.write_text("to be or not to be, that is the question.\n" * 60, encoding="utf-8")
    result = gpt_bench.run(quick=True, data=path)
    json.dumps(result)
    assert result["metrics"]["iterations"] == 20
    assert math.isfinite(result["metrics"]["val_loss"])


def test_kv_cache_benchmark_quick_run_reports_identical_tokens():
    result = kv_bench.run(quick=True)
    json.dumps(result)
    assert result["metrics"]["identical_tokens"] is True
    assert result["metrics"]["new_tokens"] == 32 and result["metrics"]["speedup"] > 0
