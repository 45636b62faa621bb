"""The command line's arguments: the parser of ``python -m tformer``, the checks of each flag's
value (bounded before anything is allocated), and the checks of ``--out`` before any data is read."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from tformer.data.text import BPETokenizer
from tformer.recipes.translation_data import tokenizer_for
from tformer.runtime import PRECISIONS
from tformer.training.checkpoint import check_committable

# model-size flags: --flag -> TransformerConfig field(s); --num-layers sets both stacks
MODEL_FLAGS = {"d_model": ("d_model",), "num_heads": ("num_heads",),
               "num_layers": ("num_encoder_layers", "num_decoder_layers"),
               "dim_feedforward": ("dim_feedforward",), "dropout": ("dropout",),
               "attention_dropout": ("attention_dropout",), "activation_dropout": ("activation_dropout",),
               "max_len": ("max_len",)}

SETTING_HELP = {
    "average": "translate with the mean of the weights at the last N epoch ends (checkpoint averaging; "
               "1: the last weights); ",
    "beam_size": "beam size that evaluate and translate use for this checkpoint unless told (1: greedy); ",
    "alpha": "length penalty of that beam search; ",
    "cooldown": "the last fraction of the run (of its time limit, or of its steps) in which the learning "
                "rate falls linearly to 0 (0: none); ",
    "concat": "each epoch, add this share of the training pairs again, each joined to another random pair "
              "(Chinese to Chinese, English to English; new joinings every epoch; 0: none); ",
    "bpe_dropout": "BPE-dropout of the English training sentences: each merge is skipped with this "
                   "probability, so words come in varied pieces every epoch (0: none; needs --tokenizer bpe); ",
}
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
# flags that --resume may change (the rest must match the checkpoint)
RESUMABLE = {"data", "out", "max_minutes", "no_time_limit", "epochs", "resume", "skip_bad_lines",
             "quiet", "threads", "overwrite", "precision"}
DEFAULT_DIR = "runs/zh-en"


class CLIError(Exception):
    """A problem with the user's input: printed as ``tformer: error: ...`` with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (with a pointer to --help), not the usage."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def _parsed(text: str, kind: type, ok, expected: str):
    """``kind(text)`` if it converts and passes ``ok``; else argparse's error "expected {expected}"."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


# upper bounds of the size flags, checked before anything is allocated (the paper's big model has
# d_model 1024, 16 heads, 6 layers, 4096 inner units; this course's models are far smaller)
LIMITS = {"d_model": 8192, "num_heads": 256, "num_layers": 64, "dim_feedforward": 65536, "max_len": 16384,
          "bpe_vocab_size": BPETokenizer.MAX_VOCAB_SIZE, "batch_tokens": 1_000_000, "warmup": 10_000_000,
          "epochs": 1_000_000, "min_freq": 1_000_000, "average": 100, "beam_size": 100, "beam": 100,
          "threads": 4 * (os.cpu_count() or 1), "limit": 10_000_000, "resamples": 100_000}


def _bounded(name: str):
    """An argparse type: a positive integer up to ``LIMITS[name]``, the limit named in the error."""
    limit = LIMITS[name]
    why = " (4 x this machine's cores)" if name == "threads" else ""

    def parse(text: str) -> int:
        return _parsed(text, int, lambda v: 1 <= v <= limit, f"a positive integer up to {limit}{why}")

    parse.__name__ = name
    return parse


def _optional_probability(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    return _parsed(text, float, lambda v: 0 <= v < 1, "a probability in [0, 1) or 'none'")


def _seed(text: str) -> int:
    return _parsed(text, int, lambda v: 0 <= v < 2**63, "a non-negative integer")


def _length_penalty(text: str) -> float:
    return _parsed(text, float, lambda v: 0 <= v < 10, "a length penalty in [0, 10)")


def _parser(d, data: str = "builtin") -> argparse.ArgumentParser:
    """The parser of ``python -m tformer``; ``d``: the recipe's :class:`~tformer.recipes.translation.Settings`
    for ``--data data`` (``Settings.for_data(data)``), whose values the ``train`` flags default to."""
    tokenizer, bpe_size = tokenizer_for(data)
    p = _Parser(prog="tformer", description="Train and use a Chinese→English Transformer.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,translate,evaluate,compare,bench}")

    t = sub.add_parser("train", help="train a translation model and save checkpoints",
                       description="Train a Transformer on the built-in corpus or a Tatoeba-style TSV "
                       "(English<TAB>Chinese<TAB>attribution). Checkpoints go to --out after every epoch.")
    t.add_argument("--data", default="builtin", help="'builtin', 'tatoeba' or a TSV file (default: builtin)")
    t.add_argument("--out", default=DEFAULT_DIR,
                   help=f"checkpoint directory, created if needed (default: {DEFAULT_DIR})")
    t.add_argument("--max-minutes", type=_positive_minutes, default=d.max_minutes,
                   help=f"stop training after this many minutes (default: {d.max_minutes})")
    t.add_argument("--no-time-limit", action="store_true", help="train for --epochs, however long")
    t.add_argument("--epochs", type=_bounded("epochs"), default=d.epochs, help=f"default: {d.epochs}")
    t.add_argument("--tokenizer", choices=["word", "bpe"], default=tokenizer,
                   help="how English is split: 'word' (the default, fine for the built-in corpus) or "
                   "'bpe', byte-pair encoding learnt on the English side of the training split and "
                   "saved as tgt_tokenizer.json in --out (for real corpora). Chinese is always split "
                   "by character, already a small sub-word unit. Ignored with --resume, which keeps "
                   f"the checkpoint's tokenizer (default for --data {data}: {tokenizer})")
    t.add_argument("--bpe-vocab-size", type=_bounded("bpe_vocab_size"), default=bpe_size,
                   help=f"largest BPE vocabulary, specials included (with --tokenizer bpe; default: {bpe_size})")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (flags that differ from the checkpoint's are "
                   "an error, except --epochs and the time limit)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint in --out with a new run (the old one stays until the "
                   "first new save)")
    t.add_argument("--skip-bad-lines", action="store_true",
                   help="skip malformed TSV lines (and say how many, per reason) instead of stopping "
                   "at the first")
    for name, keys in MODEL_FLAGS.items():
        default = d.model.get(keys[0])
        if name in ("attention_dropout", "activation_dropout"):
            where = "the attention weights" if name == "attention_dropout" else "the FFN's inner activations"
            t.add_argument("--" + name.replace("_", "-"), type=_optional_probability, default=default,
                           help=f"dropout on {where} ('none': the same as --dropout; default: "
                           f"{'none' if default is None else default})")
            continue
        kind = _bounded(name) if name in LIMITS else type(default)
        t.add_argument("--" + name.replace("_", "-"), type=kind, default=default,
                       help=f"default: {default}" + (f"; at most {LIMITS[name]}" if name in LIMITS else ""))
    t.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="float32, bf16 (autocast; an error where the hardware has no bfloat16) or auto: "
                   "bf16 on CPUs with native bfloat16 (AVX512-BF16 or AMX) and GPUs that have it, when "
                   "a short measurement finds it faster, else float32. Weights and checkpoints stay "
                   f"float32. Default: {d.precision}, the precision the Tatoeba recipe was chosen in")
    for f in fields(d):
        if f.name in ("max_minutes", "epochs", "model", "precision"):
            continue
        what = SETTING_HELP.get(f.name, "")
        t.add_argument("--" + f.name.replace("_", "-"),
                       type=_bounded(f.name) if f.name in LIMITS else type(getattr(d, f.name)),
                       default=getattr(d, f.name), help=f"{what}default: {getattr(d, f.name)}")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    tr = sub.add_parser("translate", help="translate Chinese sentences with a trained checkpoint",
                        description="Translate each sentence argument (or each line of stdin).")
    tr.add_argument("--checkpoint", default=DEFAULT_DIR,
                    help=f"directory written by 'tformer train' (default: {DEFAULT_DIR})")
    tr.add_argument("--beam", type=_bounded("beam"), default=None,
                    help="beam size (1 = greedy; default: the one the checkpoint was trained for, "
                    "its --beam-size)")
    tr.add_argument("--alpha", type=_length_penalty, default=None,
                    help="beam search's length penalty (default: the checkpoint's --alpha)")
    tr.add_argument("sentences", nargs="*", help="Chinese sentences (read from stdin when none)")

    e = sub.add_parser("evaluate", help="print corpus BLEU of a checkpoint on a data set",
                       description="Translate a data split and print sacrebleu's corpus BLEU, computed on "
                       "detokenized text (so word and BPE checkpoints are scored alike).")
    e.add_argument("--checkpoint", default=DEFAULT_DIR, help=f"default: {DEFAULT_DIR}")
    e.add_argument("--data", default="builtin", help="'builtin', 'tatoeba' or a TSV file (default: builtin)")
    e.add_argument("--split", default="test", choices=["train", "valid", "test", "all"],
                   help="which split (a TSV is split 90/5/5 exactly as 'train' split it; default: test)")
    e.add_argument("--beam", type=_bounded("beam"), default=None,
                   help="beam size (1 = greedy; default: the one the checkpoint was trained for, its "
                   "--beam-size)")
    e.add_argument("--alpha", type=_length_penalty, default=None,
                   help="beam search's length penalty (default: the checkpoint's --alpha)")
    e.add_argument("--limit", type=_bounded("limit"), default=None, help="evaluate only the first N pairs")
    e.add_argument("--skip-bad-lines", action="store_true",
                   help="skip malformed TSV lines (and say how many) instead of stopping at the first")
    e.add_argument("--outputs", default=None, metavar="FILE",
                   help="also write the translations to FILE, one JSON object per line "
                   '({"src": ..., "ref": ..., "hyp": ...}) in the order of the data, for "tformer compare"; '
                   "written atomically, after all sentences are translated")

    c = sub.add_parser("compare", help="compare two systems' translations of the same sentences",
                       description="Read two files written by 'tformer evaluate --outputs' for the same "
                       "sentences and print both corpus BLEUs, their difference A - B and its 95% "
                       "interval by paired bootstrap resampling of the sentences (Koehn, 2004); an "
                       "interval that excludes 0 means the difference is larger than the noise of "
                       "this sample of sentences.")
    c.add_argument("a", metavar="A.jsonl", help="the first system's translations")
    c.add_argument("b", metavar="B.jsonl", help="the second system's translations (same src and ref, "
                   "line by line)")
    c.add_argument("--resamples", type=_bounded("resamples"), default=1000,
                   help=f"bootstrap resamples (default: 1000; at most {LIMITS['resamples']})")
    c.add_argument("--seed", type=_seed, default=0, help="seed of the resampling (default: 0)")

    for sp in (t, tr, e):
        sp.add_argument("--threads", type=_bounded("threads"), default=None,
                        help="CPU threads for torch (default: torch's choice, lowered to the cores "
                        "that other work leaves idle, measured over a quarter of a second); on a "
                        "shared machine oversubscribed cores are several times slower than 1 thread")
    sub.add_parser("bench", help="run the benchmarks (tformer.benchmarks); --help for its options",
                   add_help=False)
    p.train_parser = t  # for _explicit_flags
    return p


def _explicit_flags(argv: Sequence[str], d) -> set[str]:
    """The ``train`` options the user typed (argparse fills in the others with defaults)."""
    p = _parser(d)
    for action in p.train_parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv))) - {"command"}


def _check_out(out: str) -> Path:
    """``--out`` must name a directory that is new or that this user can write; checked before any
    data is read, so a bad path fails in a second rather than after an hour of training."""
    if not out.strip():
        raise CLIError("--out is empty; give the checkpoint directory (default: runs/zh-en)")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {out}: exists and is not a directory")
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"--out {out}: cannot create it ({parent} is not a writable directory)")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise CLIError(f"--out {out}: the directory is not writable")
    try:  # the current directory, a parent of it, a mount point, a rename that cannot succeed
        check_committable(path)
    except ValueError as error:
        raise CLIError(f"--out {error}") from None
    return path
