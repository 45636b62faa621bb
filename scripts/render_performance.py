"""Turn the benchmark results (JSON) into the book's performance page and its plots.

    python scripts/render_performance.py [--results book/_static/bench/results.json]

writes ``book/performance.md`` and one PNG per benchmark that asks for a plot into
``book/_static/bench/``. Both are committed, so building the book runs nothing. The results come
from ``python -m tformer bench`` (``make bench`` runs both steps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tformer.benchmarks import BENCHMARKS, describe_machine  # noqa: E402

RESULTS = ROOT / "book" / "_static" / "bench" / "results.json"
PAGE = ROOT / "book" / "performance.md"

INTRO = """\
(performance)=
# Performance

Is the readable code of this course also fast? Each section below answers that for one part of
`tformer` by timing it **side by side** with a reference in the same run — PyTorch's own
implementation, Hugging Face `transformers`, or another path of `tformer` — alternating between
the two so that both see the same machine load. The figure that matters is therefore a **ratio**;
where a table also shows milliseconds, tokens per second or FLOP/s, those are absolute figures that
hold only for the machine the section names (the table below lists every machine used).

To measure your own machine, run `make bench` (it runs `python -m tformer bench` and then
`python scripts/render_performance.py`, which writes this page). `python -m tformer bench --only
attention` runs one benchmark; `--quick` runs tiny sizes in seconds, as a smoke test.

"""


def fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def plot(name: str, spec: dict, rows: list[dict], out_dir: Path) -> Path:
    """Draw ``spec`` ({kind, x, y, title, xlabel, ylabel, [labels, hline, logx]}) to ``<name>.png``."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    ys = spec["y"]
    labels = spec.get("labels") or [str(r.get(spec["x"])) for r in rows]
    if spec.get("kind", "bar") == "line":
        xs = [r[spec["x"]] for r in rows]
        for y in ys:
            ax.plot(xs, [r.get(y) for r in rows], marker="o", label=y)
        if spec.get("logx"):
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
    else:
        width = 0.8 / len(ys)
        for i, y in enumerate(ys):
            pos = [j + (i - (len(ys) - 1) / 2) * width for j in range(len(rows))]
            ax.bar(pos, [r.get(y) or 0 for r in rows], width=width, label=y)
        ax.set_xticks(range(len(rows)), labels, rotation=15 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center", fontsize=8)
    if spec.get("hline") is not None:
        ax.axhline(spec["hline"], color="grey", linestyle="--", linewidth=1)
    ax.set_title(spec.get("title", name), fontsize=10)
    ax.set_xlabel(spec.get("xlabel", spec["x"]))
    ax.set_ylabel(spec.get("ylabel", ", ".join(ys)))
    if len(ys) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{name}.png"
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def render(results: dict | None, out_dir: Path, page_dir: Path = PAGE.parent) -> str:
    parts = [INTRO]
    if not results:
        parts.append("No results yet: run `make bench` to measure this machine.\n")
        return "".join(parts)
    machine = results.get("machine", {})
    entries = results.get("benchmarks", {})
    machines: dict[str, dict] = {}  # one row per machine, naming the benchmarks measured on it
    for name in BENCHMARKS:
        if isinstance(entries.get(name), dict):
            m = entries[name].get("machine") or machine
            machines.setdefault(describe_machine(m), {"machine": m, "names": []})["names"].append(name)
    parts.append("## The machines\n\n" if len(machines) > 1 else "## The machine\n\n")
    parts.append(
        markdown_table([{
            "CPU": m.get("cpu"), "cores": m.get("usable_cores", m.get("cores")),
            "torch": m.get("torch"), "threads": m.get("torch_threads"),
            "GPU": m.get("gpu") or "none", "platform": m.get("platform"),
            "measured": m.get("date"), "benchmarks": ", ".join(row["names"]),
        } for row in machines.values() for m in [row["machine"]]] or [{"CPU": machine.get("cpu")}]) + "\n\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in BENCHMARKS:
        res = results.get("benchmarks", {}).get(name)
        if res is None:
            continue
        if res.get("status") == "skipped":
            parts.append(f"## {res.get('title', name)}\n\nNot measured on this machine: {fmt(res.get('skipped'))}.\n\n")
            continue
        if res.get("status") != "ok":
            parts.append(f"## `{name}`: not measured\n\nThis benchmark failed: `{fmt(res.get('error'))}`.\n\n")
            continue
        parts.append(f"## {res['title']}\n\n")
        when = f"measured {res['date']}" if res.get("date") else ""
        quick = " with `--quick` (tiny sizes: a smoke test, not a measurement)" if res.get("quick") else ""
        parts.append(f"**{fmt(res['summary'])}.**\n\n{fmt(res.get('hardware_note', ''))} ")
        parts.append(f"(`python -m tformer bench --only {name}`, {when}{quick}, {res.get('seconds', '?')} s.)\n\n")
        rows = res.get("table") or []
        if res.get("plot") and rows:
            png = plot(name, res["plot"], rows, out_dir)
            rel = Path(os.path.relpath(png, page_dir)).as_posix()
            parts.append(f"```{{figure}} {rel}\n:name: fig-perf-{name}\n:alt: {res['plot'].get('title', name)}\n\n"
                         f"{fmt(res['plot'].get('title', name))}; vertical axis: {fmt(res['plot'].get('ylabel', ''))}.\n```\n\n")
        if rows:
            parts.append(markdown_table(rows) + "\n\n")
    parts.append("_" + "; ".join(f"{', '.join(row['names'])}: {text}" for text, row in machines.items()) + "._\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON from python -m tformer bench")
    p.add_argument("--page", type=Path, default=PAGE, help="the Markdown page to write")
    args = p.parse_args(argv)
    results = None
    if args.results.exists():
        results = json.loads(args.results.read_text(encoding="utf-8"))
    else:
        print(f"{args.results} not found: writing a page that says how to measure", file=sys.stderr)
    text = render(results, args.results.parent, args.page.parent)
    tmp = args.page.with_name(args.page.name + ".tmp")  # atomic: the book never reads half a page
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, args.page)
    print(f"wrote {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
