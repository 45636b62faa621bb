"""The "why" of the course, measured: recurrent translators beside the Transformer (chapter 9b).

Trains three Chinese→English models on the same Tatoeba split, with the same tokenizers, batches,
loss (label smoothing 0.1), optimizer (Adam, the paper's β and ε), learning-rate schedule shape,
gradient clipping and CPU budget:

* a GRU encoder–decoder without attention (the source squeezed into one vector),
* the same with additive attention (Bahdanau et al., 2015),
* the course's small Transformer (the CLI's default size).

The budget is CPU time on one thread (4 CPU-minutes per model by default), and the models take
turns of 20 steps, so on a machine shared with other work each model still gets the same amount
of computation. Then each translates the test split greedily, and the script writes BLEU and chrF
(sacrebleu), CPU seconds per epoch, BLEU by source length and every test sentence's three
translations to ``OUT/results.json`` (atomically).

    python scripts/train_rnn_vs_transformer.py                    # 4 CPU-minutes per model (make rnn-vs-transformer)
    python scripts/train_rnn_vs_transformer.py --max-steps 60 --test 200 --out /tmp/tiny   # a quick look
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import sacrebleu
import torch

from tformer.metrics import bleu
from tformer.nn.rnn import RNNConfig, RNNSeq2Seq
from tformer.nn.transformer import Transformer, count_parameters
from tformer.recipes.translation import Settings, Tokenizers, Translator, load_data
from tformer.training.checkpoint import write_json
from tformer.training.loop import TrainState, fit
from tformer.training.objectives import LabelSmoothingLoss
from tformer.training.optim import make_optimizer, noam_scheduler

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "_build" / "rnn_vs_transformer"
# Source lengths in Chinese characters; Tatoeba sentences are short (median about 9).
LENGTH_BUCKETS = [(1, 6), (7, 8), (9, 10), (11, 12), (13, 15), (16, 200)]
NAMES = ("GRU", "GRU + attention", "Transformer")


def build_models(tok: Tokenizers, settings: Settings) -> dict[str, tuple[torch.nn.Module, int]]:
    """The three models, each with the width its learning-rate schedule is scaled by (Eq. 3)."""
    sizes = dict(src_vocab_size=len(tok.src_vocab), tgt_vocab_size=len(tok.tgt_vocab), pad_id=tok.src_vocab.pad_id,
                 max_len=settings.model["max_len"], dropout=settings.model["dropout"])
    models = {}
    for name, attention in (("GRU", "none"), ("GRU + attention", "additive")):
        torch.manual_seed(settings.seed)
        cfg = RNNConfig(attention=attention, embed_dim=128, hidden_size=256, **sizes)
        models[name] = (RNNSeq2Seq(cfg), cfg.hidden_size)
    torch.manual_seed(settings.seed)
    transformer = Transformer(settings.model_config(len(tok.src_vocab), len(tok.tgt_vocab), tok.src_vocab.pad_id))
    models["Transformer"] = (transformer, transformer.config.d_model)
    return models


def train_all(models, tok: Tokenizers, splits, settings: Settings, *, cpu_minutes: float | None,
              max_steps: int | None, chunk: int = 20) -> dict[str, dict]:
    """Train every model with the same loop and settings, ``chunk`` steps at a time in turns, until
    each has used ``cpu_minutes`` of CPU time (or made ``max_steps`` steps); return what each cost.

    CPU time (``time.process_time``), not wall-clock time, is the budget: on a machine shared with
    other work a model gets the same amount of computation whenever its turn comes.
    """
    epoch_batches: dict[int, list] = {}

    def batches(pairs, **kw):
        return tok.batches(pairs, max_tokens=settings.batch_tokens, max_len=settings.model["max_len"] - 1, **kw)

    def train_batches(epoch):  # built once per epoch, not once per turn
        if epoch not in epoch_batches:
            epoch_batches.clear()
            epoch_batches[epoch] = batches(splits["train"], shuffle=True, seed=settings.seed * 1000 + epoch)
        return epoch_batches[epoch]

    valid = batches(splits["valid"], shuffle=False)
    per_epoch = len(train_batches(0))
    loss_fn = LabelSmoothingLoss(settings.smoothing, ignore_index=tok.tgt_vocab.pad_id)
    runs = {}
    for name, (model, width) in models.items():
        optimizer = make_optimizer(model)
        runs[name] = dict(model=model, optimizer=optimizer, state=TrainState(), cpu=0.0, done=False,
                          scheduler=noam_scheduler(optimizer, width, settings.warmup, settings.lr_factor))
    budget = None if cpu_minutes is None else cpu_minutes * 60
    while not all(run["done"] for run in runs.values()):
        for name, run in runs.items():
            if run["done"]:
                continue
            st: TrainState = run["state"]
            stop = st.step + chunk if max_steps is None else min(st.step + chunk, max_steps)
            t0 = time.process_time()
            run["state"] = st = fit(
                run["model"], train_batches, valid, epochs=10_000, loss_fn=loss_fn,
                optimizer=run["optimizer"], scheduler=run["scheduler"], state=st, device="cpu",
                clip_norm=settings.clip_norm, max_steps=stop, progress=False,
                log=lambda msg, n=name: None if msg.startswith("stopped") else print(f"{n}: {msg}", flush=True),
            )  # fmt: skip
            run["cpu"] += time.process_time() - t0
            run["done"] = (budget is not None and run["cpu"] >= budget) or (max_steps is not None and st.step >= max_steps)
    out = {}
    for name, run in runs.items():
        st = run["state"]
        epochs = st.step / per_epoch
        out[name] = dict(
            steps=st.step, epochs=round(epochs, 3), cpu_seconds=round(run["cpu"], 1),
            cpu_seconds_per_epoch=round(run["cpu"] / max(epochs, 1e-9), 1),
            wall_seconds_per_epoch=round(st.elapsed / max(epochs, 1e-9), 1),
            valid_loss=[round(v, 4) for v in st.history["valid_loss"]],
            last_train_loss=round(sum(st.history["step_loss"][-50:]) / max(len(st.history["step_loss"][-50:]), 1), 4),
            parameters=count_parameters(run["model"]),
        )
    return out


def bleu_by_length(lengths: list[int], hyps: list[str], refs: list[str]) -> list[dict]:
    """Corpus BLEU of the test sentences whose source length falls in each bucket."""
    rows = []
    for lo, hi in LENGTH_BUCKETS:
        idx = [i for i, n in enumerate(lengths) if lo <= n <= hi]
        if idx:
            rows.append(dict(lo=lo, hi=hi, n=len(idx), bleu=round(bleu([hyps[i] for i in idx], [refs[i] for i in idx]), 2)))
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=4.0, help="CPU minutes of training per model (default 4)")
    p.add_argument("--max-steps", type=int, default=None, help="stop each model after this many steps instead")
    p.add_argument("--test", type=int, default=None, help="translate only the first N test pairs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU time then counts work)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        p.error(f"--max-steps={args.max_steps} must be >= 1")
    minutes = None if args.max_steps is not None else args.minutes
    if minutes is not None and not minutes > 0:
        p.error(f"--minutes={args.minutes} must be > 0")
    if args.threads < 1:
        p.error(f"--threads={args.threads} must be >= 1")
    torch.set_num_threads(args.threads)

    settings = Settings()  # the CLI's defaults: batches, warmup, label smoothing, clipping, seed
    splits = load_data("tatoeba")
    test = splits["test"][: args.test] if args.test else splits["test"]
    tok = Tokenizers.build(splits["train"], "word", min_freq=settings.min_freq)
    models = build_models(tok, settings)
    runs = train_all(models, tok, splits, settings, cpu_minutes=minutes, max_steps=args.max_steps)

    sources, refs = [q.src for q in test], [q.tgt for q in test]
    lengths = [len(tok.tokenize_src(s)) for s in sources]
    hyps = {}
    for name, (model, _) in models.items():
        t0 = time.perf_counter()
        hyps[name] = Translator(model.eval(), tok, device="cpu").translate(sources)
        runs[name]["decode_seconds"] = round(time.perf_counter() - t0, 1)
        runs[name]["bleu"] = round(bleu(hyps[name], refs), 2)
        runs[name]["chrf"] = round(sacrebleu.corpus_chrf(hyps[name], [refs]).score, 2)
        runs[name]["bleu_by_length"] = bleu_by_length(lengths, hyps[name], refs)
        print(f"{name}: BLEU {runs[name]['bleu']}, chrF {runs[name]['chrf']}, "
              f"{runs[name]['cpu_seconds_per_epoch']} CPU s/epoch, {runs[name]['epochs']} epochs", flush=True)

    result = dict(
        budget=dict(cpu_minutes_per_model=minutes, max_steps=args.max_steps,
                    full=args.max_steps is None and args.test is None),
        machine=dict(threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version()),
        data=dict(source="tatoeba", train=len(splits["train"]), valid=len(splits["valid"]), test=len(test),
                  src_vocab=len(tok.src_vocab), tgt_vocab=len(tok.tgt_vocab)),
        settings=dict(batch_tokens=settings.batch_tokens, warmup=settings.warmup, lr_factor=settings.lr_factor,
                      smoothing=settings.smoothing, clip_norm=settings.clip_norm, seed=settings.seed,
                      transformer=settings.model, rnn=models["GRU"][0].config.to_dict()),
        models=runs,
        sentences=[dict(src=s, ref=r, length=n, hyp={name: hyps[name][i] for name in models})
                   for i, (s, r, n) in enumerate(zip(sources, refs, lengths))],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", result)
    print(f"wrote {args.out / 'results.json'}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
