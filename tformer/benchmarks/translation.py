"""Translation benchmark: train the CLI's default model on the built-in corpus, report test BLEU.

``python -m tformer.benchmarks.translation`` trains exactly what ``python -m tformer train --data
builtin`` trains (same :class:`tformer.recipes.translation.Settings`, a 3-minute limit), then translates the
held-out test split greedily and with beam search and scores it with sacrebleu. It prints target
tokens per second and the peak resident memory of the process. The goal: BLEU ≥ 90 after ≤ 3
minutes of training on 2 CPU cores, in ≤ 2 GB.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time

import torch

from tformer.benchmarks import print_result
from tformer.data.corpus import builtin_splits
from tformer.recipes.translation import Settings, evaluate_bleu, train_translation
from tformer.runtime import peak_memory


def _peak_rss_mb() -> float:
    peak = peak_memory()
    return float("nan") if peak is None else peak / 2**20


def run(quick: bool = False, precision: str = "float32") -> dict:
    """Train (≤ 3 minutes; ``quick``: a few seconds on a small slice) in ``precision`` and measure BLEU."""
    splits = builtin_splits()
    settings = Settings(precision=precision)
    test = splits["test"]
    if quick:
        settings = Settings(epochs=1, max_minutes=0.05, precision=precision)
        splits = {"train": splits["train"][:2000], "valid": splits["valid"][:50]}
        test = test[:50]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        translator, state = train_translation(splits, out, settings, progress=False, log=lambda _m: None)
        train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    greedy, _ = evaluate_bleu(translator, test, beam_size=1)
    greedy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    beam, _ = evaluate_bleu(translator, test, beam_size=4)
    beam_s = time.perf_counter() - t0
    tok_s = state.history.get("tokens_per_s") or [0.0]
    metrics = {
        "bleu_greedy": round(greedy, 2),
        "bleu_beam4": round(beam, 2),
        "train_seconds": round(train_s, 1),
        "steps": state.step,
        "epochs_completed": state.epoch,
        "target_tokens_per_s": round(sum(tok_s) / len(tok_s)),
        "peak_rss_mb": round(_peak_rss_mb(), 0),
        "beam4_over_greedy_time": round(beam_s / max(greedy_s, 1e-9), 2),
        "torch_threads": torch.get_num_threads(),
    }
    return {
        "title": "Chinese→English translation on the built-in corpus",
        "summary": (
            f"test BLEU {metrics['bleu_greedy']:.1f} greedy / {metrics['bleu_beam4']:.1f} beam 4 after "
            f"{metrics['train_seconds']:.0f} s of training ({state.step} steps); goal BLEU ≥ 90 in ≤ 3 min"
        ),
        "hardware_note": (
            f"absolute times and tokens/s on {platform.processor() or platform.machine()} with "
            f"{torch.get_num_threads()} torch threads; peak memory is the process's max RSS"
            f"{'' if precision == 'float32' else f'; trained with precision={precision!r}'}"
        ),
        "metrics": metrics,
        "table": [
            {"decoder": "greedy", "BLEU": metrics["bleu_greedy"], "seconds": round(greedy_s, 1)},
            {"decoder": "beam 4 (α = 0.6)", "BLEU": metrics["bleu_beam4"], "seconds": round(beam_s, 1)},
        ],
    }


def main() -> None:
    print_result(run(quick="--quick" in sys.argv[1:]))


if __name__ == "__main__":
    main()
