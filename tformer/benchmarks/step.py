"""A CPU training step of the translator: tformer's dropout mask and fused Adam vs PyTorch's defaults.

The Tatoeba recipe's model (``Settings.for_data("tatoeba")``: d_model 128, 2 + 2 layers, English BPE
of 4,000 tokens, about 1,500 tokens per batch, dropout 0.1, Adam with the paper's schedule) trains
in four variants, from the same initial weights on the same batches:

* ``torch.nn.Dropout`` and ``torch.optim.Adam`` as PyTorch builds them on the CPU: a Bernoulli draw
  per element for every mask, and a loop over the parameter tensors in the optimizer;
* :class:`tformer.nn.dropout.Dropout` (four mask elements from each 64-bit random draw) with that
  Adam loop;
* ``torch.nn.Dropout`` with the fused Adam kernel (``fused=True``);
* both, which is what :func:`tformer.training.optim.make_optimizer` and tformer's layers give
  every recipe.

The variants take turns in chunks of steps, in an order that reverses every round, so a change in
machine load hits all of them; each speed-up is the median over the rounds of the reference
chunk's time over the variant's, with its quartiles, and the first round is a warm-up. The clock is
:func:`tformer.benchmarks.race.clock`'s. Run ``python -m tformer.benchmarks.step``.
"""

from __future__ import annotations

import copy
import os
import statistics

import torch
from torch import nn

from tformer.benchmarks import describe_machine, machine_info, module_main
from tformer.benchmarks.race import ChunkedRun, clock, race, speedup
from tformer.nn.dropout import Dropout
from tformer.nn.transformer import Transformer
from tformer.recipes.translation import Settings, Tokenizers, load_data
from tformer.training.objectives import LabelSmoothingLoss
from tformer.training.optim import noam_scheduler

REFERENCE = "torch.nn.Dropout, Adam loop (PyTorch's CPU defaults)"
VARIANTS = {  # label -> (key of its metrics, tformer's dropout?, fused Adam?)
    REFERENCE: ("reference", False, False),
    "tformer Dropout, Adam loop": ("dropout", True, False),
    "torch.nn.Dropout, fused Adam": ("fused_adam", False, True),
    "tformer Dropout, fused Adam (tformer's default)": ("both", True, True),
}


def with_torch_dropout(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every :class:`tformer.nn.dropout.Dropout` is a
    ``torch.nn.Dropout`` of the same ``p`` (the reference)."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Dropout):
                setattr(module, name, nn.Dropout(child.p, child.inplace))
    return model


def run(quick: bool = False) -> dict:
    """The four variants, 24 rounds of 15 steps each (``quick``: 2 rounds of 2 small steps)."""
    chunk, rounds = (2, 2) if quick else (15, 24)
    source = "builtin" if quick else "tatoeba"
    s = Settings.for_data(source, **({"batch_tokens": 200} if quick else {}))
    splits = load_data(source, log=lambda _m: None)
    kind, size = ("word", 8000) if quick else ("bpe", 4000)
    tok = Tokenizers.build(splits["train"], kind, bpe_vocab_size=size, min_freq=s.min_freq)
    torch.manual_seed(0)
    model = Transformer(s.model_config(len(tok.src_vocab), len(tok.tgt_vocab), tok.src_vocab.pad_id))
    n, batches, epoch = chunk * (rounds + 1), [], 0
    while len(batches) < n:  # the batches of successive epochs, as a run draws them
        batches += tok.batches(splits["train"], max_tokens=s.batch_tokens, max_len=model.config.max_len - 1,
                               shuffle=True, seed=epoch)
        epoch += 1
    batches = batches[:n]
    loss_fn = LabelSmoothingLoss(s.smoothing, ignore_index=tok.tgt_vocab.pad_id)
    load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []

    runs = {}
    for label, (_, ours, fused) in VARIANTS.items():
        def optimizer(m, fused=fused):
            opt = torch.optim.Adam(m.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9, fused=fused)
            return opt, noam_scheduler(opt, m.config.d_model, s.warmup, s.lr_factor)

        variant = copy.deepcopy(model) if ours else with_torch_dropout(model)
        runs[label] = ChunkedRun(variant, optimizer, batches, loss_fn, s.clip_norm, "float32")
    race(runs, chunk, rounds)
    load += [os.getloadavg()[0]] if load else []

    metrics, rows = {}, []
    for label, one in runs.items():
        med, q1, q3 = speedup(runs[REFERENCE], one)
        ms = 1000 * statistics.median(one.chunks[1:])
        tail = one.state.history["step_loss"][-20:]
        key = VARIANTS[label][0]
        metrics.update({f"{key}_ms_per_step": ms, f"{key}_speedup": med, f"{key}_speedup_q1": q1,
                        f"{key}_speedup_q3": q3})
        rows.append({"variant": label, "ms/step (median)": round(ms, 1),
                     "speed-up (quartiles)": "1 (reference)" if label == REFERENCE
                     else f"{med:.2f}× ({q1:.2f}–{q3:.2f})",
                     "loss, last 20 steps": round(sum(tail) / len(tail), 3)})
    info = machine_info()
    cores = info.get("usable_cores", info.get("cores", 1))
    shared = ""
    if load and max(load) > torch.get_num_threads() + 0.5:  # more than this process's own threads
        shared = (f" The machine was shared with other work while this ran (1-minute load average "
                  f"{min(load):.1f}–{max(load):.1f} on {cores} cores): absolute times are slower than on an "
                  "idle machine; the speed-ups compare chunks taken alternately.")
    return {
        "title": "A training step on the CPU: tformer's dropout mask and fused Adam vs PyTorch's defaults",
        "summary": (
            f"tformer's translator step is {metrics['both_speedup']:.2f}× as fast as with PyTorch's CPU "
            f"defaults: the cheaper dropout mask gives {metrics['dropout_speedup']:.2f}×, the fused Adam "
            f"kernel {metrics['fused_adam_speedup']:.2f}× (median of alternating chunks)"
        ),
        "hardware_note": (
            f"Absolute times on {describe_machine(info)}, measured as {clock()[0]}. Workload: the Tatoeba "
            f"recipe ({'built-in corpus, ' if quick else ''}d_model 128, 2+2 layers, dropout {s.model['dropout']}), "
            f"{rounds} rounds of {chunk} steps per variant after a warm-up round, on the batches of the "
            "first epochs as a run draws them. The masks differ (each variant draws its own), so the "
            "losses differ a little; the loss column shows that none trains worse. Dropout's cost grows "
            "with the number of activations a step drops, the optimizer's with the number of parameter "
            f"tensors ({sum(1 for _ in model.parameters())} here), so other models gain by other "
            f"amounts.{shared}"
        ),
        "metrics": metrics,
        "table": rows,
    }


def main(argv: list[str] | None = None) -> None:
    module_main(run, __doc__.splitlines()[0], "2 rounds of 2 steps on small data", argv)


if __name__ == "__main__":
    main()
