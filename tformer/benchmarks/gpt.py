"""tformer's GPT against nanoGPT's published CPU "baby" run on Tiny Shakespeare, character level.

Same data and settings as nanoGPT's ``config/train_shakespeare_char.py`` with its CPU overrides:
first 90% of the characters for training, last 10% for validation; 4 layers, 4 heads,
d_model = 128, block 64, batch 12, 2000 iterations, AdamW (lr 1e-3, β = (0.9, 0.99), weight
decay 0.1 on matrices only), 100 warmup steps then cosine decay to 1e-4, gradient clipping at
1.0, no dropout, no biases.

Validation loss is measured on the *whole* validation split: it is cut into consecutive,
non-overlapping windows of 64 characters (the last one shorter), so every character but the first
is predicted exactly once from the characters before it in its window. nanoGPT instead averages
20 random batches of 12 windows; both estimate the same quantity (mean next-character loss over
contexts of 1..64 characters), ours without sampling noise. To show that noise, the run also
draws nanoGPT's estimate 10 times from the trained model and reports its mean and spread.

The reference figures were measured with nanoGPT's own code on the same machine class (2 CPU
cores); they are quoted, not measured in this run. Run ``python -m tformer.benchmarks.gpt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import torch

from tformer.benchmarks import print_result
from tformer.data.batches import random_windows
from tformer.data.sources import load_text, tiny_shakespeare
from tformer.nn.gpt import GPT
from tformer.recipes.language_model import (
    CharLMSettings,
    evaluate_loss,
    new_char_gpt,
    split_text,
    train_char_lm,
)

# nanoGPT (karpathy/nanoGPT), baby shakespeare_char run on CPU, measured on this machine class.
REFERENCE = {"val_loss": 1.8857, "ms_per_iter": 33.0, "wall_s": 72.0, "peak_mib": 365.0}



def run(
    quick: bool = False, data: str | Path | None = None, seed: int = 1337, threads: int | None = None
) -> dict:
    """Train the baby GPT (2000 iterations; ~20 with ``quick``) and evaluate it.

    ``data``: a text file instead of the Tiny Shakespeare copy shipped in the package.
    """
    title = "GPT vs nanoGPT (Tiny Shakespeare, char level, CPU baby run)"
    text = tiny_shakespeare() if data is None else load_text(data)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(text, quick, seed, title)
    finally:
        torch.set_num_threads(previous_threads)


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (Linux), so a run inside a longer process (the benchmark
    runner, pytest) reports its own peak rather than the process's earlier ones."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mib() -> float:
    """Peak resident memory of this process, in MiB, as nanoGPT's figure measures it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # reported in kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@torch.inference_mode()
def _nanogpt_style_estimates(
    model: GPT, val_ids: torch.Tensor, block: int, batch: int, seed: int, draws: int = 10
) -> tuple[float, float]:
    """nanoGPT's estimator (mean loss of 20 random batches) drawn ``draws`` times: its mean and
    standard deviation show how far a single such figure can sit from the whole-split loss."""
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    values = torch.tensor([
        sum(model(*random_windows(val_ids, block, batch, gen))[1].item() for _ in range(20)) / 20
        for _ in range(draws)
    ])
    return values.mean().item(), values.std().item()


def _run(text: str, quick: bool, seed: int, title: str) -> dict:
    _reset_peak()
    s = CharLMSettings(steps=CharLMSettings.steps, seed=seed)
    iters = 20 if quick else s.steps
    torch.manual_seed(seed)
    tok, train_ids, val_ids = split_text(text)
    if quick:
        val_ids = val_ids[:20_000]
    block, batch = s.block_size, s.batch_size
    model = new_char_gpt(tok, block_size=block, num_layers=4, num_heads=4, d_model=128,
                         dropout=0.0, bias=False)
    t0 = time.perf_counter()
    # the schedule always spans the full 2000 steps; quick runs stop after the first 20
    state = train_char_lm(model, train_ids, s, max_steps=iters)
    losses = torch.tensor(state.history["step_loss"])
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    val_loss = evaluate_loss(model, val_ids, batch_size=64)  # small batches keep the peak memory low
    eval_s = time.perf_counter() - t1
    nano_mean, nano_std = _nanogpt_style_estimates(model, val_ids, block, batch, seed, 2 if quick else 10)
    ms_per_iter = 1000 * train_s / iters
    peak_mib = _peak_mib()
    tail = losses[-min(100, iters):].mean().item()
    table = [
        {"run": "tformer GPT (this run)", "iterations": iters,
         "val loss (whole split)": round(val_loss, 4),
         "val loss (nanoGPT's 20-batch estimate)": f"{nano_mean:.4f} ± {nano_std:.4f}",
         "ms/iter": round(ms_per_iter, 1), "wall s": round(train_s + eval_s, 1),
         "peak MiB (process RSS)": round(peak_mib)},
        {"run": "nanoGPT (published figure, same machine class, not measured here)",
         "iterations": 2000, "val loss (whole split)": "—",
         "val loss (nanoGPT's 20-batch estimate)": REFERENCE["val_loss"], "ms/iter": REFERENCE["ms_per_iter"],
         "wall s": REFERENCE["wall_s"], "peak MiB (process RSS)": REFERENCE["peak_mib"]},
    ]
    return {
        "title": title,
        "summary": (
            # Like with like: nanoGPT's published figure is its own 20-batch estimate.
            f"val loss by nanoGPT's 20-batch estimator {nano_mean:.4f} ± {nano_std:.4f} vs nanoGPT's "
            f"published {REFERENCE['val_loss']} (whole split: {val_loss:.4f}) after {iters} "
            f"iterations; {ms_per_iter:.1f} ms/iter vs {REFERENCE['ms_per_iter']:.0f} "
            f"(speed ratio {REFERENCE['ms_per_iter'] / ms_per_iter:.2f}x)"
        ),
        "hardware_note": (
            f"absolute times on this machine: {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; the nanoGPT "
            "figures are its published run on a 2-core CPU of the same class"
        ),
        "metrics": {
            "val_loss": val_loss, "ms_per_iter": ms_per_iter, "peak_mib": peak_mib,
            "wall_s": train_s + eval_s, "eval_s": eval_s, "train_loss_last100": tail,
            "nanogpt_style_val_mean": nano_mean, "nanogpt_style_val_std": nano_std,
            "iterations": iters, "reference_val_loss": REFERENCE["val_loss"],
            "reference_ms_per_iter": REFERENCE["ms_per_iter"],
            "speed_ratio_vs_reference": REFERENCE["ms_per_iter"] / ms_per_iter,
        },
        "table": table,
        "settings": {**dataclasses.asdict(s), "steps_run": iters,
                     "eval": "whole validation split, non-overlapping windows"},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 20 iterations")
    parser.add_argument("--data", default=None, help="text file (default: Tiny Shakespeare, shipped)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON")
    args = parser.parse_args(argv)
    print_result(run(quick=args.quick, data=args.data, seed=args.seed, threads=args.threads), as_json=args.json)


if __name__ == "__main__":
    main()
