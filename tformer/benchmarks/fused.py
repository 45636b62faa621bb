"""The readable math path of attention against PyTorch's fused kernel, forward + backward.

``tformer.nn.attention.scaled_dot_product_attention`` writes Eq. (1) out step by step and builds the
whole (B, h, T, T) weight matrix; ``tformer.nn.attention.fused_attention`` hands the same arithmetic to
``torch.nn.functional.scaled_dot_product_attention``, which never materialises it. Both run on the
same causal self-attention input, alternately, for growing T; the figure is the speed-up
math time / fused time. The memory column is computed, not measured: the bytes of the float32
weight matrix that only the math path keeps for the backward pass.

``python -m tformer.benchmarks.fused`` prints the table.
"""

from __future__ import annotations

import torch

from tformer.benchmarks import hardware_note, print_result, time_pair
from tformer.masks import causal_mask
from tformer.nn.attention import fused_attention, scaled_dot_product_attention

B, H, D_K = 4, 8, 64
FULL_T = [64, 128, 256, 512, 1024]
QUICK_T = [16, 32]


def measure(T: int, repeats: int, batch: int = B, heads: int = H, d_k: int = D_K) -> dict:
    """One row: best forward+backward time of both paths at sequence length ``T``."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, heads, T, d_k, requires_grad=True) for _ in range(3))
    grad = torch.randn(batch, heads, T, d_k)
    mask = causal_mask(T)

    def math_step() -> None:
        for t in (q, k, v):
            t.grad = None
        out, _ = scaled_dot_product_attention(q, k, v, mask)
        out.backward(grad)

    def fused_step() -> None:
        for t in (q, k, v):
            t.grad = None
        fused_attention(q, k, v, is_causal=True).backward(grad)

    with torch.no_grad():  # two paths, one answer
        torch.testing.assert_close(
            scaled_dot_product_attention(q, k, v, mask)[0], fused_attention(q, k, v, is_causal=True),
            atol=1e-4, rtol=1e-4,
        )
    t_math, t_fused = time_pair(math_step, fused_step, repeats)
    return {
        "T": T, "B": batch, "h": heads, "d_k": d_k,
        "math_ms": round(t_math * 1e3, 3), "fused_ms": round(t_fused * 1e3, 3),
        "speedup": round(t_math / t_fused, 3),
        "weights_MiB": round(batch * heads * T * T * 4 / 2**20, 2),
    }


def run(quick: bool = False) -> dict:
    lengths = QUICK_T if quick else FULL_T
    if quick:
        rows = [measure(T, repeats=2, batch=2, heads=2, d_k=16) for T in lengths]
    else:
        rows = [measure(T, repeats=10 if T <= 256 else 5) for T in lengths]
    last = rows[-1]
    return {
        "title": "Attention: math path vs fused kernel",
        "summary": (
            f"fused kernel {last['speedup']:.2f}x the speed of the math path at T={last['T']} "
            f"(causal, forward+backward, B={last['B']}, h={last['h']}, d_k={last['d_k']})"
        ),
        "hardware_note": hardware_note() + " Speed-ups compare the two paths measured alternately "
        "in the same run; the ms columns are absolute times on that machine; weights_MiB is computed "
        "(B·h·T²·4 bytes), not measured.",
        "metrics": {f"speedup_T{r['T']}": r["speedup"] for r in rows},
        "table": rows,
        "plot": {
            "kind": "line", "x": "T", "y": ["speedup"], "hline": 1.0, "logx": True,
            "title": "Fused kernel speed-up over the math path (causal, fwd+bwd)",
            "xlabel": "sequence length T", "ylabel": "math time / fused time",
        },
    }


if __name__ == "__main__":
    print_result(run())
