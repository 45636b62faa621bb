"""Wall-clock runs of the Tatoeba recipe, kept with their validation translations (chapter 8).

Each run is what a reader's ``python -m tformer train --data tatoeba`` does: the recipe's
defaults, 15 minutes of wall-clock time on this machine's threads, with at most a few settings
changed (``--set KEY=VALUE``, as in ``scripts/train_tatoeba_model.py``). After training, the
validation split is translated the way ``evaluate`` would (the averaged weights, the beam and the
length penalty stored in the checkpoint) and the run is appended to
``book/_static/tatoeba_runs.json.gz`` with its settings, its speed, its losses and every
translation. Chapter 8 compares the runs from that file with a paired bootstrap
(:func:`tformer.metrics.paired_bootstrap_bleu`), so each decision about the recipe carries an
interval computed in the book, on the validation split only; the test split stays for the final
number.

    python scripts/tatoeba_runs.py run NAME [--set cooldown=0.2 ...]   # train (15 min), then record
    python scripts/tatoeba_runs.py add NAME DIR        # record a run trained by train_tatoeba_model.py
    python scripts/tatoeba_runs.py add NAME DIR --epochs 19 20 21   # ... as if it had stopped there
    python scripts/tatoeba_runs.py compare NAME_A NAME_B

Timed runs need a quiet machine: a second busy process slows a run several-fold, and a slower run
takes fewer steps in its 15 minutes. Each record keeps the tokens per second of every epoch, so a
reader can see how fast the machine was.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import sacrebleu

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tatoeba_recipes  # noqa: E402  (the scripts beside this one)
import train_tatoeba_model  # noqa: E402

from tformer.metrics import paired_bootstrap_bleu  # noqa: E402
from tformer.recipes.translation import Translator, decoding_defaults, load_data  # noqa: E402
from tformer.training.checkpoint import read_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "book" / "_static" / "tatoeba_runs.json.gz"


def read_runs(path: Path | None = None) -> list[dict]:
    """Every recorded run, in the order they were added (from ``path``, default :data:`LOG`)."""
    path = path or LOG
    if not path.exists():
        return []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _write(runs: list[dict], path: Path | None = None) -> None:
    path = path or LOG
    tmp = path.with_name(path.name + ".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as raw:  # mtime 0: the same runs give the same bytes
        raw.write((json.dumps(runs, ensure_ascii=False, indent=0) + "\n").encode("utf-8"))
    os.replace(tmp, path)


def record(name: str, directory: Path, changes: list[str], epochs: list[int] | None = None) -> dict:
    """Translate the validation split with the checkpoint in ``directory`` and log the run.

    With ``epochs`` (say 19 20 21) the run is recorded as if it had stopped after the last of them:
    the mean of those epochs' weights (``directory/epochs/epoch<N>.safetensors``) is what the recipe
    would have translated with, which compares two runs at the same number of epochs when one
    machine was slower than the other."""
    valid = load_data("tatoeba")["valid"]
    translator = Translator.from_checkpoint(directory, device="cpu")
    beam, alpha = decoding_defaults(directory)
    train = read_json(directory / "config.json")["train"]
    history = read_json(directory / "state.json")["train"]["history"]
    minutes = read_json(directory / "epochs" / "minutes.json")
    steps, epochs_done, train_minutes, average = (minutes["steps"], minutes["epochs_done"],
                                                  minutes["train_minutes"], train["average"])
    if epochs:
        tatoeba_recipes.load_mean(translator.model, [directory / "epochs" / f"epoch{e}.safetensors" for e in epochs])
        steps, epochs_done, train_minutes, average = None, max(epochs), minutes["epoch_minutes"][max(epochs) - 1], len(epochs)
        history = {k: v[:max(epochs)] for k, v in history.items() if k in ("tokens_per_s", "valid_loss")}
    hyps = translator.translate([p.src for p in valid], beam_size=beam, alpha=alpha)
    refs = [[p.tgt for p in valid]]
    run = {
        "name": name, "changes": changes, "settings": train,
        "steps": steps, "epochs_done": epochs_done,
        "train_minutes": train_minutes, "threads": minutes["threads"],
        "tokens_per_s": [round(v) for v in history.get("tokens_per_s", [])],
        "valid_loss": [round(v, 4) for v in history["valid_loss"]],
        "decoding": {"beam": beam, "alpha": alpha, "average": average, "epochs": epochs},
        "bleu": round(sacrebleu.corpus_bleu(hyps, refs).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hyps, refs).score, 2),
        "hyps": hyps,
    }
    runs = [r for r in read_runs() if r["name"] != name] + [run]
    _write(runs)
    print(f"{name}: {run['steps'] or '?'} steps, {run['epochs_done']} epochs, validation BLEU {run['bleu']}, "
          f"chrF {run['chrf']} ({len(hyps)} sentences) -> {LOG}", flush=True)
    return run


def compare(a: str, b: str) -> None:
    runs = {r["name"]: r for r in read_runs()}
    for name in (a, b):
        if name not in runs:
            raise SystemExit(f"no run named {name!r} in {LOG}; recorded: {', '.join(runs) or 'none'}")
    refs = [p.tgt for p in load_data("tatoeba")["valid"]]
    result = paired_bootstrap_bleu(runs[a]["hyps"], runs[b]["hyps"], refs)
    print(f"{a} {result.bleu_a:.2f} - {b} {result.bleu_b:.2f} = {result.difference:+.2f} BLEU, "
          f"95% interval [{result.low:+.2f}, {result.high:+.2f}]")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train the recipe for 15 minutes (with --set changes) and record it")
    r.add_argument("name")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--keep", type=Path, default=None, help="keep the checkpoint in this directory")
    a = sub.add_parser("add", help="record a run that scripts/train_tatoeba_model.py trained")
    a.add_argument("name")
    a.add_argument("directory", type=Path)
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the changes that run was trained with (for the record)")
    a.add_argument("--epochs", type=int, nargs="+", default=None, metavar="N",
                   help="record the mean of these epochs' weights, as if the run had stopped after the last")
    c = sub.add_parser("compare", help="paired bootstrap of two recorded runs on the validation split")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args(argv)
    if args.command == "compare":
        compare(args.a, args.b)
    elif args.command == "add":
        record(args.name, args.directory, args.set, args.epochs)
    else:
        out = args.keep or Path(tempfile.mkdtemp(prefix=f"tatoeba-{args.name}-")) / "run"
        flags = [item for change in args.set for item in ("--set", change)]
        train_tatoeba_model.main([str(out), *flags])
        record(args.name, out, args.set)
        if args.keep is None:
            shutil.rmtree(out.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
