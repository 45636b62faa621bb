"""Re-execute every chapter notebook in place and report how long each took.

    python scripts/execute_notebooks.py [--only 01_why_not_rnn[,02_self_attention]]

Runs each ``notebooks/*.ipynb`` top to bottom with nbclient (kernel ``python3``, working directory
``notebooks/``, at most 900 s per cell) and writes it back with its fresh outputs, so the committed
outputs always come from the committed code. Each notebook's wall time goes to
``book/_static/execution_times.json`` with a description of the machine, and ``book/execution.md``
is rendered from that file. A notebook that fails is not written back; the others still run, and
the exit code is 1. ``make notebooks`` runs this script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tformer.benchmarks import describe_machine, machine_info  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
TIMES = ROOT / "book" / "_static" / "execution_times.json"
PAGE = ROOT / "book" / "execution.md"
CELL_TIMEOUT = 900


def notebook_title(nb: dict, fallback: str) -> str:
    """The notebook's ``# `` title (its first markdown heading)."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def execute(path: Path) -> tuple[float, str | None]:
    """Run ``path`` in place; returns (seconds, error or None). Written back only on success."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", record_timing=False,
        coalesce_streams=True,  # one stdout block per cell, as Jupyter shows it
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    for cell in nb.cells:  # drop old timestamps so a re-run only changes what the code prints
        cell.metadata.pop("execution", None)
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        return time.perf_counter() - t0, (lines[-1] if lines else "a cell raised")[:300]
    except Exception as e:  # noqa: BLE001 - a timeout or a dead kernel: report it, go on
        return time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:300]
    seconds = time.perf_counter() - t0
    nbformat.write(nb, path)
    return seconds, None


def load_times() -> dict:
    try:
        return json.loads(TIMES.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"notebooks": {}}


# Runs that happen once before the chapters (make targets), described under the table.
OUTSIDE_THE_CHAPTERS = [
    "## Runs outside the chapters",
    "",
    "Two trainings are too long to repeat inside the notebooks, so they run once, before them, as",
    "make targets, and `make` skips each while its output exists. CI (`.ci/run`) runs",
    "`make rnn-vs-transformer` before `make test` (about 13 minutes); it does not run the 15-minute",
    "`make tatoeba-model`, so in CI chapters 8 and 9 take their stand-in path, whose cells are",
    "nbval-ignored, while the committed outputs are those of the full run.",
    "",
    "- `make tatoeba-model` (`scripts/train_tatoeba_model.py`, the same run as",
    "  `python -m tformer train --data tatoeba`): the Tatoeba translator of chapters 8 and 9, trained",
    "  for its default budget of **15 minutes** of wall-clock time, written to `runs/tatoeba-model`",
    "  (git-ignored) with a copy of the weights after every epoch. Without it the two chapters train",
    "  a 150-step stand-in and say so. `make tatoeba-model TATOEBA_MINUTES=4` trains a shorter run of",
    "  the same recipe (its scores are lower).",
    "- `make rnn-vs-transformer` (`scripts/train_rnn_vs_transformer.py`): the GRU translators and",
    "  the Transformer of chapter 9b, each trained for the same CPU budget, results in",
    "  `_build/rnn_vs_transformer/results.json`. Without it chapter 9b runs a tiny labelled version.",
    "",
]


def render(times: dict) -> str:
    """``book/execution.md``: one row per notebook that exists, in chapter order."""
    lines = [
        "(execution)=",
        "# Execution times",
        "",
        "How long each chapter takes to run from top to bottom, as measured the last time",
        "`make notebooks` (`python scripts/execute_notebooks.py`) re-executed it in place. These are",
        "absolute wall-clock times, so they hold only for the machine named in the third column;",
        "on another machine expect other numbers. No chapter needs a GPU.",
        "",
        "| chapter | seconds | machine | executed |",
        "|---|---:|---|---|",
    ]
    total = 0.0
    for name, rec in sorted(times.get("notebooks", {}).items()):
        path = NOTEBOOKS / f"{name}.ipynb"
        if not path.exists():
            continue
        chapter = f"{{doc}}`{rec.get('title', name)} <../notebooks/{name}>`"
        if rec.get("status") == "ok":
            seconds = f"{rec['seconds']:.1f}"
            total += rec["seconds"]
        else:
            seconds = f"failed: {rec.get('error', '?')}".replace("|", "\\|")
        lines.append(f"| {chapter} | {seconds} | {rec.get('machine', '?')} | {rec.get('date', '?')} |")
    if len(lines) == 10:
        lines[-2:] = ["No timings yet: run `make notebooks` to execute the chapters and time them."]
    else:
        lines += ["", f"All chapters together: {total:.0f} s."]
    lines += ["", *OUTSIDE_THE_CHAPTERS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Re-execute the chapter notebooks in place and time them.")
    p.add_argument("--only", metavar="NAME[,NAME]", help="notebook names without .ipynb, e.g. 01_why_not_rnn")
    p.add_argument("--render-only", action="store_true", help="only rewrite book/execution.md")
    args = p.parse_args(argv)
    available = sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb"))
    names = available
    if args.only:
        names = [n.strip().removesuffix(".ipynb") for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in available]
        if unknown or not names:
            print(f"unknown notebook {unknown}; available: {', '.join(available)}", file=sys.stderr)
            return 2
    times = load_times()
    failed = []
    if not args.render_only:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download during a run
        # A kernel started with MPLBACKEND=Agg (as `make` exports for scripts) draws no inline
        # figures: the notebooks would lose every plot. ipykernel picks the inline backend itself.
        os.environ.pop("MPLBACKEND", None)
        info = machine_info()
        machine = describe_machine(info)
        times["machine"] = info
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] {name} ...", flush=True)
            path = NOTEBOOKS / f"{name}.ipynb"
            seconds, error = execute(path)
            title = notebook_title(json.loads(path.read_text(encoding="utf-8")), name)
            rec = {"title": title, "seconds": round(seconds, 1), "machine": machine,
                   "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   "status": "ok" if error is None else "failed"}
            if error is None:
                print(f"    ok in {seconds:.1f} s", flush=True)
            else:
                rec["error"] = error
                failed.append(name)
                print(f"    FAILED after {seconds:.1f} s (not written back): {error}", flush=True)
            times.setdefault("notebooks", {})[name] = rec
            TIMES.parent.mkdir(parents=True, exist_ok=True)
            TIMES.write_text(json.dumps(times, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    PAGE.write_text(render(times), encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}" + ("" if args.render_only else f" and {TIMES.relative_to(ROOT)}"))
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
