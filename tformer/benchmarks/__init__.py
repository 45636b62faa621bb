"""Benchmarks behind the book's performance page: ``python -m tformer bench``.

Each benchmark is a module ``tformer.benchmarks.<module>`` with ``run(quick: bool = False) -> dict``
returning ``{"title", "summary", "hardware_note", "metrics", "table"}`` (JSON-serialisable). Every
figure in it is either a ratio of two things measured side by side in the same run, or an absolute
time labelled with the hardware it was measured on (the runner records that machine).

A benchmark that cannot run here because an optional package is missing returns its title and
summary with ``"skipped": "<reason, naming the pip command>"`` (and empty ``metrics`` and
``table``); the runner records it with ``status`` "skipped", and that is not a failure.

The runner imports each module only when it runs it, so one that is missing or raises is reported
as failed with the reason and the others still run. ``scripts/render_performance.py`` turns the
JSON into ``book/performance.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import inspect
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

# name -> module; the order is the order of the performance page.
BENCHMARKS: dict[str, str] = {
    "attention": "tformer.benchmarks.attention",
    "fused": "tformer.benchmarks.fused",
    "model": "tformer.benchmarks.model",
    "kv_cache": "tformer.benchmarks.kv_cache",
    "gpt": "tformer.benchmarks.gpt",
    "translation": "tformer.benchmarks.translation",
    "precision": "tformer.benchmarks.precision",
    "step": "tformer.benchmarks.step",
    "smollm2": "tformer.benchmarks.smollm2",
}

REQUIRED_KEYS = ("title", "summary", "metrics", "table")


def default_out(quick: bool = False, cwd: str | Path | None = None) -> Path:
    """Where ``bench`` writes without ``--out``, decided by the working directory ``cwd``
    (default: the current one), never by where the package is installed.

    In a course checkout (``cwd`` holds ``book/``): ``book/_static/bench/results.json``, the file
    the performance page is rendered from; quick runs go to ``_build/bench/results-quick.json`` so
    a smoke test never replaces those numbers. Anywhere else (an installed wheel, the course zip):
    ``tformer-bench/results.json`` (``results-quick.json`` for quick runs) under ``cwd``.
    """
    root = Path.cwd() if cwd is None else Path(cwd)
    if (root / "book").is_dir():
        if quick:
            return root / "_build" / "bench" / "results-quick.json"
        return root / "book" / "_static" / "bench" / "results.json"
    return root / "tformer-bench" / ("results-quick.json" if quick else "results.json")


# ---------------------------------------------------------------------------- the machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> dict:
    """What the numbers were measured on: platform, CPU model, cores, torch version and threads."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return info


def describe_machine(info: dict) -> str:
    """One line for tables: ``'Intel Xeon …, 2 cores, torch 2.x (2 threads)'``."""
    cores = info.get("usable_cores", info.get("cores"))
    text = f"{info.get('cpu', '?')}, {cores} cores, torch {info.get('torch', '?')} ({info.get('torch_threads', '?')} threads)"
    if info.get("gpu"):
        text += f", GPU {info['gpu']}"
    return text


# ---------------------------------------------------------------------------- timing helpers
def flops_per_token(model: torch.nn.Module, config, T: int) -> int:
    """Training FLOPs per token of a GPT (``config``: its GPTConfig), 6·N + 12·L·T·d (Kaplan et al.,
    2020; nanoGPT's ``estimate_mfu``): forward + backward through the N weights, plus the attention
    scores and their weighted sum."""
    n = sum(p.numel() for p in model.parameters())
    n -= config.block_size * config.d_model  # the position embedding is a lookup, not a product
    return 6 * n + 12 * config.num_layers * T * config.d_model


def time_pair(
    fn_a: Callable[[], object],
    fn_b: Callable[[], object],
    repeats: int,
    warmup: int = 1,
) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of ``fn_a`` and ``fn_b``, timed alternately (a, b, a, b, ...).

    Alternating means both see the same machine load, so their ratio is fair even on a busy
    machine where the absolute times are not; the minimum is the run least disturbed by other
    processes (the convention of :mod:`timeit`).
    """
    for _ in range(warmup):
        fn_a()
        fn_b()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn_a()
        t1 = time.perf_counter()
        fn_b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return min(ta), min(tb)


def hardware_note() -> str:
    """The sentence that labels an absolute time."""
    return f"Absolute times were measured on {describe_machine(machine_info())}."


def module_main(run: Callable[..., dict], description: str, quick_help: str,
                argv: Sequence[str] | None = None) -> None:
    """``python -m tformer.benchmarks.<name> [--quick] [--json]``: run one benchmark and print it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON")
    args = parser.parse_args(argv)
    print_result(run(quick=args.quick), as_json=args.json)


def print_result(result: dict, as_json: bool = False) -> None:
    """Print one benchmark's result for a reader running its module as a script (or as JSON)."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(result["title"])
    print(result["summary"])
    for row in result["table"]:
        print("  " + " | ".join(f"{k}: {v}" for k, v in row.items()))
    if result.get("hardware_note"):
        print(result["hardware_note"])


# ---------------------------------------------------------------------------- the runner
def _jsonable(value: object) -> object:
    """Round-trip through JSON so a bad result fails here, not when the file is written."""
    def default(o: object) -> object:
        if isinstance(o, torch.Tensor) and o.numel() == 1:
            return o.item()
        if hasattr(o, "item"):  # numpy scalars
            return o.item()
        raise TypeError(f"{type(o).__name__} is not JSON-serialisable")

    def clean(o: object) -> object:  # NaN/inf are not JSON
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    return clean(json.loads(json.dumps(value, default=default)))


def run_one(name: str, quick: bool = False, precision: str = "float32") -> dict:
    """Run benchmark ``name``; always returns a dict with ``status`` "ok", "skipped" (+ ``skipped``,
    the reason) or "failed" (+ ``error``). ``precision`` goes to the benchmarks whose ``run`` takes
    one (the training benchmarks ``gpt`` and ``translation``)."""
    module_name = BENCHMARKS[name]
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):
                return {
                    "status": "failed",
                    "error": f"module {module_name} does not exist (yet)",
                    "seconds": 0.0,
                }
            raise
        run = getattr(module, "run", None)
        if not callable(run):
            raise RuntimeError(f"{module_name} has no run(quick=False) function")
        takes = "precision" in inspect.signature(run).parameters
        result = run(quick=quick, **({"precision": precision} if takes else {}))
        if not isinstance(result, dict):
            raise TypeError(f"{module_name}.run() returned {type(result).__name__}, expected a dict")
        missing = [k for k in REQUIRED_KEYS if k not in result]
        if missing:
            raise ValueError(f"{module_name}.run() result lacks the keys {missing}")
        result = _jsonable(result)
    except Exception as e:  # noqa: BLE001 - one broken benchmark must not stop the others
        torch.set_num_threads(threads)
        last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
        where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
        return {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}{where}",
            "seconds": round(time.perf_counter() - t0, 2),
        }
    torch.set_num_threads(threads)  # a benchmark that changed it must not change the next one
    status = "skipped" if result.get("skipped") else "ok"
    return {**result, "status": status, "seconds": round(time.perf_counter() - t0, 2)}


def parse_only(text: str | None) -> list[str]:
    """``"attention,model"`` -> ``["attention", "model"]``; an unknown name raises ``ValueError``."""
    if text is None:
        return list(BENCHMARKS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--only needs at least one name; valid names: {', '.join(BENCHMARKS)}")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(
            f"unknown benchmark {', '.join(repr(n) for n in unknown)}; valid names: {', '.join(BENCHMARKS)}"
        )
    return names


def _load_previous(out: Path) -> dict:
    """Earlier results in ``out`` (so ``--only`` updates one entry and keeps the others), each
    labelled with the machine it was measured on: its own ``machine``, or the file's."""
    try:
        old = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = old.get("benchmarks") if isinstance(old, dict) else None
    if not isinstance(entries, dict):
        return {}
    file_machine = old.get("machine")
    return {name: {"machine": file_machine, **res} if isinstance(res, dict) else res
            for name, res in entries.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tformer bench",
        description="Run tformer's benchmarks and write their results as JSON.",
    )
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these ({', '.join(BENCHMARKS)})")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds in all (a smoke test)")
    p.add_argument(
        "--out", type=Path, default=None,
        help="JSON file to write (default, run from a course checkout: book/_static/bench/results.json, "
        "with --quick _build/bench/results-quick.json; run anywhere else: tformer-bench/results.json "
        "in the current directory)",
    )
    p.add_argument("--precision", choices=("float32", "bf16", "auto"), default="float32",
                   help="precision of the training benchmarks that take one (gpt, translation; see "
                   "tformer.runtime.resolve_precision); the 'precision' benchmark always measures "
                   "float32 and bf16 side by side (default: float32)")
    p.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 if every benchmark ran or was skipped, 1 if one failed,
    2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    try:
        names = parse_only(args.only)
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else default_out(args.quick)
    machine = machine_info()
    print(f"tformer bench on {describe_machine(machine)}{' (quick)' if args.quick else ''}", flush=True)
    results = _load_previous(out) if args.only else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        res = run_one(name, quick=args.quick, precision=args.precision)
        res["quick"] = args.quick
        res["date"] = machine_info()["date"]
        res["machine"] = machine
        results[name] = res
        if res["status"] == "ok":
            print(f"    ok in {res['seconds']:.1f} s: {res['summary']}", flush=True)
        elif res["status"] == "skipped":
            print(f"    skipped: {res['skipped']}", flush=True)
        else:
            failed.append(name)
            print(f"    FAILED after {res['seconds']:.1f} s: {res['error']}", flush=True)
        # written after every benchmark, so an interrupted run keeps what it measured
        ordered = {n: results[n] for n in BENCHMARKS if n in results}
        doc = {"machine": machine, "benchmarks": ordered}
        tmp = out.with_name(out.name + ".tmp")  # atomic: a reader never sees half a file
        tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, out)
    print(f"wrote {out}")
    if failed:
        print(f"{len(failed)} of {len(names)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
