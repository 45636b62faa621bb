"""Translations on file and their comparison: ``tformer evaluate --outputs FILE`` writes one JSON
object per sentence (``{"src": ..., "ref": ..., "hyp": ...}``, one a line, in the data's order) and
``tformer compare A.jsonl B.jsonl`` scores two such files of the same sentences with
:func:`tformer.metrics.paired_bootstrap_bleu`."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from tformer.cli.args import CLIError
from tformer.metrics import paired_bootstrap_bleu
from tformer.training.checkpoint.files import write_text

FIELDS = ("src", "ref", "hyp")
# a file of 1,500 translations is about 0.3 MB; the bound keeps a wrong file from filling memory
MAX_OUTPUTS_BYTES = 256 << 20


def check_outputs_path(text: str) -> Path:
    """``--outputs`` must name a file in an existing, writable directory; checked before anything
    is translated, so a typo fails at once rather than after the translations."""
    if not text.strip():
        raise CLIError("--outputs is empty; give the name of the file to write")
    path = Path(text)
    if path.is_dir():
        raise CLIError(f"--outputs {text}: is a directory; give the name of a file")
    parent = Path(os.path.abspath(path)).parent
    if not parent.is_dir():
        raise CLIError(f"--outputs {text}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"--outputs {text}: the directory {parent} is not writable")
    return path


def write_outputs(path: Path, sources: Sequence[str], references: Sequence[str],
                  hypotheses: Sequence[str]) -> None:
    """Write the translations atomically (a reader never sees half a file)."""
    lines = (json.dumps({"src": s, "ref": r, "hyp": h}, ensure_ascii=False) + "\n"
             for s, r, h in zip(sources, references, hypotheses, strict=True))
    write_text(path, "".join(lines))


def read_outputs(name: str) -> list[dict[str, str]]:
    """The rows of a file written by ``evaluate --outputs``, each checked: a JSON object whose
    ``src``, ``ref`` and ``hyp`` are strings (other keys are ignored)."""
    path = Path(name)
    if not path.is_file():
        raise CLIError(f"{name}: {'is not a file' if path.exists() else 'no such file'}; give a file "
                       "written by 'tformer evaluate --outputs'")
    size = path.stat().st_size
    if size > MAX_OUTPUTS_BYTES:
        raise CLIError(f"{name}: {size / 2**20:.0f} MiB, more than the {MAX_OUTPUTS_BYTES >> 20} MiB "
                       "a file of translations may have")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CLIError(f"{name}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
                       f"{error.start})") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    if not lines:
        raise CLIError(f"{name}: is empty; it holds no translations")
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise CLIError(f"{name}: line {number} is not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise CLIError(f"{name}: line {number} is not a JSON object with keys {', '.join(FIELDS)}")
        for key in FIELDS:
            if not isinstance(row.get(key), str):
                what = "has no" if key not in row else "has a non-string"
                raise CLIError(f"{name}: line {number} {what} {key!r}; each line needs "
                               f"{', '.join(FIELDS)} as strings")
        rows.append(row)
    return rows


def _short(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def compare(args: argparse.Namespace) -> int:
    """``tformer compare``: both BLEUs, the difference A - B and its 95% interval."""
    a, b = read_outputs(args.a), read_outputs(args.b)
    if len(a) != len(b):
        raise CLIError(f"{args.a} has {len(a)} lines and {args.b} has {len(b)}; compare needs two "
                       "systems' translations of the same sentences")
    for number, (x, y) in enumerate(zip(a, b), start=1):
        for key in ("src", "ref"):
            if x[key] != y[key]:
                raise CLIError(f"line {number} differs: {key} {_short(x[key])} in {args.a}, "
                               f"{_short(y[key])} in {args.b}; both files must hold the same sentences "
                               "in the same order")
    result = paired_bootstrap_bleu([row["hyp"] for row in a], [row["hyp"] for row in b],
                                   [row["ref"] for row in a], resamples=args.resamples, seed=args.seed)
    print(f"A: BLEU = {result.bleu_a:.2f} ({args.a})")
    print(f"B: BLEU = {result.bleu_b:.2f} ({args.b})")
    print(f"A - B = {result.difference:+.2f} BLEU, 95% interval [{result.low:+.2f}, {result.high:+.2f}] "
          f"(paired bootstrap: {result.resamples} resamples of the {result.sentences} sentences, seed "
          f"{result.seed}); A scores higher on {100 * result.share_a_better:.1f}% of the resamples")
    if result.excludes_zero:
        better = "A" if result.low > 0 else "B"
        print(f"the interval excludes 0: {better} is better, by more than the noise of this sample "
              "of sentences")
    else:
        print("the interval includes 0: the difference may be noise (more sentences narrow the interval)")
    return 0
