"""Figure 1 of Vaswani et al. (2017) redrawn from a live :class:`~tformer.nn.transformer.Transformer`.

Every box is labelled with the attribute path of the module that computes it (``src_embed``,
``encoder.layers[i].self_attn``, ``generator``, …) and with sizes read from the model itself, so
the picture changes when the model does: pre-LN models (``norm_first=True``) get their
LayerNorms before each sub-layer and a final LayerNorm per stack, tied weights are marked.
``tformer.course.viz.draw_architecture`` is this function.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

COLORS = {
    "embed": "#f7c6c7", "attn": "#fcd9a8", "norm": "#f3f3b0", "ffn": "#c5e8f7",
    "add": "#ffffff", "linear": "#d9d2f0", "softmax": "#cfe8c4",
}
W, H = 3.6, 0.62  # box width and height in axis units


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _stack_stages(layer: Any, prefix: str, cross: bool) -> tuple[list[tuple], list[tuple[int, int]]]:
    """(kind, title, detail) per stage, bottom-up, and residual (from_stage, add_stage) pairs."""
    h = layer.self_attn.num_heads
    d, d_ff = layer.ffn.linear1.in_features, layer.ffn.linear1.out_features
    subs = [("attn", f"{'Masked ' if cross else ''}Multi-Head Attention, h={h}", f"{prefix}.self_attn")]
    if cross:
        subs.append(("attn", f"Cross Multi-Head Attention, h={h}", f"{prefix}.cross_attn"))
    act = layer.ffn.activation
    subs.append(("ffn", f"Feed Forward {d}→{d_ff}→{d} ({act})", f"{prefix}.ffn"))
    stages: list[tuple] = []
    residuals: list[tuple[int, int]] = []
    for i, sub in enumerate(subs, start=1):
        if layer.norm_first:  # pre-LN: x + Sublayer(LayerNorm(x))
            start = len(stages)
            stages += [("norm", "LayerNorm", f"{prefix}.norm{i}"), sub, ("add", "+", "")]
        else:  # post-LN: LayerNorm(x + Sublayer(x))
            start = len(stages)
            stages += [sub, ("norm", "Add & Norm", f"{prefix}.norm{i}")]
        residuals.append((start, len(stages) - 1))
    return stages, residuals


def _box(ax: Axes, x: float, y: float, kind: str, title: str, detail: str) -> None:
    if kind == "add":
        ax.add_patch(plt.Circle((x, y), 0.2, fc="white", ec="black", lw=1.0, zorder=3))
        ax.text(x, y, "+", ha="center", va="center", fontsize=11, zorder=4)
        return
    ax.add_patch(FancyBboxPatch((x - W / 2, y - H / 2), W, H, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=COLORS[kind], ec="black", lw=0.8, zorder=3))
    ax.text(x, y + (0.1 if detail else 0), title, ha="center", va="center", fontsize=8, zorder=4)
    if detail:
        ax.text(x, y - 0.16, detail, ha="center", va="center", fontsize=6.5, family="monospace",
                color="#333333", zorder=4)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], **kw: Any) -> None:
    ax.annotate("", xy=end, xytext=start, zorder=2,
                arrowprops=dict(arrowstyle="-|>", lw=0.9, color=kw.get("color", "black"),
                                shrinkA=0, shrinkB=0, connectionstyle=kw.get("conn", "arc3")))


def _edge(kind: str, y: float, top: bool) -> float:
    half = 0.2 if kind == "add" else H / 2
    return y + half if top else y - half


def _column(ax: Axes, x: float, y0: float, step: float, stages: list[tuple],
            residuals: list[tuple[int, int]], side: float) -> list[float]:
    ys = [y0 + i * step for i in range(len(stages))]
    for i, (kind, title, detail) in enumerate(stages):
        _box(ax, x, ys[i], kind, title, detail)
        if i:
            _arrow(ax, (x, _edge(stages[i - 1][0], ys[i - 1], True)), (x, _edge(kind, ys[i], False)))
    for a, b in residuals:  # branch just below stage a, run beside the column, enter stage b
        y_branch = ys[a] - step / 2
        x_side = x + side * (W / 2 + 0.25)
        ax.plot([x, x_side, x_side], [y_branch, y_branch, ys[b]], color="black", lw=0.9, zorder=2)
        x_end = x + side * (0.2 if stages[b][0] == "add" else W / 2)
        _arrow(ax, (x_side, ys[b]), (x_end, ys[b]))
    return ys


def draw_architecture(model: Any, ax: Axes | None = None) -> Figure:
    """Draw the encoder–decoder of ``model`` in the layout of the paper's Figure 1.

    Args:
        model: a :class:`tformer.nn.transformer.Transformer` (any sizes, post-LN or pre-LN).
        ax: axes to draw into; a new figure is made when None.

    Returns:
        The matplotlib ``Figure``.
    """
    for attr in ("encoder", "decoder", "src_embed", "tgt_embed", "generator", "config"):
        if not hasattr(model, attr):
            raise TypeError(
                f"model must be a tformer.nn.transformer.Transformer (it has no .{attr}), got {type(model).__name__}"
            )
    enc_layer, dec_layer = model.encoder.layers[0], model.decoder.layers[0]
    n_enc, n_dec = len(model.encoder.layers), len(model.decoder.layers)
    pre_ln = enc_layer.norm_first
    enc_stages, enc_res = _stack_stages(enc_layer, "encoder.layers[i]", cross=False)
    dec_stages, dec_res = _stack_stages(dec_layer, "decoder.layers[i]", cross=True)
    step = 0.95
    n_dec_st = len(dec_stages)
    offset = n_dec_st - len(enc_stages)  # encoder stack sits level with the decoder's top part
    own_figure = ax is None
    if ax is None:
        fig, ax = plt.subplots(dpi=90)
    else:
        fig = ax.figure
    xe, xd = 2.5, 8.1
    y_embed, y_pos = 0.7, 1.55

    # --- embeddings and positions ---------------------------------------------------------
    src_v, tgt_v, d = model.src_embed.num_embeddings, model.tgt_embed.num_embeddings, model.config.d_model
    shared = " (one table)" if model.src_embed is model.tgt_embed else ""
    for x, name, v, word in ((xe, "src_embed", src_v, "Input"), (xd, "tgt_embed", tgt_v, "Output")):
        ax.text(x, 0.05, f"{word}s (token ids)" if word == "Input" else "Outputs (shifted right)",
                ha="center", fontsize=8)
        _arrow(ax, (x, 0.2), (x, y_embed - H / 2))
        _box(ax, x, y_embed, "embed", f"{word} Embedding × √d_model", f"{name}: {v}×{d}{shared}")
        _box(ax, x, y_pos, "add", "+", "")
        _arrow(ax, (x, y_embed + H / 2), (x, y_pos - 0.2))
        side = -1 if word == "Input" else 1
        ax.text(x + side * 0.32, y_pos, "Positional\nEncoding (pos)", ha="right" if side < 0 else "left",
                va="center", fontsize=7)

    # --- the two stacks ---------------------------------------------------------------------
    y_dec0 = 2.6
    y_enc0 = y_dec0 + offset * step
    enc_ys = _column(ax, xe, y_enc0, step, enc_stages, enc_res, side=-1)
    dec_ys = _column(ax, xd, y_dec0, step, dec_stages, dec_res, side=+1)
    _arrow(ax, (xe, y_pos + 0.2), (xe, _edge(enc_stages[0][0], enc_ys[0], False)))
    _arrow(ax, (xd, y_pos + 0.2), (xd, _edge(dec_stages[0][0], dec_ys[0], False)))
    tops = {}
    for x, ys, stages, stack, n, tag in ((xe, enc_ys, enc_stages, model.encoder, n_enc, "encoder"),
                                         (xd, dec_ys, dec_stages, model.decoder, n_dec, "decoder")):
        top = ys[-1]
        if stack.norm is not None:
            top = ys[-1] + step
            _box(ax, x, top, "norm", "LayerNorm (final)", f"{tag}.norm")
            _arrow(ax, (x, _edge(stages[-1][0], ys[-1], True)), (x, top - H / 2))
        tops[tag] = top
        lo, hi = ys[0] - step / 2 - 0.05, ys[-1] + step / 2 - 0.1
        ax.add_patch(Rectangle((x - W / 2 - 0.45, lo), W + 0.9, hi - lo, fc="#f2f2f2", ec="#777777",
                               lw=1.0, zorder=1))
        per_layer = _count(stack.layers[0])
        label = f"N = {n}\n{per_layer:,}\nparams/layer"
        lx = x - W / 2 - 0.6 if tag == "encoder" else x + W / 2 + 0.6
        ax.text(lx, (lo + hi) / 2, label, ha="right" if tag == "encoder" else "left", va="center", fontsize=8)

    # --- memory into every decoder layer's cross-attention ------------------------------------
    cross_i = next(i for i, s in enumerate(dec_stages) if s[2].endswith("cross_attn"))
    y_mem = tops["encoder"] + H / 2 + 0.4
    _arrow(ax, (xe, tops["encoder"] + H / 2), (xe, y_mem))
    ax.plot([xe, (xe + xd) / 2], [y_mem, y_mem], color="#1f5fa8", lw=1.2, zorder=2)
    ax.plot([(xe + xd) / 2] * 2, [y_mem, dec_ys[cross_i]], color="#1f5fa8", lw=1.2, zorder=2)
    _arrow(ax, ((xe + xd) / 2, dec_ys[cross_i]), (xd - W / 2, dec_ys[cross_i]), color="#1f5fa8")
    ax.text(xe + 0.1, y_mem + 0.08, "memory: K, V for every decoder\nlayer's cross-attention",
            fontsize=7, color="#1f5fa8", ha="left", va="bottom")

    # --- output projection and softmax ----------------------------------------------------------
    y_lin = tops["decoder"] + step * 1.1
    y_soft = y_lin + step
    tied = " (weight = tgt_embed.weight)" if model.generator.weight is model.tgt_embed.weight else ""
    _box(ax, xd, y_lin, "linear", f"Linear {d}→{tgt_v}", f"generator{tied}")
    _box(ax, xd, y_soft, "softmax", "Softmax", "(inside the loss / decoding)")
    _arrow(ax, (xd, tops["decoder"] + H / 2), (xd, y_lin - H / 2))
    _arrow(ax, (xd, y_lin + H / 2), (xd, y_soft - H / 2))
    ax.text(xd, y_soft + H / 2 + 0.15, "Output probabilities", ha="center", fontsize=8)

    norm = "pre-LN (norm_first=True)" if pre_ln else "post-LN (as in the paper)"
    total = sum(p.numel() for p in model.parameters())
    ax.set_title(f"{type(model).__name__}: {total:,} parameters, {norm}", fontsize=10)
    ax.set_xlim(-1.9, 12.5)
    ax.set_ylim(-0.2, y_soft + 0.8)
    if own_figure:  # 0.78 inch per axis unit keeps the labels inside their boxes
        fig.set_size_inches(14.4 * 0.78, (y_soft + 1.0) * 0.78)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig
