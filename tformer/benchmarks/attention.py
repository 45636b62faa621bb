"""tformer's MultiHeadAttention against torch.nn.MultiheadAttention, forward + backward.

Both modules get the same weights (``nn.MultiheadAttention`` keeps W_Q, W_K, W_V stacked in one
``in_proj_weight``), their outputs are checked to agree, and then a training step's worth of work
(forward, backward) is timed alternately on the same input. The figure that matters is the ratio
tformer / torch: 1.0 means the readable module costs nothing over PyTorch's own.

``python -m tformer.benchmarks.attention`` prints the table.
"""

from __future__ import annotations

import torch
from torch import nn

from tformer.benchmarks import hardware_note, print_result, time_pair
from tformer.nn.attention import MultiHeadAttention

# (B, T, d_model, h, causal)
FULL_SIZES = [
    (32, 32, 128, 4, False),
    (16, 128, 256, 8, False),
    (16, 128, 256, 8, True),
    (8, 256, 512, 8, False),
]
QUICK_SIZES = [(2, 16, 32, 4, False), (2, 16, 32, 4, True)]


def paired_modules(d_model: int, num_heads: int) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    """A tformer module and a ``torch.nn.MultiheadAttention`` holding the same weights."""
    ours = MultiHeadAttention(d_model, num_heads)
    ref = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        ref.out_proj.weight.copy_(ours.w_o.weight)
        ref.out_proj.bias.copy_(ours.w_o.bias)
    return ours, ref


def _step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, call) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    out = call(x)
    out.backward(grad)


def measure(B: int, T: int, d_model: int, h: int, causal: bool, repeats: int) -> dict:
    """One row: best forward+backward time of both modules on the same input, and their ratio."""
    torch.manual_seed(0)
    ours, ref = paired_modules(d_model, h)
    x = torch.randn(B, T, d_model, requires_grad=True)
    grad = torch.randn(B, T, d_model)
    # torch's float mask adds -inf above the diagonal (True would mean "masked" in its bool form,
    # the opposite of tformer's True = may attend), and is_causal lets it pick a causal kernel.
    torch_mask = nn.Transformer.generate_square_subsequent_mask(T) if causal else None

    def call_ours(inp: torch.Tensor) -> torch.Tensor:
        return ours(inp, inp, inp, is_causal=causal)

    def call_ref(inp: torch.Tensor) -> torch.Tensor:
        return ref(inp, inp, inp, attn_mask=torch_mask, is_causal=causal, need_weights=False)[0]

    with torch.no_grad():  # same weights, same answer, before anything is timed
        torch.testing.assert_close(call_ours(x), call_ref(x), atol=1e-4, rtol=1e-4)
    t_ours, t_ref = time_pair(
        lambda: _step(ours, x, grad, call_ours), lambda: _step(ref, x, grad, call_ref), repeats
    )
    return {
        "B": B, "T": T, "d_model": d_model, "h": h, "mask": "causal" if causal else "none",
        "tformer_ms": round(t_ours * 1e3, 3), "torch_ms": round(t_ref * 1e3, 3),
        "ratio": round(t_ours / t_ref, 3),
    }


def run(quick: bool = False) -> dict:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    rows = [measure(*s, repeats=2 if quick else 15) for s in sizes]
    ratios = [r["ratio"] for r in rows]
    worst = max(ratios)
    return {
        "title": "Multi-head attention: tformer vs torch.nn.MultiheadAttention",
        "summary": (
            f"forward+backward time ratio tformer/torch between {min(ratios):.2f} and {worst:.2f} "
            f"over {len(rows)} sizes (1.00 = as fast as PyTorch's module)"
        ),
        "hardware_note": hardware_note() + " The ratio column compares the two modules measured "
        "alternately in the same run; the ms columns are absolute times on that machine.",
        "metrics": {"ratio_min": min(ratios), "ratio_max": worst},
        "table": rows,
        "plot": {
            "kind": "bar", "x": "label", "y": ["ratio"], "hline": 1.0,
            "title": "tformer / torch.nn.MultiheadAttention (forward+backward)",
            "xlabel": "B × T × d_model, h, mask", "ylabel": "time ratio (lower = tformer faster)",
            "labels": [f"{r['B']}×{r['T']}×{r['d_model']}, h={r['h']}, {r['mask']}" for r in rows],
        },
    }


if __name__ == "__main__":
    print_result(run())
