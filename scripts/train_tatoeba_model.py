"""Train the Tatoeba translator that chapters 8 and 9 load (``make tatoeba-model``).

The same run as ``python -m tformer train --data tatoeba --out OUT``: the recipe's defaults
(``Settings.for_data("tatoeba")``, its tokenizer, 15 minutes), the same data, the same
checkpoint. It also keeps a copy of the weights after every epoch in ``OUT/epochs/`` with the
training minutes at which each was saved (``OUT/epochs/minutes.json``), so chapter 8 can plot BLEU
against training time from one run and try averaging the last epochs' weights.

    python scripts/train_tatoeba_model.py runs/tatoeba-model [--max-minutes 15] [--threads N]

``--set KEY=VALUE`` changes one setting of the recipe (a ``Settings`` field such as ``cooldown=0.2``,
a model field such as ``dropout=0.2``, or the tokenizer's ``bpe_vocab_size=2000``), for trying a
recipe against the default one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from tformer.nn.transformer import TransformerConfig
from tformer.recipes.translation import Settings, load_data, tokenizer_for, train_translation

WEIGHTS = "model.safetensors"


def parse_changes(items: list[str]) -> dict:
    """``["cooldown=0.2", "dropout=0.3"]`` → ``{"cooldown": 0.2, "model": {"dropout": 0.3}}``: keyword
    arguments for ``Settings`` (model fields go under ``model``). Values are read as int, float,
    true/false/none, or else kept as text."""
    model_fields = {f.name for f in fields(TransformerConfig)}
    changes: dict = {"model": {}}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. cooldown=0.2")
        (changes["model"] if key in model_fields else changes)[key] = _value(text)
    return changes


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--max-minutes", type=float, default=None, help="default: the recipe's (15)")
    p.add_argument("--threads", type=int, default=None, help="default: torch's choice")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change one setting of the recipe (repeatable)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    changes = parse_changes(args.set)
    tokenizer, bpe_vocab_size = tokenizer_for("tatoeba")
    bpe_vocab_size = changes.pop("bpe_vocab_size", bpe_vocab_size)  # the tokenizer's, not a Settings field
    settings = Settings.for_data("tatoeba", **changes)
    if args.max_minutes is not None:
        settings.max_minutes = args.max_minutes
    if args.out.exists():  # a checkpoint of an earlier or interrupted run: start again
        if any(args.out.iterdir()) and not (args.out / "config.json").exists():
            raise SystemExit(f"{args.out} holds files but no checkpoint; give a new or empty directory")
        shutil.rmtree(args.out)
    # the copies go into OUT/epochs once OUT holds a checkpoint (train_translation saves only into
    # a directory that is empty or holds one)
    epochs = args.out / "epochs"
    minutes: list[float] = []
    t0 = time.perf_counter()
    last = [0.0]

    def log(message: str) -> None:
        print(message, flush=True)
        # train_translation saves epoch N right after its "epoch N/..." line, so the weights on
        # disk at such a line (or at "stopped ...") are the previous epoch's
        if message.startswith(("epoch ", "stopped ")) and (args.out / WEIGHTS).exists():
            epochs.mkdir(exist_ok=True)
            shutil.copy(args.out / WEIGHTS, epochs / f"epoch{len(minutes) + 1}.safetensors")
            minutes.append(round(last[0], 3))
        if message.startswith("epoch "):
            last[0] = (time.perf_counter() - t0) / 60

    splits = load_data("tatoeba")
    _, state = train_translation(splits, args.out, settings, data_source="tatoeba", tokenizer=tokenizer,
                                 bpe_vocab_size=bpe_vocab_size, progress=False, log=log)
    epochs.mkdir(exist_ok=True)
    if state.finished:
        shutil.copy(args.out / WEIGHTS, epochs / f"epoch{len(minutes) + 1}.safetensors")
        minutes.append(round(last[0], 3))
    record = {"epoch_minutes": minutes, "steps": state.step, "epochs_done": state.epoch,
              "train_minutes": round((time.perf_counter() - t0) / 60, 3), "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count()}
    tmp = epochs / "minutes.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, epochs / "minutes.json")
    print(f"{state.step} steps, {state.epoch} full epochs; checkpoint in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
