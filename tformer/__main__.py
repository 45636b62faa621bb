"""Command line: ``python -m tformer {train,translate,evaluate,bench} ...`` (also the ``tformer`` script).

Examples::

    python -m tformer train --data builtin --out runs/zh-en           # ~3 minutes on 2 CPU cores
    python -m tformer translate --checkpoint runs/zh-en "我昨天在北京买了三本书"
    python -m tformer evaluate --checkpoint runs/zh-en --data builtin  # prints BLEU on the test split
    python -m tformer bench --quick

``runs/zh-en`` is the default of ``--out`` and ``--checkpoint``. English is tokenized by word
unless ``train --tokenizer bpe`` (for real corpora such as a Tatoeba file) learns a BPE tokenizer
on the English side of the training split and saves it in the checkpoint; Chinese is always split
by character. ``translate`` and ``evaluate`` find the tokenizer in the checkpoint by themselves.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields

import torch

from tformer import benchmarks
from tformer.recipes.translation import (
    SMALL_MODEL,
    Settings,
    Translator,
    evaluate_bleu,
    load_data,
    train_translation,
)
from tformer.training.checkpoint import read_config

# model-size flags: --flag -> TransformerConfig field(s); --num-layers sets both stacks
MODEL_FLAGS = {"d_model": ("d_model",), "num_heads": ("num_heads",),
               "num_layers": ("num_encoder_layers", "num_decoder_layers"),
               "dim_feedforward": ("dim_feedforward",), "dropout": ("dropout",), "max_len": ("max_len",)}

EXIT_USAGE = 2
DEFAULT_DIR = "runs/zh-en"


class CLIError(Exception):
    """A problem with the user's input: printed as ``tformer: error: ...`` with exit status 2."""


def _positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-minutes must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"--max-minutes must be > 0, got {text} (leave it out to use --epochs alone)"
        )
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(prog="tformer", description="Train and use a Chinese→English Transformer.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,translate,evaluate,bench}")

    t = sub.add_parser("train", help="train a translation model and save checkpoints",
                       description="Train a Transformer on the built-in corpus or a Tatoeba-style TSV "
                       "(English<TAB>Chinese<TAB>attribution). Checkpoints go to --out after every epoch.")
    t.add_argument("--data", default="builtin", help="'builtin', 'tatoeba' or a TSV file (default: builtin)")
    t.add_argument("--out", default=DEFAULT_DIR,
                   help=f"checkpoint directory, created if needed (default: {DEFAULT_DIR})")
    t.add_argument("--max-minutes", type=_positive_minutes, default=d.max_minutes,
                   help=f"stop training after this many minutes (default: {d.max_minutes})")
    t.add_argument("--no-time-limit", action="store_true", help="train for --epochs, however long")
    t.add_argument("--epochs", type=_positive_int, default=d.epochs, help=f"default: {d.epochs}")
    t.add_argument("--tokenizer", choices=["word", "bpe"], default="word",
                   help="how English is split: 'word' (default, fine for the built-in corpus) or "
                   "'bpe', byte-pair encoding learnt on the English side of the training split and "
                   "saved as tgt_tokenizer.json in --out (for real corpora). Chinese is always split "
                   "by character, already a small sub-word unit. Ignored with --resume, which keeps "
                   "the checkpoint's tokenizer")
    t.add_argument("--bpe-vocab-size", type=_positive_int, default=8000,
                   help="largest BPE vocabulary, specials included (with --tokenizer bpe; default: 8000)")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--skip-bad-lines", action="store_true",
                   help="skip malformed TSV lines (and say how many) instead of stopping at the first")
    for name, keys in MODEL_FLAGS.items():
        default = SMALL_MODEL[keys[0]]
        t.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                       help=f"default: {default}")
    for f in fields(Settings):
        if f.name in ("max_minutes", "epochs", "model"):
            continue
        t.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)),
                       default=getattr(d, f.name), help=f"default: {getattr(d, f.name)}")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    tr = sub.add_parser("translate", help="translate Chinese sentences with a trained checkpoint",
                        description="Translate each sentence argument (or each line of stdin).")
    tr.add_argument("--checkpoint", default=DEFAULT_DIR,
                    help=f"directory written by 'tformer train' (default: {DEFAULT_DIR})")
    tr.add_argument("--beam", type=_positive_int, default=1, help="beam size (1 = greedy; default 1)")
    tr.add_argument("sentences", nargs="*", help="Chinese sentences (read from stdin when none)")

    e = sub.add_parser("evaluate", help="print corpus BLEU of a checkpoint on a data set",
                       description="Translate a data split and print sacrebleu's corpus BLEU, computed on "
                       "detokenized text (so word and BPE checkpoints are scored alike).")
    e.add_argument("--checkpoint", default=DEFAULT_DIR, help=f"default: {DEFAULT_DIR}")
    e.add_argument("--data", default="builtin", help="'builtin', 'tatoeba' or a TSV file (default: builtin)")
    e.add_argument("--split", default="test", choices=["train", "valid", "test", "all"],
                   help="which split (a TSV is split 90/5/5 exactly as 'train' split it; default: test)")
    e.add_argument("--beam", type=_positive_int, default=1, help="beam size (default 1 = greedy)")
    e.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N pairs")

    for sp in (t, tr, e):
        sp.add_argument("--threads", type=_positive_int, default=None,
                        help="CPU threads for torch (default: torch's choice, lowered to the cores "
                        "that other work leaves idle, judged by the 1-minute load average); on a "
                        "shared machine oversubscribed cores are several times slower than 1 thread")
    sub.add_parser("bench", help="run the benchmarks (tformer.benchmarks); --help for its options",
                   add_help=False)
    return p


def _train(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    model = {key: getattr(args, flag) for flag, keys in MODEL_FLAGS.items() for key in keys}
    settings = Settings(model=model, **values)
    settings.max_minutes = None if args.no_time_limit else args.max_minutes
    splits = load_data(args.data, seed=settings.seed, errors="skip" if args.skip_bad_lines else "raise")
    print(f"data: {args.data}: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} sentence pairs")
    translator, state = train_translation(
        splits, args.out, settings, data_source=args.data, tokenizer=args.tokenizer,
        bpe_vocab_size=args.bpe_vocab_size, resume=args.resume, progress=not args.quiet,
    )
    where = "finished" if state.finished else "stopped by the time limit"
    print(f"{where} after {state.step} steps; checkpoint in {args.out}")
    sample = splits["test"][: 3]
    for pair, hyp in zip(sample, translator.translate([p.src for p in sample])):
        print(f"  {pair.src} → {hyp}")
    return 0


def _translate(args: argparse.Namespace) -> int:
    sentences = list(args.sentences) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not sentences:
        raise CLIError("no sentence given: pass sentences as arguments or on stdin")
    for i, s in enumerate(sentences):
        if not s.strip():
            raise CLIError(f"sentence {i + 1} is empty; there is nothing to translate")
    translator = Translator.from_checkpoint(args.checkpoint)
    for hyp in translator.translate(sentences, beam_size=args.beam):
        print(hyp)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    translator = Translator.from_checkpoint(args.checkpoint)
    seed = read_config(args.checkpoint).get("train", {}).get("seed", 0)
    splits = load_data(args.data, seed=seed, errors="skip")
    pairs = [p for v in splits.values() for p in v] if args.split == "all" else splits[args.split]
    pairs = pairs[: args.limit] if args.limit else pairs
    score, _ = evaluate_bleu(translator, pairs, beam_size=args.beam)
    print(f"BLEU = {score:.2f} ({args.split} split of {args.data}, {len(pairs)} sentences, beam {args.beam})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tformer`` and the ``tformer`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return benchmarks.main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads if args.threads is not None else _idle_threads())
    try:
        return {"train": _train, "translate": _translate, "evaluate": _evaluate}[args.command](args)
    except (CLIError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"tformer {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _idle_threads() -> int:
    """torch's default thread count, lowered to the number of cores other processes leave idle.

    OpenMP threads that share a busy core wait for one another at every synchronisation point: on
    2 cores with another busy process, a small Transformer's training step took 343 ms with 2
    threads and 113 ms with 1 (measured here), so a busy machine is better served by fewer threads.
    """
    default = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows)
        return default
    idle = round((os.cpu_count() or default) - busy)
    return max(1, min(default, idle))


if __name__ == "__main__":
    sys.exit(main())
