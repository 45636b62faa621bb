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
import torch

import tformer.benchmarks as bench
from tformer.benchmarks import gpt as gpt_bench
from tformer.benchmarks import kv_cache as kv_bench
from tformer.benchmarks import smollm2 as smollm2_bench
from tformer.data.sources import tiny_shakespeare
from tformer.nn.gpt import GPT, GPTConfig

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
    for name in ("attention", "fused", "model", "kv_cache", "gpt", "translation", "smollm2"):
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


def test_entries_from_another_machine_are_kept_labelled_with_that_machine(fake_benchmarks, tmp_path):
    out = tmp_path / "bench" / "results.json"
    out.parent.mkdir()
    other = {"cpu": "Other CPU 9000", "cores": 64, "usable_cores": 64, "torch": "0.0", "torch_threads": 64,
             "date": "2000-01-01 00:00 UTC"}
    old_entry = {"title": "Old", "summary": "ratio 9", "metrics": {}, "table": [], "status": "ok"}
    out.write_text(json.dumps({"machine": other, "benchmarks": {"bad": old_entry}}))
    assert bench.main(["--only", "good", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmarks"]["bad"]["machine"] == other and doc["benchmarks"]["bad"]["summary"] == "ratio 9"
    assert doc["benchmarks"]["good"]["machine"] == doc["machine"] != other
    page = tmp_path / "performance.md"
    assert _load_renderer().main(["--results", str(out), "--page", str(page)]) == 0
    text = page.read_text()
    assert "## The machines" in text and "| Other CPU 9000 | 64 |" in text and "| good |" in text


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
    m = result["metrics"]
    assert m["iterations"] == 20
    assert math.isfinite(m["val_loss"])
    # the torch.nn twin started from the same weights and saw the same batches: the same loss
    assert m["reference_val_loss"] == pytest.approx(m["val_loss"], abs=1e-3)
    assert m["speed_ratio_vs_reference"] == pytest.approx(m["reference_ms_per_iter"] / m["ms_per_iter"])
    # utilisation = FLOPs per iteration / seconds per iteration / measured matmul peak
    assert m["mfu"] == pytest.approx(m["flops_per_iter"] / (m["ms_per_iter"] / 1000) / (m["matmul_peak_gflops"] * 1e9))
    assert 0 < m["mfu"] < 1 and 0 < m["reference_mfu"] < 1


def _small_gpt(bias: bool) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=16, num_layers=2, num_heads=2, d_model=8, bias=bias))


@pytest.mark.parametrize("bias", [False, True])
def test_torch_nn_reference_gpt_copies_the_weights_and_gives_the_same_logits_and_gradients(bias):
    ours = _small_gpt(bias)
    ref = gpt_bench.TorchGPT.from_gpt(ours)
    assert ref.lm_head.weight is ref.tok_emb.weight  # the head stays tied after the copy
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    x, y = torch.randint(0, 11, (3, 16)), torch.randint(0, 11, (3, 16))
    logits, loss = ours(x, y)
    ref_logits, ref_loss = ref(x, y)
    torch.testing.assert_close(ref_logits, logits)
    loss.backward()
    ref_loss.backward()
    torch.testing.assert_close(ref.tok_emb.weight.grad, ours.tok_emb.weight.grad)
    torch.testing.assert_close(ref.blocks.layers[0].linear1.weight.grad, ours.blocks[0].ffn.linear1.weight.grad)
    # causal: a change in the last token leaves every earlier position's logits unchanged
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % 11
    torch.testing.assert_close(ref(x2)[0][:, :-1], ref_logits[:, :-1])


def test_reference_refuses_a_gpt_it_does_not_mirror():
    gpt = GPT(GPTConfig(vocab_size=11, block_size=16, num_layers=1, num_heads=2, d_model=8, positions="sinusoidal"))
    with pytest.raises(ValueError, match="learned positions"):
        gpt_bench.TorchGPT.from_gpt(gpt)


def test_training_flops_per_token_follow_kaplan_6n_plus_attention():
    gpt = _small_gpt(bias=False)
    V, T, L, d = 11, 16, 2, 8
    # without biases: token embedding (tied head), per layer 4·d² attention + 2·d·4d FFN + 2 LayerNorm
    # gains, the final LayerNorm gain; the position embedding is a lookup and is left out
    n = V * d + L * (4 * d * d + 8 * d * d + 2 * d) + d
    assert gpt_bench.flops_per_token(gpt, gpt.config, T) == 6 * n + 12 * L * T * d


def test_matmul_peak_is_two_n_cubed_over_the_best_time(monkeypatch):
    ticks = iter([0.0, 0.5, 1.0, 1.25])  # two timed products: 0.5 s and 0.25 s
    monkeypatch.setattr(gpt_bench.time, "perf_counter", lambda: next(ticks))
    assert gpt_bench.matmul_peak_flops(n=64, repeats=2) == 2 * 64**3 / 0.25


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


def test_smollm2_benchmark_is_skipped_with_the_install_command_when_a_package_is_missing(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setattr(smollm2_bench, "NEEDS", {**smollm2_bench.NEEDS, "no_such_pkg_xyz": "pip install no-such-pkg"})
    out = tmp_path / "r.json"
    assert bench.main(["--only", "smollm2", "--quick", "--out", str(out)]) == 0  # skipped is not failed
    assert "skipped: " in capsys.readouterr().out
    res = json.loads(out.read_text())["benchmarks"]["smollm2"]
    assert res["status"] == "skipped" and "`pip install no-such-pkg`" in res["skipped"]
    page = tmp_path / "performance.md"
    assert _load_renderer().main(["--results", str(out), "--page", str(page)]) == 0
    assert "Not measured on this machine: needs packages" in page.read_text()


@pytest.mark.slow
def test_smollm2_quick_benchmark_generates_the_same_tokens_as_transformers():
    if smollm2_bench.missing_packages():
        pytest.skip(f"needs {smollm2_bench.missing_packages()}")
    res = bench.run_one("smollm2", quick=True)
    assert res["status"] == "ok", res.get("error")
    m = res["metrics"]
    assert m["identical_tokens"] is True and m["new_tokens"] == 8
    assert m["tokens_per_s_tformer"] > 0 and m["ratio"] == pytest.approx(
        m["tokens_per_s_tformer"] / m["tokens_per_s_transformers"])
    json.dumps(res)


# ----------------------------------------------------------------------------- mixed precision


def test_translation_flops_count_six_per_weight_per_token_plus_attention():
    from tformer.benchmarks.precision import translation_flops
    from tformer.data.batches import Batch
    from tformer.nn.transformer import Transformer, TransformerConfig

    d, f, V = 8, 16, 11
    model = Transformer(TransformerConfig(13, V, d_model=d, num_heads=2, num_encoder_layers=1,
                                          num_decoder_layers=1, dim_feedforward=f, max_len=16))
    # by hand: an encoder layer holds 4 projections (d² + d each), the FFN (2·d·f + f + d) and two
    # LayerNorms (2·d each) = 600 weights; a decoder layer one more attention and LayerNorm = 904
    src = torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0]])  # 5 real source tokens, S = 4
    tgt_in = torch.tensor([[1, 4, 5], [1, 4, 0]])  # T = 3
    tgt_out = torch.tensor([[4, 5, 2], [4, 2, 0]])  # 5 target tokens
    batch = Batch(src, tgt_in, tgt_out, src[:, None, None, :] != 0, None, 5, torch.arange(2))
    linear = 6 * (600 * 5 + (904 + d * V) * 5)
    attention = 12 * d * (1 * 4 * 5 + 1 * (3 + 4) * 5)
    assert translation_flops(model, batch) == linear + attention


def test_precision_race_reports_the_median_ratio_of_alternating_chunks():
    from types import SimpleNamespace

    from tformer.benchmarks.precision import _summarise

    def run(chunks):
        return SimpleNamespace(chunks=chunks, state=SimpleNamespace(history={"step_loss": [2.0, 1.0]}))

    # the first chunk of each is a warm-up; per round float32 / bf16 = 2, 3, 1 → median 2
    runs = {"float32": run([9.0, 0.2, 0.3, 0.1]), "bf16": run([9.0, 0.1, 0.1, 0.1])}
    peaks = {"float32": (1e9, 512), "bf16": (4e9, 512)}
    metrics, rows = _summarise("toy", runs, 1e8, peaks)
    assert metrics["speedup"] == 2.0
    assert metrics["float32_ms_per_step"] == pytest.approx(200.0)
    assert metrics["float32_util_f32"] == pytest.approx(0.5) and metrics["bf16_util_bf16"] == pytest.approx(0.25)
    assert rows[1]["of the float32 peak"] == "100.0%" and rows[1]["loss, last 20 steps"] == 1.5


def test_matmul_peaks_time_both_dtypes():
    from tformer.benchmarks.precision import matmul_peaks

    peaks = matmul_peaks((32, 64), 1)
    assert set(peaks) == {"float32", "bf16"}
    assert all(rate > 0 and n in (32, 64) for rate, n in peaks.values())


def test_precision_reaches_the_benchmarks_that_take_one(monkeypatch, tmp_path):
    seen = []

    def trains(quick: bool = False, precision: str = "float32") -> dict:
        seen.append(("trains", precision))
        return {"title": "t", "summary": "s", "metrics": {}, "table": []}

    def times(quick: bool = False) -> dict:
        seen.append(("times", None))
        return {"title": "t", "summary": "s", "metrics": {}, "table": []}

    monkeypatch.setitem(sys.modules, "fakebench_trains", _fake_module("fakebench_trains", trains))
    monkeypatch.setitem(sys.modules, "fakebench_times", _fake_module("fakebench_times", times))
    monkeypatch.setattr(bench, "BENCHMARKS", {"trains": "fakebench_trains", "times": "fakebench_times"})
    assert bench.main(["--precision", "bf16", "--out", str(tmp_path / "r.json")]) == 0
    assert bench.main(["--out", str(tmp_path / "r.json")]) == 0
    assert seen == [("trains", "bf16"), ("times", None), ("trains", "float32"), ("times", None)]
    with pytest.raises(SystemExit):
        bench.main(["--precision", "fp16"])
