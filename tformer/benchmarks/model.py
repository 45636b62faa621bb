"""Training throughput of ``tformer.nn.transformer.Transformer`` against ``torch.nn.Transformer``.

Both models have the same sizes (post-LN, as in the paper), the same embeddings × √d_model,
sinusoidal positions and a generator tied to the target embedding; both train with Adam and
cross-entropy on the same batches (random token ids with padding), one step each in turn. The
figure is the ratio of their training speeds in target tokens per second; the tokens/s columns
are absolute speeds on the named machine.

``torch.nn.Transformer`` always ends each stack with a LayerNorm, even post-LN, so it has
4·d_model more parameters; the table records both counts.

``python -m tformer.benchmarks.model`` prints the table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tformer.benchmarks import hardware_note, print_result, time_pair
from tformer.nn.positional import PositionalEncoding
from tformer.nn.transformer import Transformer, TransformerConfig, count_parameters

PAD = 0
# name -> (d_model, h, N, d_ff, vocab, batch, length)
FULL_SIZES = {
    "small": (128, 4, 2, 512, 1000, 32, 32),
    "medium": (256, 8, 2, 1024, 2000, 16, 48),
}
QUICK_SIZES = {"tiny": (32, 4, 1, 64, 50, 4, 8)}


class TorchReference(nn.Module):
    """``torch.nn.Transformer`` with the same embedding, positions and tied generator as tformer's."""

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.d_model = c.d_model
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.d_model)
        self.pos = PositionalEncoding(c.d_model, c.max_len, c.dropout)
        self.core = nn.Transformer(
            c.d_model, c.num_heads, c.num_encoder_layers, c.num_decoder_layers, c.dim_feedforward,
            c.dropout, batch_first=True, norm_first=c.norm_first,
        )
        self.generator = nn.Linear(c.d_model, c.tgt_vocab_size)
        self.generator.weight = self.tgt_embed.weight

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        T = tgt.shape[1]
        # torch's padding masks say True = *ignore* this key: the opposite of tformer's masks.
        src_pad, tgt_pad = src == PAD, tgt == PAD
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt.device).triu(1)  # True = future
        scale = math.sqrt(self.d_model)
        out = self.core(
            self.pos(self.src_embed(src) * scale), self.pos(self.tgt_embed(tgt) * scale),
            tgt_mask=causal, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad,
            memory_key_padding_mask=src_pad, tgt_is_causal=True,
        )
        return self.generator(out)


def make_batches(n: int, batch: int, length: int, vocab: int) -> list[tuple[torch.Tensor, ...]]:
    """``n`` (src, tgt_in, tgt_out) batches of random ids; each row padded after a random length."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (3, batch, length + 1), generator=g)
        lengths = torch.randint(length // 2, length + 1, (2, batch, 1), generator=g)
        pos = torch.arange(length + 1)
        src = ids[0, :, :length].masked_fill(pos[:length] >= lengths[0], PAD)
        tgt = ids[1].masked_fill(pos >= lengths[1] + 1, PAD)
        out.append((src, tgt[:, :-1], tgt[:, 1:]))
    return out


def _trainer(model: nn.Module, batches: list) -> tuple:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    state = {"i": 0}

    def step() -> None:
        src, tgt_in, tgt_out = batches[state["i"] % len(batches)]
        state["i"] += 1
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(name: str, sizes: tuple[int, ...], repeats: int) -> dict:
    d_model, h, n, d_ff, vocab, batch, length = sizes
    c = TransformerConfig(
        src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=d_model, num_heads=h,
        num_encoder_layers=n, num_decoder_layers=n, dim_feedforward=d_ff, dropout=0.1,
        max_len=max(64, length + 1), pad_id=PAD,
    )
    torch.manual_seed(0)
    ours, ref = Transformer(c).train(), TorchReference(c).train()
    batches = make_batches(4, batch, length, vocab)
    tokens = sum(int((b[2] != PAD).sum()) for b in batches) / len(batches)  # target tokens per step
    t_ours, t_ref = time_pair(_trainer(ours, batches), _trainer(ref, batches), repeats, warmup=1)
    return {
        "size": name, "d_model": d_model, "h": h, "N": n, "d_ff": d_ff, "vocab": vocab,
        "batch": f"{batch}×{length}",
        "params_tformer": count_parameters(ours), "params_torch": count_parameters(ref),
        "tformer_tok_s": round(tokens / t_ours), "torch_tok_s": round(tokens / t_ref),
        "ratio": round(t_ref / t_ours, 3),
    }


def run(quick: bool = False) -> dict:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    rows = [measure(name, s, repeats=2 if quick else 8) for name, s in sizes.items()]
    ratios = [r["ratio"] for r in rows]
    span = f"{ratios[0]:.2f}" if len(ratios) == 1 else f"{min(ratios):.2f}–{max(ratios):.2f}"
    return {
        "title": "Training speed: tformer.nn.transformer.Transformer vs torch.nn.Transformer",
        "summary": (
            f"tformer trains at {span}x the tokens/s of torch.nn.Transformer "
            f"of the same size (Adam, dropout 0.1, post-LN; 1.00 = as fast)"
        ),
        "hardware_note": hardware_note() + " The ratio compares training steps of the two models "
        "taken alternately on the same batches in the same run; tokens/s (target tokens, padding "
        "excluded) are absolute speeds on that machine.",
        "metrics": {f"ratio_{r['size']}": r["ratio"] for r in rows},
        "table": rows,
        "plot": {
            "kind": "bar", "x": "size", "y": ["ratio"], "hline": 1.0,
            "title": "Training speed, tformer / torch.nn.Transformer (same size, same data)",
            "xlabel": "model size (see table)", "ylabel": "tokens/s ratio (higher = tformer faster)",
        },
    }


if __name__ == "__main__":
    print_result(run())
