"""tformer's GPT against the same model built from ``torch.nn`` layers, trained side by side.

Data and settings are those of nanoGPT's ``config/train_shakespeare_char.py`` with its CPU
overrides: Tiny Shakespeare by character, the first 90% for training and the last 10% for
validation; 4 layers, 4 heads, d_model = 128, block 64, batch 12, 2000 iterations, AdamW (lr 1e-3,
β = (0.9, 0.99), weight decay 0.1 on matrices only), 100 warmup steps then cosine decay to 1e-4,
gradient clipping at 1.0, no dropout, no biases.

The reference is measured in the same run: :class:`TorchGPT` stacks
``nn.TransformerEncoderLayer(norm_first=True, batch_first=True, activation="gelu", dropout=0)``
under a causal mask, with the same token embedding, learned positions, final LayerNorm and tied
output head. It starts from a copy of tformer's initial weights and trains on the same batches
with the same optimizer and schedule, so the two val losses differ only by rounding. The two are
trained in alternating chunks of steps, so a change in machine load hits both.

Validation loss is measured on the *whole* validation split (consecutive, non-overlapping windows
of 64 characters). nanoGPT instead averages 20 random batches of 12 windows; the run also draws
that estimate 10 times from the trained tformer model to show its spread.

Training FLOP utilisation: FLOPs per iteration ≈ (6·N + 12·L·T·d) per token × tokens, with N the
parameters without the position embedding — Kaplan et al. (2020), §2.1, as nanoGPT's
``estimate_mfu`` counts it — divided by this machine's float32 matmul peak, measured in the same
run by timing a large ``torch.mm`` on the same threads. Run ``python -m tformer.benchmarks.gpt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tformer.benchmarks import describe_machine, flops_per_token, machine_info, print_result
from tformer.data.batches import RandomWindows, random_windows
from tformer.data.sources import load_text, tiny_shakespeare
from tformer.nn.gpt import GPT, GPTConfig
from tformer.recipes.language_model import CharLMSettings, evaluate_loss, new_char_gpt, split_text
from tformer.runtime import peak_memory
from tformer.training.loop import TrainState, train_epoch
from tformer.training.objectives import LabelSmoothingLoss
from tformer.training.optim import make_adamw, warmup_cosine_scheduler

# nanoGPT (karpathy/nanoGPT), baby shakespeare_char run on a 2-core CPU of this machine class,
# measured once with nanoGPT's own code: a historical note only, never compared as a ratio.
NANOGPT_NOTE = {"val_loss": 1.8857, "ms_per_iter": 33.0}
CHUNK = 100  # steps each model trains before the other takes its turn


class TorchGPT(nn.Module):
    """The GPT of :class:`~tformer.nn.gpt.GPT` built from ``torch.nn`` layers (the reference)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model)
        layer = nn.TransformerEncoderLayer(
            c.d_model, c.num_heads, c.dim_feedforward, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True, bias=c.bias,
        )
        self.blocks = nn.TransformerEncoder(layer, c.num_layers, norm=nn.LayerNorm(c.d_model, bias=c.bias),
                                            enable_nested_tensor=False)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied, as in tformer's GPT

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))  # (B, T, d_model)
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)  # -inf above the diagonal
        logits = self.lm_head(self.blocks(x, mask=mask, is_causal=True))  # (B, T, vocab_size)
        loss = None if targets is None else F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss

    @classmethod
    def from_gpt(cls, gpt: GPT) -> TorchGPT:
        """A reference with ``gpt``'s weights (learned positions, GELU, tied head), copied."""
        c = gpt.config
        if c.positions != "learned" or c.activation != "gelu" or not c.tie_weights:
            raise ValueError("TorchGPT mirrors a GPT with learned positions, GELU and a tied head")
        ref = cls(c)
        state = {"tok_emb.weight": gpt.tok_emb.weight, "pos_emb.weight": gpt.pos.embedding.weight,
                 "lm_head.weight": gpt.tok_emb.weight}
        for i, b in enumerate(gpt.blocks):
            p = f"blocks.layers.{i}."
            a = b.attn
            state[p + "self_attn.in_proj_weight"] = torch.cat([a.w_q.weight, a.w_k.weight, a.w_v.weight])
            state[p + "self_attn.out_proj.weight"] = a.w_o.weight
            pairs = {"norm1": b.ln_1, "norm2": b.ln_2, "linear1": b.ffn.linear1, "linear2": b.ffn.linear2}
            for name, mod in pairs.items():
                state[p + name + ".weight"] = mod.weight
                if mod.bias is not None:
                    state[p + name + ".bias"] = mod.bias
            if a.w_q.bias is not None:
                state[p + "self_attn.in_proj_bias"] = torch.cat([a.w_q.bias, a.w_k.bias, a.w_v.bias])
                state[p + "self_attn.out_proj.bias"] = a.w_o.bias
        state["blocks.norm.weight"] = gpt.ln_f.weight
        if gpt.ln_f.bias is not None:
            state["blocks.norm.bias"] = gpt.ln_f.bias
        ref.load_state_dict({k: v.detach().clone() for k, v in state.items()})
        ref.lm_head.weight = ref.tok_emb.weight  # load_state_dict copied into the same tensor; keep it tied
        return ref


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul rate: best of ``repeats`` ``torch.mm`` of two n×n matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


class _Trainer:
    """One model, its AdamW, warmup-cosine schedule and batches: train_char_lm's setup, in chunks."""

    def __init__(self, model: nn.Module, train_ids: torch.Tensor, s: CharLMSettings) -> None:
        self.precision = s.precision
        self.model, self.s, self.state, self.seconds = model, s, TrainState(), 0.0
        self.optimizer = make_adamw(model, s.lr, s.weight_decay, s.betas)
        self.scheduler = warmup_cosine_scheduler(self.optimizer, s.warmup, s.steps, s.min_lr / s.lr)
        self.batches = RandomWindows(train_ids, s.block_size, s.batch_size, s.steps, seed=s.seed)
        self.loss_fn = LabelSmoothingLoss(0.0, ignore_index=-1)  # plain next-character cross-entropy

    def train_until(self, step: int) -> None:
        t0 = time.perf_counter()
        train_epoch(self.model, self.batches, self.loss_fn, self.optimizer, self.scheduler,
                    clip_norm=self.s.clip_norm, state=self.state, max_steps=step, progress=False,
                    precision=self.precision)
        self.seconds += time.perf_counter() - t0


def run(
    quick: bool = False, data: str | Path | None = None, seed: int = 1337, threads: int | None = None,
    precision: str = "float32",
) -> dict:
    """Train the baby GPT and its ``torch.nn`` twin (2000 iterations; 20 with ``quick``), evaluate both.

    ``data``: a text file instead of the Tiny Shakespeare copy shipped in the package.
    """
    text = tiny_shakespeare() if data is None else load_text(data)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(text, quick, seed, precision)
    finally:
        torch.set_num_threads(previous_threads)


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (Linux), so a run inside a longer process reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mib() -> float:
    """Peak resident memory of this process, in MiB (NaN where it cannot be read)."""
    peak = peak_memory()
    return float("nan") if peak is None else peak / 2**20


@torch.inference_mode()
def _nanogpt_style_estimates(
    model: nn.Module, val_ids: torch.Tensor, block: int, batch: int, seed: int, draws: int = 10
) -> tuple[float, float]:
    """nanoGPT's estimator (mean loss of 20 random batches) drawn ``draws`` times: mean and std."""
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    values = torch.tensor([
        sum(model(*random_windows(val_ids, block, batch, gen))[1].item() for _ in range(20)) / 20
        for _ in range(draws)
    ])
    return values.mean().item(), values.std().item()


def _run(text: str, quick: bool, seed: int, precision: str = "float32") -> dict:
    _reset_peak()
    s = CharLMSettings(seed=seed, precision=precision)
    iters = 20 if quick else s.steps  # the schedule always spans 2000 steps; quick runs stop early
    torch.manual_seed(seed)
    tok, train_ids, val_ids = split_text(text)
    if quick:
        val_ids = val_ids[:10_000]  # seconds, not minutes
    block, batch = s.block_size, s.batch_size
    ours = new_char_gpt(tok, block_size=block, num_layers=4, num_heads=4, d_model=128, dropout=0.0, bias=False)
    ref = TorchGPT.from_gpt(ours)
    trainers = {"tformer": _Trainer(ours, train_ids, s), "torch.nn": _Trainer(ref, train_ids, s)}
    chunk = 10 if quick else CHUNK
    for step in range(chunk, iters + chunk, chunk):
        for t in trainers.values():
            t.train_until(min(step, iters))
    peak_n = 1024 if quick else 2048
    peak = matmul_peak_flops(peak_n, 3 if quick else 5)
    fpt = flops_per_token(ours, ours.config, block)
    flops_per_iter = fpt * block * batch
    results = {}
    for name, t in trainers.items():
        t1 = time.perf_counter()
        val = evaluate_loss(t.model, val_ids, batch_size=64)
        ms = 1000 * t.seconds / iters
        results[name] = {"val_loss": val, "ms_per_iter": ms, "eval_s": time.perf_counter() - t1,
                         "mfu": flops_per_iter / (ms / 1000) / peak,
                         "train_loss_last100": sum(t.state.history["step_loss"][-100:])
                         / len(t.state.history["step_loss"][-100:])}
    nano_mean, nano_std = _nanogpt_style_estimates(ours, val_ids, block, batch, seed, 2 if quick else 10)
    peak_mib = _peak_mib()
    a, b = results["tformer"], results["torch.nn"]
    ratio = b["ms_per_iter"] / a["ms_per_iter"]  # > 1: tformer is faster
    table = [
        {"run": "tformer GPT", "iterations": iters, "val loss (whole split)": round(a["val_loss"], 4),
         "ms/iter": round(a["ms_per_iter"], 1), "GFLOP/s": round(flops_per_iter / a["ms_per_iter"] / 1e6, 2),
         "FLOP utilisation": f"{100 * a['mfu']:.1f}%"},
        {"run": "torch.nn.TransformerEncoderLayer stack (same weights, batches, optimizer)", "iterations": iters,
         "val loss (whole split)": round(b["val_loss"], 4), "ms/iter": round(b["ms_per_iter"], 1),
         "GFLOP/s": round(flops_per_iter / b["ms_per_iter"] / 1e6, 2),
         "FLOP utilisation": f"{100 * b['mfu']:.1f}%"},
    ]
    return {
        "title": "GPT training: tformer vs the same model from torch.nn layers (Tiny Shakespeare, char level)",
        "summary": (
            f"{a['ms_per_iter']:.1f} ms/iter vs {b['ms_per_iter']:.1f} for torch.nn's "
            f"TransformerEncoderLayer stack (tformer {ratio:.2f}x as fast), val loss {a['val_loss']:.4f} vs "
            f"{b['val_loss']:.4f} after {iters} iterations; training FLOP utilisation {100 * a['mfu']:.1f}% "
            f"vs {100 * b['mfu']:.1f}% of the measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s"
        ),
        "hardware_note": (
            f"Absolute times on {describe_machine(machine_info())}; both models trained in "
            f"alternating chunks of {chunk} steps"
            f"{'' if precision == 'float32' else f' with precision={precision!r} (bfloat16 autocast where it resolves to bf16)'}; FLOPs per iteration = (6·N + 12·L·T·d)·B·T = "
            f"{flops_per_iter / 1e6:.1f} MFLOP (Kaplan et al., 2020; nanoGPT's estimate_mfu), the peak "
            f"timed as a {peak_n}×{peak_n} torch.mm on the same threads. Historical note, not measured in "
            f"this run and on another machine, so not a speed comparison: nanoGPT's own code once reported "
            f"val loss {NANOGPT_NOTE['val_loss']} by its 20-batch estimate at "
            f"{NANOGPT_NOTE['ms_per_iter']:.0f} ms/iter on a 2-core CPU; the same estimate of tformer's "
            f"model from this run is {nano_mean:.4f} ± {nano_std:.4f}"
        ),
        "metrics": {
            "val_loss": a["val_loss"], "ms_per_iter": a["ms_per_iter"],
            "reference_val_loss": b["val_loss"], "reference_ms_per_iter": b["ms_per_iter"],
            "speed_ratio_vs_reference": ratio, "mfu": a["mfu"], "reference_mfu": b["mfu"],
            "matmul_peak_gflops": peak / 1e9, "flops_per_iter": flops_per_iter,
            "peak_mib": peak_mib, "eval_s": a["eval_s"], "train_loss_last100": a["train_loss_last100"],
            "nanogpt_style_val_mean": nano_mean, "nanogpt_style_val_std": nano_std, "iterations": iters,
        },
        "table": table,
        "settings": {**dataclasses.asdict(s), "steps_run": iters,
                     "eval": "whole validation split, non-overlapping windows"},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 iterations")
    parser.add_argument("--data", default=None, help="text file (default: Tiny Shakespeare, shipped)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--precision", choices=("float32", "bf16", "auto"), default="float32",
                        help="training precision of both models (default: float32)")
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON")
    args = parser.parse_args(argv)
    print_result(run(quick=args.quick, data=args.data, seed=args.seed, threads=args.threads,
                     precision=args.precision), as_json=args.json)


if __name__ == "__main__":
    main()
