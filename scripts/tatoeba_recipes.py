"""Try one recipe for the Tatoeba Chinese→English translator and log what it scores.

Each call trains one setting on the shipped Tatoeba training split (``tformer.data.tatoeba``)
for a fixed number of minutes, keeps a copy of the weights after every epoch, then scores the
validation split with sacrebleu (BLEU and chrF, detokenized English): the last weights with
greedy decoding and with beam 4, and the average of the last few epochs' weights. One JSON
record per run is appended to ``book/_static/tatoeba_recipes.json``; chapter 8 prints its table
from that file, so every number in the book has this script as its source.

    python scripts/tatoeba_recipes.py run NAME --minutes 4 --threads 1 \
        --tokenizer bpe --bpe-vocab-size 4000 --set d_model=256 --set dropout=0.2
    python scripts/tatoeba_recipes.py table          # the log as a Markdown table
    python scripts/tatoeba_recipes.py alpha NAME CHECKPOINT   # beam 4's length penalty on validation

``alpha`` decodes the validation split of a trained checkpoint greedily and with beam 4 at several
length penalties and appends the scores to ``book/_static/tatoeba_alpha.json`` (chapter 9 explains
the recipe's choice from it).

The machine this was tuned on was shared with other work, so wall-clock minutes meant little:
``--minutes`` counts the CPU time of this process instead (the training loop's clock is replaced
by ``time.process_time``), and with ``--threads 1`` one CPU-minute is one minute of one quiet core.
Two threads on two quiet cores do more than one thread per wall-clock minute, so a budget of N
CPU-minutes here is at most N minutes of ``python -m tformer train --threads 2``. Each record also
keeps the wall-clock minutes and the 1-minute load average at its start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import sacrebleu
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tatoeba_model import parse_changes  # noqa: E402  (the script beside this one)

import tformer.training.loop as loop  # noqa: E402
from tformer.recipes.translation import (
    Settings,
    Translator,
    load_data,
    train_translation,
)
from tformer.training.averaging import average_state_dicts
from tformer.training.checkpoint import read_json

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "book" / "_static" / "tatoeba_recipes.json"
WEIGHTS = "model.safetensors"


def _settings(pairs: list[str], minutes: float, epochs: int) -> Settings:
    return Settings(max_minutes=minutes, epochs=epochs, **parse_changes(pairs))


def load_mean(model: torch.nn.Module, paths: list[Path]) -> None:
    """Load the mean of the weight files ``paths`` into ``model``. ``save_model`` stores a tied
    matrix once, under one of its names, and the other follows it; anything else missing or
    unexpected is an error."""
    weights = average_state_dicts([load_file(str(p)) for p in paths])
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or not set(missing) <= {"generator.weight", "tgt_embed.weight", "src_embed.weight"}:
        raise ValueError(f"the weights in {paths[0].parent} do not fit this model: missing "
                         f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")


def _scores(translator: Translator, pairs, beam: int) -> dict:
    hyps = translator.translate([p.src for p in pairs], beam_size=beam)
    refs = [[p.tgt for p in pairs]]
    return {"bleu": round(sacrebleu.corpus_bleu(hyps, refs).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(hyps, refs).score, 2)}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    settings = _settings(args.set, args.minutes, args.epochs)
    splits = load_data("tatoeba")
    load = os.getloadavg()[0]
    # the training loop's deadline and timings in CPU time of this process (see the docstring)
    loop.time = SimpleNamespace(perf_counter=time.process_time)
    wall0 = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix=f"tatoeba-{args.name}-"))
    snapshots: list[tuple[float, Path]] = []
    t0 = time.process_time()

    def log(message: str) -> None:
        print(message, flush=True)
        # train_translation saves epoch N right after its "epoch N/..." message, so the weights on
        # disk at a message are those of the previous epoch (at "stopped ...": the last full one)
        if message.startswith(("epoch ", "stopped ")) and (out / WEIGHTS).exists():
            keep = out / f"epoch{len(snapshots) + 1}.safetensors"
            shutil.copy(out / WEIGHTS, keep)
            snapshots.append((round(last[0] / 60, 2), keep))
        if message.startswith("epoch "):
            last[0] = time.process_time() - t0

    last = [0.0]
    translator, state = train_translation(
        splits, out, settings, data_source="tatoeba", tokenizer=args.tokenizer,
        bpe_vocab_size=args.bpe_vocab_size, progress=False, log=log, device="cpu",
    )
    train_minutes = (time.process_time() - t0) / 60
    wall_minutes = (time.perf_counter() - wall0) / 60
    valid = splits["valid"][: args.valid_limit]
    record = {
        "name": args.name, "tokenizer": args.tokenizer,
        "bpe_vocab_size": args.bpe_vocab_size if args.tokenizer == "bpe" else None,
        "settings": settings.to_dict(), "threads": args.threads, "load_at_start": round(load, 2),
        "train_minutes": round(train_minutes, 2), "wall_minutes": round(wall_minutes, 2), "steps": state.step, "epochs_done": state.epoch,
        "valid_loss": [round(v, 3) for v in state.history["valid_loss"]],
        "epoch_minutes": [m for m, _ in snapshots], "valid_pairs": len(valid),
        "greedy": _scores(translator, valid, 1),
    }
    print(record["greedy"], flush=True)
    if args.beam > 1:
        record[f"beam{args.beam}"] = _scores(translator, valid, args.beam)
    # averaging: the final weights and those saved at the end of the k - 1 epochs before them
    for k in args.average:
        if len(snapshots) >= k - 1:
            paths = [out / WEIGHTS] + [p for _, p in snapshots[len(snapshots) - (k - 1):]]
            load_mean(translator.model, paths)
            record[f"avg{k}_greedy"] = _scores(translator, valid, 1)
            print(k, record[f"avg{k}_greedy"], flush=True)
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
        shutil.copytree(out, args.keep)
    shutil.rmtree(out, ignore_errors=True)
    _append(record)
    print(json.dumps(record), flush=True)
    return record


def _append(record: dict) -> None:
    records = json.loads(LOG.read_text(encoding="utf-8")) if LOG.exists() else []
    records = [r for r in records if r["name"] != record["name"]] + [record]
    tmp = LOG.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, LOG)


def table(_args: argparse.Namespace) -> None:
    records = json.loads(LOG.read_text(encoding="utf-8"))
    print("| run | tokens | d_model | layers | dropout | warmup | lr× | batch | min | epochs | BLEU | chrF | beam 4 | avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        s, m = r["settings"], r["settings"]["model"]
        tok = f"bpe {r['bpe_vocab_size']}" if r["tokenizer"] == "bpe" else "word"
        beam = r.get("beam4", {}).get("bleu", "")
        avg = max((v["bleu"] for k, v in r.items() if k.startswith("avg")), default="")
        print(f"| {r['name']} | {tok} | {m['d_model']} | {m['num_encoder_layers']} | {m['dropout']} | "
              f"{s['warmup']} | {s['lr_factor']} | {s['batch_tokens']} | {r['train_minutes']} | "
              f"{r['epochs_done']} | {r['greedy']['bleu']} | {r['greedy']['chrf']} | {beam} | {avg} |")


ALPHA_LOG = ROOT / "book" / "_static" / "tatoeba_alpha.json"


def alpha(args: argparse.Namespace) -> None:
    """Beam search's length penalty, chosen on the validation split of a trained checkpoint."""
    torch.set_num_threads(args.threads)
    translator = Translator.from_checkpoint(args.checkpoint, device="cpu")
    valid = load_data("tatoeba")["valid"]
    rows = []
    for beam, a in [(1, 0.0)] + [(4, a) for a in args.alphas]:
        hyps = translator.translate([p.src for p in valid], beam_size=beam, alpha=a)
        refs = [[p.tgt for p in valid]]
        rows.append({"beam": beam, "alpha": a, "bleu": round(sacrebleu.corpus_bleu(hyps, refs).score, 2),
                     "chrf": round(sacrebleu.corpus_chrf(hyps, refs).score, 2),
                     "words": round(sum(len(h.split()) for h in hyps) / len(hyps), 2)})
        print(rows[-1], flush=True)
    record = {"name": args.name, "checkpoint_step": read_json(Path(args.checkpoint) / "state.json")["step"],
              "valid_pairs": len(valid),
              "reference_words": round(sum(len(p.tgt.split()) for p in valid) / len(valid), 2), "rows": rows}
    records = json.loads(ALPHA_LOG.read_text(encoding="utf-8")) if ALPHA_LOG.exists() else []
    records = [r for r in records if r["name"] != args.name] + [record]
    tmp = ALPHA_LOG.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, ALPHA_LOG)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one recipe and append its scores to the log")
    r.add_argument("name")
    r.add_argument("--minutes", type=float, default=4.0)
    r.add_argument("--epochs", type=int, default=1000)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--tokenizer", choices=["word", "bpe"], default="word")
    r.add_argument("--bpe-vocab-size", type=int, default=8000)
    r.add_argument("--set", action="append", default=[], help="KEY=VALUE: a Settings or model field")
    r.add_argument("--beam", type=int, default=0, help="also score beam search of this width")
    r.add_argument("--average", type=int, action="append", default=[], help="also score the mean of the last K epochs")
    r.add_argument("--keep", default=None, help="copy the checkpoint directory here")
    r.add_argument("--valid-limit", type=int, default=None, help="score only the first N validation pairs")
    sub.add_parser("table", help="print the log as a Markdown table")
    a = sub.add_parser("alpha", help="score beam 4 with several length penalties on the validation split")
    a.add_argument("name")
    a.add_argument("checkpoint")
    a.add_argument("--alphas", type=float, nargs="+", default=[0.6, 1.0, 1.5, 2.0])
    a.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    {"run": run, "table": table, "alpha": alpha}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
