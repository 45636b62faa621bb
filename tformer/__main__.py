"""Command line: ``python -m tformer {train,translate,evaluate,bench} ...`` (also the ``tformer`` script).

Examples::

    python -m tformer train --data builtin --out runs/zh-en           # ~3 minutes on 2 CPU cores
    python -m tformer translate --checkpoint runs/zh-en "我昨天在北京买了三本书"
    python -m tformer evaluate --checkpoint runs/zh-en --data builtin  # prints BLEU on the test split
    python -m tformer bench --quick

``runs/zh-en`` is the default of ``--out`` and ``--checkpoint``. ``train`` refuses an ``--out``
that already holds something unless ``--resume`` (continue it) or ``--overwrite`` (replace the
checkpoint) is given, and only one process at a time may write a directory. Ctrl-C saves the run
at the current step and exits with status 130; ``--resume`` continues it.

Exit status: 0 success, 1 a failure while running (a diverged loss, a locked directory, a disk
error), 2 bad input (flags, files, checkpoints), 130 interrupted. Every failure is one line on
stderr. English is tokenized by word
unless ``train --tokenizer bpe`` (for real corpora; the default with ``--data tatoeba``, whose
recipe also sets its own model size and a 15-minute budget) learns a BPE tokenizer
on the English side of the training split and saves it in the checkpoint; Chinese is always split
by character. ``translate`` and ``evaluate`` find the tokenizer in the checkpoint by themselves.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

if __name__ == "__main__":  # python -m tformer: a Ctrl-C while the imports below load is one line too

    def _interrupted_while_starting(signum, frame):
        sys.stderr.write("tformer: interrupted\n")
        os._exit(130)

    signal.signal(signal.SIGINT, _interrupted_while_starting)

import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import fields
from pathlib import Path

import torch

from tformer import benchmarks
from tformer.metrics import chrf
from tformer.recipes.translation import (
    AVERAGED,
    DATA_DEFAULTS,
    Settings,
    Translator,
    decoding_defaults,
    evaluate_bleu,
    load_data,
    tokenizer_for,
    train_translation,
)
from tformer.runtime import PRECISIONS
from tformer.training.checkpoint import (
    CheckpointLocked,
    lock_directory,
    read_config,
    read_json,
    recover,
)
from tformer.training.loop import TrainingInterrupted

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


def _positive_int(text: str) -> int:
    return _parsed(text, int, lambda v: v >= 1, "a positive integer")


def _optional_probability(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    return _parsed(text, float, lambda v: 0 <= v < 1, "a probability in [0, 1) or 'none'")


def _length_penalty(text: str) -> float:
    return _parsed(text, float, lambda v: 0 <= v < 10, "a length penalty in [0, 10)")


def _decoding(args: argparse.Namespace) -> tuple[int, float]:
    """--beam and --alpha, each defaulting to what the checkpoint was trained for."""
    beam, alpha = decoding_defaults(args.checkpoint)
    return (args.beam if args.beam is not None else beam), (args.alpha if args.alpha is not None else alpha)


def _parser(data: str = "builtin") -> argparse.ArgumentParser:
    d = Settings.for_data(data)  # --data tatoeba has its own recipe's defaults
    tokenizer, bpe_size = tokenizer_for(data)
    p = _Parser(prog="tformer", description="Train and use a Chinese→English Transformer.")
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
    t.add_argument("--tokenizer", choices=["word", "bpe"], default=tokenizer,
                   help="how English is split: 'word' (the default, fine for the built-in corpus) or "
                   "'bpe', byte-pair encoding learnt on the English side of the training split and "
                   "saved as tgt_tokenizer.json in --out (for real corpora). Chinese is always split "
                   "by character, already a small sub-word unit. Ignored with --resume, which keeps "
                   f"the checkpoint's tokenizer (default for --data {data}: {tokenizer})")
    t.add_argument("--bpe-vocab-size", type=_positive_int, default=bpe_size,
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
        t.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                       help=f"default: {default}")
    t.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="float32, bf16 (autocast; an error where the hardware has no bfloat16) or auto: "
                   "bf16 on CPUs with native bfloat16 (AVX512-BF16 or AMX) and GPUs that have it, when "
                   "a short measurement finds it faster, else float32. Weights and checkpoints stay "
                   f"float32. Default: {d.precision}; it moves to auto once the Tatoeba recipe is "
                   "re-tuned in bfloat16 (issue 20)")
    for f in fields(Settings):
        if f.name in ("max_minutes", "epochs", "model", "precision"):
            continue
        what = SETTING_HELP.get(f.name, "")
        t.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)),
                       default=getattr(d, f.name), help=f"{what}default: {getattr(d, f.name)}")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    tr = sub.add_parser("translate", help="translate Chinese sentences with a trained checkpoint",
                        description="Translate each sentence argument (or each line of stdin).")
    tr.add_argument("--checkpoint", default=DEFAULT_DIR,
                    help=f"directory written by 'tformer train' (default: {DEFAULT_DIR})")
    tr.add_argument("--beam", type=_positive_int, default=None,
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
    e.add_argument("--beam", type=_positive_int, default=None,
                   help="beam size (1 = greedy; default: the one the checkpoint was trained for, its "
                   "--beam-size)")
    e.add_argument("--alpha", type=_length_penalty, default=None,
                   help="beam search's length penalty (default: the checkpoint's --alpha)")
    e.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N pairs")
    e.add_argument("--skip-bad-lines", action="store_true",
                   help="skip malformed TSV lines (and say how many) instead of stopping at the first")

    for sp in (t, tr, e):
        sp.add_argument("--threads", type=_positive_int, default=None,
                        help="CPU threads for torch (default: torch's choice, lowered to the cores "
                        "that other work leaves idle, measured over a quarter of a second); on a "
                        "shared machine oversubscribed cores are several times slower than 1 thread")
    sub.add_parser("bench", help="run the benchmarks (tformer.benchmarks); --help for its options",
                   add_help=False)
    p.train_parser = t  # for _explicit_flags
    return p


def _explicit_flags(argv: Sequence[str]) -> set[str]:
    """The ``train`` options the user typed (argparse fills in the others with defaults)."""
    p = _parser()
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
    return path


def _resume_conflicts(args: argparse.Namespace, explicit: set[str], cfg: dict) -> list[str]:
    """``--flag value (checkpoint: value)`` for every typed flag that contradicts the checkpoint."""
    model, train = cfg.get("model", {}), cfg.get("train") or {}
    out = []
    for name in sorted(explicit - RESUMABLE):
        value = getattr(args, name)
        if name in MODEL_FLAGS:
            saved = model.get(MODEL_FLAGS[name][0])
        elif name == "tokenizer":
            saved = cfg.get("tokenizer", "word")
        elif name == "bpe_vocab_size":
            if cfg.get("tokenizer") != "bpe":
                out.append(f"--bpe-vocab-size {value} (the checkpoint has no BPE tokenizer)")
            continue  # its BPE vocabulary may be smaller than the limit it was trained with
        else:
            saved = train.get(name)
        if saved is not None and value != saved:
            out.append(f"--{name.replace('_', '-')} {value} (checkpoint: {saved})")
    return out


def _train(args: argparse.Namespace, explicit: set[str], stack: ExitStack) -> int:
    values = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    model = {key: getattr(args, flag) for flag, keys in MODEL_FLAGS.items() for key in keys}
    settings = Settings(model=model, **values)
    settings.max_minutes = None if args.no_time_limit else args.max_minutes
    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite contradict each other; choose one")
    out = _check_out(args.out)
    try:
        stack.enter_context(lock_directory(out))  # a second writer fails here, before reading data
    except OSError as error:
        raise CLIError(f"--out {args.out}: cannot write there ({error.strerror or error})") from None
    recover(out)
    has_content = out.is_dir() and any(out.iterdir())
    if has_content and not (args.resume or args.overwrite):
        raise CLIError(f"--out {args.out} is not empty; add --resume to continue the run saved there, "
                       "--overwrite to replace it, or choose another directory")
    if has_content and args.overwrite and not (out / "config.json").is_file():
        raise CLIError(f"--out {args.out} holds files but no tformer checkpoint; --overwrite only "
                       "replaces a checkpoint, so choose an empty or new directory")
    if args.resume and has_content:
        cfg = read_config(out)
        conflicts = _resume_conflicts(args, explicit, cfg)
        if conflicts:
            raise CLIError(f"--resume: these flags differ from the run saved in {args.out}: "
                           f"{'; '.join(conflicts)}; leave them out to keep the checkpoint's values, "
                           "or train into a new directory")
        done = (read_json(out / "state.json").get("train") or {}) if (out / "state.json").is_file() else {}
        saved_epochs = (cfg.get("train") or {}).get("epochs")
        if "epochs" in explicit and saved_epochs is not None and args.epochs != saved_epochs:
            print(f"note: --epochs {args.epochs} (the run was started with {saved_epochs})")
        if done.get("epoch", 0) >= args.epochs:
            print(f"the run in {args.out} has already trained {done.get('epoch')} epochs; nothing to "
                  f"do (pass --epochs N with N > {done.get('epoch')} to train longer)")
            return 0
    splits = load_data(args.data, seed=settings.seed, errors="skip" if args.skip_bad_lines else "raise")
    print(f"data: {args.data}: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} sentence pairs")
    try:
        translator, state = train_translation(
            splits, out, settings, data_source=args.data, tokenizer=args.tokenizer,
            bpe_vocab_size=args.bpe_vocab_size, resume=args.resume, progress=not args.quiet,
        )
    except TrainingInterrupted as stop:
        print(f"tformer train: interrupted; saved step {stop.state.step} (epoch {stop.state.epoch + 1}) in "
              f"{args.out}; continue with: python -m tformer train --data {args.data} --out {args.out} "
              "--resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FloatingPointError as error:
        kept = (f"{args.out} keeps the last checkpoint saved before it" if (out / "state.json").is_file()
                else "nothing was saved")
        raise _Failure(f"{error}; {kept}") from None
    where = "finished" if state.finished else "stopped by the time limit"
    print(f"{where} after {state.step} steps; checkpoint in {args.out}")
    sample = splits["test"][: 3]
    for pair, hyp in zip(sample, translator.translate([p.src for p in sample])):
        print(f"  {pair.src} → {hyp}")
    return 0


class _Failure(Exception):
    """A run that failed for a reason other than its input: exit status 1."""


def _translate(args: argparse.Namespace) -> int:
    from_stdin = not args.sentences
    sentences = list(args.sentences) or [line.rstrip("\r\n") for line in sys.stdin]
    if not from_stdin:
        for i, s in enumerate(sentences):
            if not s.strip():
                raise CLIError(f"sentence {i + 1} is empty; there is nothing to translate")
    if not any(s.strip() for s in sentences):
        raise CLIError("no sentence given: pass sentences as arguments or on stdin")
    translator = Translator.from_checkpoint(args.checkpoint)
    todo = [s for s in sentences if s.strip()]  # a blank stdin line gets a blank output line
    tokens = [t for s in todo for t in translator.tokenizers.tokenize_src(s)]
    unknown = sum(i == translator.src_vocab.unk_id for i in translator.src_vocab.encode(tokens))
    if tokens and unknown > len(tokens) / 2:
        print(f"tformer translate: warning: {unknown} of the {len(tokens)} input characters are unknown "
              "to the model's vocabulary; its translations will be guesses", file=sys.stderr)
    beam, alpha = _decoding(args)
    hyps = iter(translator.translate(todo, beam_size=beam, alpha=alpha))
    for s in sentences:
        print(next(hyps) if s.strip() else "")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    translator = Translator.from_checkpoint(args.checkpoint)
    seed = (read_config(args.checkpoint).get("train") or {}).get("seed", 0)
    splits = load_data(args.data, seed=seed, errors="skip" if args.skip_bad_lines else "raise")
    pairs = [p for v in splits.values() for p in v] if args.split == "all" else splits[args.split]
    pairs = pairs[: args.limit] if args.limit else pairs
    beam, alpha = _decoding(args)
    score, hyps = evaluate_bleu(translator, pairs, beam_size=beam, alpha=alpha)
    how = "greedy" if beam == 1 else f"beam {beam}, alpha {alpha:g}"
    weights = "averaged weights" if (Path(args.checkpoint) / AVERAGED).is_file() else "last weights"
    print(f"chrF = {chrf(hyps, [p.tgt for p in pairs]):.2f}")
    print(f"BLEU = {score:.2f} ({args.split} split of {args.data}, {len(pairs)} sentences, {how}, {weights})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tformer`` and the ``tformer`` console script."""
    if signal.getsignal(signal.SIGINT) is globals().get("_interrupted_while_starting"):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, Ctrl-C is handled below
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return benchmarks.main(argv[1:])
    # `train --data tatoeba` has its own recipe's defaults (DATA_DEFAULTS), --help included
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--data", default="builtin")
    data = pre.parse_known_args(argv[1:])[0].data if argv[:1] == ["train"] else "builtin"
    parser = _parser(data if data in DATA_DEFAULTS else "builtin")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads if args.threads is not None else _idle_threads())
    name = f"tformer {args.command}"

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"{name}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings(), ExitStack() as stack:
            warnings.showwarning = one_line_warning
            if args.command == "train":
                return _train(args, _explicit_flags(argv), stack)
            return {"translate": _translate, "evaluate": _evaluate}[args.command](args)
    except (CLIError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (_Failure, CheckpointLocked) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        print(f"{name}: error:{where} {error.strerror or error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # never a traceback: one line, and the exception's type for a report
        print(f"{name}: error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
              file=sys.stderr)
        return EXIT_FAILURE


def _busy_cores(window: float = 0.25) -> float | None:
    """How many cores other processes keep busy right now: the non-idle share of the CPU time in
    ``/proc/stat`` over ``window`` seconds, times the number of cores; the 1-minute load average
    where there is no ``/proc/stat``; None where neither exists (Windows).

    The load average alone misleads: it counts tasks waiting on I/O and trails the present by a
    minute, so a quiet 2-core VM here showed 1.0 and got one thread, 20% slower than two.
    """
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    elapsed = total1 - total0
    if elapsed <= 0:
        return 0.0
    return (os.cpu_count() or 1) * (elapsed - (idle1 - idle0)) / elapsed


def _idle_threads(busy: float | None = None) -> int:
    """torch's default thread count, lowered to the number of cores other processes leave idle.

    OpenMP threads that share a busy core wait for one another at every synchronisation point: on
    2 cores with another busy process, a small Transformer's training step took 343 ms with 2
    threads and 113 ms with 1 (measured here), so a busy machine is better served by fewer threads.
    """
    default = torch.get_num_threads()
    busy = _busy_cores() if busy is None else busy
    if busy is None:
        return default
    idle = round((os.cpu_count() or default) - busy)
    return max(1, min(default, idle))


if __name__ == "__main__":
    sys.exit(main())
