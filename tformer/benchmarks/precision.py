"""Mixed precision on this machine: the same training steps in float32 and under bfloat16 autocast.

Two workloads, each trained by the one loop (:func:`tformer.training.loop.train_epoch`, the
``precision`` argument every recipe passes) in both precisions, from the same initial weights, on
the same batches:

* **translation**: the 15-minute Tatoeba recipe (``Settings.for_data("tatoeba")``: d_model 128,
  2 + 2 layers, English BPE of 4,000 tokens, about 1,500 tokens per batch, Adam with the paper's
  schedule, label smoothing 0.1, dropout 0.1) on the shipped Tatoeba training split;
* **char GPT**: the GPT benchmark's model (nanoGPT's baby Shakespeare: 4 layers, d_model 128,
  block 64, batch 12, AdamW, no dropout) on Tiny Shakespeare.

The two precisions take turns in chunks of steps (which one goes first alternates too), so a
change in machine load hits both; the speed-up is the median over the rounds of the float32 chunk's
time over the bfloat16 chunk's, with its quartiles; the first round of each is a warm-up and not
counted. With one torch thread the times are the process's CPU time (``time.process_time``): on a
machine shared with other work, wall-clock time also counts the moments other processes held the
core, which made single steps vary by a factor of two here, while CPU time counts only this
process's arithmetic. With several threads, idle threads spin and inflate CPU time, so wall-clock
time is used instead.

FLOP utilisation divides the model FLOPs of a step by its median time and by the matmul peaks
measured in the same run: the best rate of an n×n ``torch.mm`` over a few sizes, in float32 and
with bfloat16 inputs (no conversions: the hardware's bfloat16 rate), timed alternately. FLOPs per
step: 6 per weight per token (forward and backward; Kaplan et al., 2020) plus the attention
products, 12·L·T·d per token — for the GPT :func:`tformer.benchmarks.flops_per_token`; for the
encoder–decoder 6·(N_enc·n_src + (N_dec + N_out)·n_tgt) + 12·d·(L_enc·S·n_src + L_dec·(T + S)·n_tgt),
with N the weights of the encoder layers, the decoder layers and the output projection, n the real
(not padding) tokens and S, T the padded lengths of the batch. Run
``python -m tformer.benchmarks.precision``.
"""

from __future__ import annotations

import copy
import os
import statistics

import torch
from torch import nn

from tformer.benchmarks import describe_machine, flops_per_token, machine_info, module_main
from tformer.benchmarks.race import ChunkedRun, clock, race, speedup
from tformer.data.batches import RandomWindows
from tformer.data.sources import tiny_shakespeare
from tformer.nn.transformer import Transformer
from tformer.recipes.language_model import CharLMSettings, new_char_gpt, split_text
from tformer.recipes.translation import Settings, Tokenizers, load_data
from tformer.runtime import bf16_speedup, native_bf16, resolve_precision
from tformer.training.objectives import LabelSmoothingLoss
from tformer.training.optim import (
    make_adamw,
    make_optimizer,
    noam_scheduler,
    warmup_cosine_scheduler,
)

PRECISIONS = {"float32": torch.float32, "bf16": torch.bfloat16}


def matmul_peaks(sizes: tuple[int, ...], repeats: int) -> dict[str, tuple[float, int]]:
    """``{"float32"|"bf16": (best FLOP/s, the n that gave it)}``: the best of ``repeats`` n×n
    ``torch.mm`` per size, the two dtypes timed alternately (bfloat16 inputs, no conversion)."""
    now = clock()[1]
    best = {name: (0.0, 0) for name in PRECISIONS}
    for n in sizes:
        mats = {name: (torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)) for name, dt in PRECISIONS.items()}
        for i in range(repeats + 1):  # round 0 warms the kernels up
            for name, (a, b) in mats.items():
                t0 = now()
                torch.mm(a, b)
                rate = 2 * n**3 / max(now() - t0, 1e-9)
                if i and rate > best[name][0]:
                    best[name] = (rate, n)
    return best


def translation_flops(model: nn.Module, batch) -> float:
    """Training FLOPs of one encoder–decoder batch (the formula in the module docstring)."""
    c = model.config
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    n_out = model.generator.weight.numel()
    src, tgt_in = batch.src, batch.tgt_in
    n_src, n_tgt = int((src != c.pad_id).sum()), int(batch.n_tokens)
    S, T = src.shape[1], tgt_in.shape[1]
    linear = 6 * (n_enc * n_src + (n_dec + n_out) * n_tgt)
    attention = 12 * c.d_model * (c.num_encoder_layers * S * n_src + c.num_decoder_layers * (T + S) * n_tgt)
    return float(linear + attention)


def _race(model, make_optimizer, batches, loss_fn, clip_norm, chunk, rounds) -> dict[str, ChunkedRun]:
    return race({name: ChunkedRun(copy.deepcopy(model), make_optimizer, batches, loss_fn, clip_norm, dt)
                 for name, dt in PRECISIONS.items()}, chunk, rounds)


def _summarise(name: str, runs: dict[str, ChunkedRun], flops_per_step: float, peaks: dict) -> tuple[dict, list]:
    med, q1, q3 = speedup(runs["float32"], runs["bf16"])
    metrics = {"speedup": med, "speedup_q1": q1, "speedup_q3": q3}
    rows = []
    for label, run in runs.items():
        s = statistics.median(run.chunks[1:])
        rate = flops_per_step / s
        tail = run.state.history["step_loss"][-20:]
        metrics.update({f"{label}_ms_per_step": 1000 * s, f"{label}_util_f32": rate / peaks["float32"][0],
                        f"{label}_util_bf16": rate / peaks["bf16"][0]})
        rows.append({"workload": name, "precision": "float32" if label == "float32" else "bfloat16 autocast",
                     "ms/step (median)": round(1000 * s, 1), "GFLOP/s": round(rate / 1e9, 1),
                     "of the float32 peak": f"{100 * rate / peaks['float32'][0]:.1f}%",
                     "of the bf16 peak": f"{100 * rate / peaks['bf16'][0]:.1f}%",
                     "loss, last 20 steps": round(sum(tail) / len(tail), 3)})
    rows[1]["speed-up (quartiles)"] = f"{metrics['speedup']:.2f}× ({q1:.2f}–{q3:.2f})"
    rows[0]["speed-up (quartiles)"] = "1 (reference)"
    return metrics, rows


def _translation(quick: bool, chunk: int, rounds: int, repeat: int = 4):
    """The Tatoeba recipe raced twice: on fresh batches, as a run sees them (every batch has its own
    lengths, so its matrices their own shapes), and on ``repeat`` batches cycled (shapes repeat)."""
    source = "builtin" if quick else "tatoeba"
    s = Settings.for_data(source, **({"batch_tokens": 200} if quick else {}))
    splits = load_data(source, log=lambda _m: None)
    kind, size = ("word", 0) if quick else ("bpe", 4000)
    tok = Tokenizers.build(splits["train"], kind, bpe_vocab_size=size or 8000, min_freq=s.min_freq)
    torch.manual_seed(0)
    model = Transformer(s.model_config(len(tok.src_vocab), len(tok.tgt_vocab), tok.src_vocab.pad_id))
    n = chunk * (rounds + 1)
    fresh = tok.batches(splits["train"], max_tokens=s.batch_tokens, max_len=model.config.max_len - 1,
                        shuffle=True, seed=0)[:n]
    cycled = (fresh[:repeat] * n)[:n]

    def optimizer(m):
        opt = make_optimizer(m)
        return opt, noam_scheduler(opt, m.config.d_model, s.warmup, s.lr_factor)

    loss_fn = LabelSmoothingLoss(s.smoothing, ignore_index=tok.tgt_vocab.pad_id)
    out = []
    for batches in (fresh, cycled):
        runs = _race(model, optimizer, batches, loss_fn, s.clip_norm, chunk, rounds)
        out.append((runs, statistics.mean(translation_flops(model, b) for b in batches)))
    return out, f"Tatoeba recipe ({'built-in corpus, ' if quick else ''}d_model 128, 2+2 layers)"


def _char_gpt(quick: bool, chunk: int, rounds: int):
    s = CharLMSettings()
    text = tiny_shakespeare()
    tok, train_ids, _ = split_text(text[:200_000] if quick else text)
    torch.manual_seed(s.seed)
    model = new_char_gpt(tok, block_size=s.block_size, num_layers=4, num_heads=4, d_model=128, dropout=0.0,
                         bias=False)
    batches = RandomWindows(train_ids, s.block_size, s.batch_size, chunk * (rounds + 1), seed=s.seed)

    def optimizer(m):
        opt = make_adamw(m, s.lr, s.weight_decay, s.betas)
        return opt, warmup_cosine_scheduler(opt, s.warmup, s.steps, s.min_lr / s.lr)

    runs = _race(model, optimizer, batches, LabelSmoothingLoss(0.0, ignore_index=-1), s.clip_norm, chunk, rounds)
    flops = float(flops_per_token(model, model.config, s.block_size) * s.block_size * s.batch_size)
    return runs, flops, "char GPT (4 layers, d_model 128, block 64, batch 12)"


def run(quick: bool = False) -> dict:
    """Both workloads in both precisions (16 rounds each; ``quick``: 2 rounds of 2 small steps)."""
    load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    sizes, repeats = ((128, 256), 2) if quick else ((512, 1024, 2048), 5)
    peaks = matmul_peaks(sizes, repeats)
    ((tr_runs, tr_flops), (cy_runs, cy_flops)), tr_name = _translation(quick, 2 if quick else 4,
                                                                         2 if quick else 12)
    load += [os.getloadavg()[0]] if load else []
    gpt_runs, gpt_flops, gpt_name = _char_gpt(quick, 2 if quick else 8, 2 if quick else 12)
    peaks_after = matmul_peaks(sizes, repeats)
    peaks = {k: max(peaks[k], peaks_after[k]) for k in peaks}  # before and after: the better of the two
    load += [os.getloadavg()[0]] if load else []
    tr_metrics, tr_rows = _summarise("translation", tr_runs, tr_flops, peaks)
    cy_metrics, cy_rows = _summarise("translation, 4 batches repeated", cy_runs, cy_flops, peaks)
    gpt_metrics, gpt_rows = _summarise("char GPT", gpt_runs, gpt_flops, peaks)
    info = machine_info()
    cores = info.get("usable_cores", info.get("cores", 1))
    native = native_bf16("cpu")
    auto = resolve_precision("auto", "cpu")
    verdict = (
        f"resolve_precision('auto') picks {'bfloat16' if auto == torch.bfloat16 else 'float32'} here "
        f"(native bfloat16: {'yes' if native else 'no'}; a 512×512 matrix product under autocast measured "
        f"{bf16_speedup('cpu'):.1f}× as fast as in float32 on one thread)"
    )
    slower = [n for n, m in (("translation", tr_metrics), ("char GPT", gpt_metrics)) if m["speedup"] < 1]
    verdict += (
        f". On fresh batches, whose lengths give every step matrices of new shapes, the translator "
        f"gains {tr_metrics['speedup']:.2f}×; cycling 4 batches, so that the shapes repeat, it gains "
        f"{cy_metrics['speedup']:.2f}×"
    )
    if cy_metrics["speedup"] > tr_metrics["speedup"]:
        verdict += ("; a likely cause is that the bfloat16 products run through oneDNN, which builds (and "
                    "caches) a kernel for every new matrix shape")
    else:
        verdict += "; repeating the shapes did not help here"
    if slower:
        verdict += f"; bfloat16 was slower than float32 for {', '.join(slower)}: train those in float32 here"
    shared = ""
    if load and max(load) > 0.75 * cores:
        shared = (f" The machine was shared with other work while this ran (1-minute load average "
                  f"{min(load):.1f}–{max(load):.1f} on {cores} cores): absolute times are slower than on an "
                  "idle machine and noisier; the speed-ups compare chunks taken alternately, so both "
                  "precisions saw the same load.")
    metrics = {**{f"translation_{k}": v for k, v in tr_metrics.items()},
               **{f"translation_repeated_{k}": v for k, v in cy_metrics.items()},
               **{f"gpt_{k}": v for k, v in gpt_metrics.items()},
               "peak_f32_gflops": peaks["float32"][0] / 1e9, "peak_bf16_gflops": peaks["bf16"][0] / 1e9,
               "translation_mflop_per_step": tr_flops / 1e6, "gpt_mflop_per_step": gpt_flops / 1e6,
               "auto_bf16_speedup_matmul": bf16_speedup("cpu")}
    return {
        "title": "Mixed precision: float32 vs bfloat16 autocast in training (translation and char GPT)",
        "summary": (
            f"bfloat16 autocast trains the translator {tr_metrics['speedup']:.2f}× and the char GPT "
            f"{gpt_metrics['speedup']:.2f}× as fast as float32 (median of alternating chunks); FLOP "
            f"utilisation {100 * tr_metrics['float32_util_f32']:.1f}% / "
            f"{100 * tr_metrics['bf16_util_bf16']:.1f}% (translation) and "
            f"{100 * gpt_metrics['float32_util_f32']:.1f}% / {100 * gpt_metrics['bf16_util_bf16']:.1f}% "
            f"(GPT) of the float32 / bfloat16 matmul peak ({peaks['float32'][0] / 1e9:.0f} / "
            f"{peaks['bf16'][0] / 1e9:.0f} GFLOP/s)"
        ),
        "hardware_note": (
            f"Absolute times on {describe_machine(info)}, measured as {clock()[0]}. Workloads: {tr_name}, {len(tr_runs['bf16'].chunks) - 1} "
            f"rounds of {len(tr_runs['bf16'].state.history['step_loss']) // len(tr_runs['bf16'].chunks)} steps per "
            f"precision, {tr_flops / 1e9:.2f} GFLOP per step; {gpt_name}, "
            f"{len(gpt_runs['bf16'].chunks) - 1} rounds of "
            f"{len(gpt_runs['bf16'].state.history['step_loss']) // len(gpt_runs['bf16'].chunks)} steps, "
            f"{gpt_flops / 1e9:.2f} GFLOP per step (6 FLOPs per weight per token plus 12·L·T·d for "
            f"attention). Peaks: the best n×n torch.mm in float32 (n = {peaks['float32'][1]}) and with "
            f"bfloat16 inputs (n = {peaks['bf16'][1]}), timed alternately before and after the training. "
            f"The loss column is the mean training loss of the last 20 steps: bfloat16 rounds the "
            f"matrix products, while the loss, the weights and Adam's moments stay float32. "
            f"{verdict}. The recipes train in float32 by default (--precision auto or bf16 turns it "
            f"on): the Tatoeba recipe was chosen, and the chapters' outputs measured, in float32.{shared}"
        ),
        "metrics": metrics,
        "table": tr_rows + cy_rows + gpt_rows,
    }


def main(argv: list[str] | None = None) -> None:
    module_main(run, __doc__.splitlines()[0], "2 rounds of 2 steps on small data", argv)


if __name__ == "__main__":
    main()
