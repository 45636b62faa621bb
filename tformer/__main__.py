"""Command line: ``python -m tformer {train,translate,evaluate,compare,bench} ...`` (also the ``tformer`` script).

Examples::

    python -m tformer train --data builtin --out runs/zh-en           # ~3 minutes on 2 CPU cores
    python -m tformer translate --checkpoint runs/zh-en "我昨天在北京买了三本书"
    python -m tformer evaluate --checkpoint runs/zh-en --data builtin  # prints BLEU on the test split
    python -m tformer evaluate --checkpoint runs/zh-en --data builtin --beam 1 --outputs greedy.jsonl
    python -m tformer compare beam.jsonl greedy.jsonl  # BLEU difference with a 95% interval
    python -m tformer bench --quick

``runs/zh-en`` is the default of ``--out`` and ``--checkpoint``. ``train`` refuses an ``--out``
that already holds something unless ``--resume`` (continue it) or ``--overwrite`` (replace the
checkpoint) is given, and only one process at a time may write a directory. Ctrl-C saves the run
at the current step and exits with status 130; SIGTERM (``kill``, ``timeout``, ``docker stop``)
and SIGHUP (a closed terminal) do the same and exit with 143 and 129; ``--resume`` continues it.

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
import threading

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
from tformer.cli.args import (
    DEFAULT_DIR,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    MODEL_FLAGS,
    RESUMABLE,
    CLIError,
    _check_out,
    _explicit_flags,
    _parser,
)
from tformer.cli.compare import check_outputs_path, compare, write_outputs
from tformer.cli.threads import _busy_cores, _idle_threads
from tformer.metrics import chrf
from tformer.recipes.translation import (
    AVERAGED,
    DATA_DEFAULTS,
    Settings,
    Translator,
    decoding_defaults,
    evaluate_bleu,
    load_data,
    train_translation,
)
from tformer.training.checkpoint import (
    CheckpointLocked,
    lock_directory,
    read_config,
    read_json,
    recover,
)
from tformer.training.loop import STOP_SIGNALS, TrainingInterrupted

__all__ = ["main", "CLIError", "DEFAULT_DIR", "_busy_cores", "_idle_threads"]


def _decoding(args: argparse.Namespace) -> tuple[int, float]:
    """--beam and --alpha, each defaulting to what the checkpoint was trained for."""
    beam, alpha = decoding_defaults(args.checkpoint)
    return (args.beam if args.beam is not None else beam), (args.alpha if args.alpha is not None else alpha)


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
        how = "interrupted" if stop.signum == signal.SIGINT else f"stopped by {signal.Signals(stop.signum).name}"
        print(f"tformer train: {how}; saved step {stop.state.step} (epoch {stop.state.epoch + 1}) in "
              f"{args.out}; continue with: python -m tformer train --data {args.data} --out {args.out} "
              "--resume", file=sys.stderr)
        return 128 + stop.signum
    except FloatingPointError as error:
        kept = (f"{args.out} keeps the last checkpoint saved before it" if (out / "state.json").is_file()
                else "nothing was saved")
        raise _Failure(f"{error}; {kept}") from None
    where = "finished" if state.finished else "stopped by the time limit"
    print(f"{where} after {state.step} steps; checkpoint in {args.out}")
    limit = translator.model.config.max_len  # a sample the model can take, so the run ends with 0
    sample = [p for p in splits["test"] if 0 < len(translator.tokenizers.tokenize_src(p.src)) <= limit][:3]
    for pair, hyp in zip(sample, translator.translate([p.src for p in sample]) if sample else []):
        print(f"  {pair.src} → {hyp}")
    return 0


class _Failure(Exception):
    """A run that failed for a reason other than its input: exit status 1."""


def _translate(args: argparse.Namespace) -> int:
    from_stdin = not args.sentences
    sentences = list(args.sentences) or _stdin_lines()
    where = "line {} of the input" if from_stdin else "sentence {}"  # 1-based, blank lines counted
    if not from_stdin:
        for i, s in enumerate(sentences):
            if not s.strip():
                raise CLIError(f"sentence {i + 1} is empty; there is nothing to translate")
    if not any(s.strip() for s in sentences):
        raise CLIError("no sentence given: pass sentences as arguments or on stdin")
    translator = Translator.from_checkpoint(args.checkpoint)
    limit = translator.model.config.max_len
    for number, s in enumerate(sentences, start=1):
        n = len(translator.tokenizers.tokenize_src(s)) if s.strip() else 0
        if n > limit:
            raise CLIError(f"{where.format(number)} has {n} characters, more than the model's max_len "
                           f"{limit}; split it into shorter sentences")
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


# translate reads its input into memory: bounds that no sentence list of this course comes near
MAX_LINE_BYTES = 1 << 16
MAX_INPUT_BYTES = 64 << 20


def _stdin_lines() -> list[str]:
    """The lines of stdin (UTF-8), each at most :data:`MAX_LINE_BYTES` and all together at most
    :data:`MAX_INPUT_BYTES`, so an endless stream (``< /dev/zero``) is refused, not read forever."""
    stream = getattr(sys.stdin, "buffer", None)
    lines, total = [], 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1) if stream is not None else sys.stdin.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return lines
        number = len(lines) + 1
        text = raw if isinstance(raw, str) else None
        if len(raw) > MAX_LINE_BYTES:
            raise CLIError(f"line {number} of the input is longer than {MAX_LINE_BYTES} bytes without a "
                           "line break; give one sentence per line")
        total += len(raw)
        if total > MAX_INPUT_BYTES:
            raise CLIError(f"the input is longer than {MAX_INPUT_BYTES >> 20} MiB; translate it in parts")
        if text is None:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CLIError(f"line {number} of the input is not UTF-8 text (byte 0x{raw[error.start]:02x} "
                               f"at column {error.start + 1})") from None
        if "\x00" in text:
            raise CLIError(f"line {number} of the input holds a NUL character; it is not text")
        lines.append(text.rstrip("\r\n"))


def _evaluate(args: argparse.Namespace) -> int:
    outputs = check_outputs_path(args.outputs) if args.outputs is not None else None
    translator = Translator.from_checkpoint(args.checkpoint)
    seed = (read_config(args.checkpoint).get("train") or {}).get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):  # another seed would score another split
        raise CLIError(f"{Path(args.checkpoint) / 'config.json'}: train.seed is {seed!r}, not an integer; the "
                       "data split cannot be reproduced, so the checkpoint's config is damaged")
    splits = load_data(args.data, seed=seed, errors="skip" if args.skip_bad_lines else "raise")
    pairs = [p for v in splits.values() for p in v] if args.split == "all" else splits[args.split]
    pairs = pairs[: args.limit] if args.limit else pairs
    beam, alpha = _decoding(args)
    score, hyps = evaluate_bleu(translator, pairs, beam_size=beam, alpha=alpha)
    how = "greedy" if beam == 1 else f"beam {beam}, alpha {alpha:g}"
    weights = "averaged weights" if (Path(args.checkpoint) / AVERAGED).is_file() else "last weights"
    print(f"chrF = {chrf(hyps, [p.tgt for p in pairs]):.2f}")
    print(f"BLEU = {score:.2f} ({args.split} split of {args.data}, {len(pairs)} sentences, {how}, {weights})")
    if outputs is not None:
        write_outputs(outputs, [p.src for p in pairs], [p.tgt for p in pairs], hyps)
        print(f"translations: {args.outputs} ({len(hyps)} lines)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tformer`` and the ``tformer`` console script."""
    if signal.getsignal(signal.SIGINT) is globals().get("_interrupted_while_starting"):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, Ctrl-C is handled below
    stopped: list[int] = []
    if argv is None and threading.current_thread() is threading.main_thread():
        # SIGTERM (kill, timeout, docker stop) and SIGHUP (a closed terminal) end a command as Ctrl-C
        # does; during training the loop takes them over and saves first (python -m tformer only:
        # a program that calls main() keeps its own handlers)
        def _stop(signum, frame):
            stopped.append(signum)
            raise KeyboardInterrupt

        for stop_signal in STOP_SIGNALS[1:]:
            signal.signal(stop_signal, _stop)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return benchmarks.main(argv[1:])
    # `train --data tatoeba` has its own recipe's defaults (DATA_DEFAULTS), --help included
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--data", default="builtin")
    data = pre.parse_known_args(argv[1:])[0].data if argv[:1] == ["train"] else "builtin"
    data = data if data in DATA_DEFAULTS else "builtin"
    parser = _parser(Settings.for_data(data), data)
    args = parser.parse_args(argv)
    if args.command != "compare":  # compare runs no torch code
        torch.set_num_threads(args.threads if args.threads is not None else _idle_threads())
    name = f"tformer {args.command}"

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"{name}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings(), ExitStack() as stack:
            warnings.showwarning = one_line_warning
            if args.command == "train":
                return _train(args, _explicit_flags(argv, Settings()), stack)
            return {"translate": _translate, "evaluate": _evaluate, "compare": compare}[args.command](args)
    except (CLIError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if stopped:
            print(f"{name}: stopped by {signal.Signals(stopped[-1]).name}", file=sys.stderr)
            return 128 + stopped[-1]
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

if __name__ == "__main__":
    sys.exit(main())
