"""Figures for the course: attention maps, positional encodings, loss curves, schedules.

Every function draws with matplotlib, takes an optional ``ax`` to draw into (a new figure is made
otherwise), sets a title and axis labels, and returns the :class:`~matplotlib.figure.Figure`.
Token labels may be Chinese: a font with CJK glyphs is used when one is installed.
"""

from __future__ import annotations

import glob
import math
import re
import warnings
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import tformer._checks as _checks
from tformer.course import diagram

_CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans SC",
    "Noto Serif CJK SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "AR PL UMing CN",
    "Droid Sans Fallback",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
)
_CJK_FILES = (
    "/usr/share/fonts/**/NotoSansCJK*.tt[cf]",
    "/usr/share/fonts/**/NotoSerifCJK*.tt[cf]",
    "/usr/share/fonts/**/wqy-*.tt[cf]",
    "/usr/share/fonts/**/DroidSansFallback*.tt[cf]",
)
_CJK_RE = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
_cjk_font: str | None | bool = False  # False: not looked up yet


def _register_cjk_files() -> None:
    """Add CJK font files installed after matplotlib built its font cache (e.g. fonts-noto-cjk)."""
    for pattern in _CJK_FILES:
        for path in sorted(glob.glob(pattern, recursive=True)):
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError):
                continue


def cjk_font() -> str | None:
    """The name of an installed font with Chinese glyphs, or None if there is none."""
    global _cjk_font
    if _cjk_font is False:
        installed = {f.name for f in font_manager.fontManager.ttflist}
        if not installed.intersection(_CJK_FONTS):
            _register_cjk_files()
            installed = {f.name for f in font_manager.fontManager.ttflist}
        _cjk_font = next((name for name in _CJK_FONTS if name in installed), None)
        if _cjk_font is None:
            # Without a CJK font the characters render as boxes; say nothing about each one.
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
    return _cjk_font


def _font_weight(name: str) -> int | str:
    return next((f.weight for f in font_manager.fontManager.ttflist if f.name == name), "normal")


def _as_2d(name: str, value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().float().numpy()
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a 2-D tensor or array of numbers, got {type(value).__name__}") from error
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D, got shape {arr.shape}; pick one example and head first, "
            "e.g. weights[0, head]"
        )
    return arr


def _check_labels(name: str, labels: Sequence[str] | None, size: int, axis: str) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        raise TypeError(f"{name} must be a list of token strings, got the single string {labels!r}")
    labels = [str(t) for t in labels]
    if len(labels) != size:
        raise ValueError(
            f"{name} has {len(labels)} labels but the weights have {size} {axis}; "
            "give one label per token"
        )
    return labels


def _set_tick_labels(ax: Axes, x_labels: list[str] | None, y_labels: list[str] | None) -> None:
    needs_cjk = any(_CJK_RE.search(t) for t in (x_labels or []) + (y_labels or []))
    font = cjk_font() if needs_cjk else None
    # Ask for the weight the CJK font was registered with (WenQuanYi is "medium", 500): asking for
    # "normal" makes matplotlib log a findfont warning into the notebook's stderr for every label.
    # CJK fonts carry Latin glyphs too, so no fallback family is needed.
    family = {"fontfamily": font, "fontweight": _font_weight(font)} if font else {}
    if x_labels is not None:
        ax.set_xticks(range(len(x_labels)))
        ax.set_xticklabels(x_labels, rotation=90 if max(map(len, x_labels), default=0) > 2 else 0, **family)
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)))
        ax.set_yticklabels(y_labels, **family)


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, dpi=90)
    return fig, ax


def plot_attention(
    weights: torch.Tensor | np.ndarray,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    title: str = "Attention weights",
    ax: Axes | None = None,
    xlabel: str = "key (attended to)",
    ylabel: str = "query (attending)",
    colorbar: bool = True,
) -> Figure:
    """Heatmap of one attention map: row i holds α_{i,·}, the weights query i puts on each key.

    Args:
        weights: ``(T_q, T_k)``.
        x_labels: ``T_k`` key tokens; y_labels: ``T_q`` query tokens.
    """
    w = _as_2d("weights", weights)
    x_labels = _check_labels("x_labels", x_labels, w.shape[1], "keys (columns)")
    y_labels = _check_labels("y_labels", y_labels, w.shape[0], "queries (rows)")
    fig, ax = _new_axes(ax, (1.2 + 0.35 * w.shape[1], 0.8 + 0.35 * w.shape[0]))
    image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(w.max())), aspect="auto")
    _set_tick_labels(ax, x_labels, y_labels)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if colorbar:
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return fig


def plot_attention_heads(
    weights: torch.Tensor | np.ndarray,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    title: str = "Attention weights per head",
    ncols: int = 4,
) -> Figure:
    """A grid of heatmaps, one per head. ``weights`` is ``(h, T_q, T_k)``."""
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().float().numpy()
    w = np.asarray(weights, dtype=float)
    if w.ndim != 3:
        raise ValueError(
            f"weights must be (num_heads, T_q, T_k), got shape {w.shape}; for a batch pick one "
            "example first, e.g. attn_weights[0]"
        )
    _checks.int_at_least("ncols", ncols, 1, "a positive int")
    h, t_q, t_k = w.shape
    x_labels = _check_labels("x_labels", x_labels, t_k, "keys (columns)")
    y_labels = _check_labels("y_labels", y_labels, t_q, "queries (rows)")
    ncols = min(ncols, h)
    nrows = math.ceil(h / ncols)
    cell = 0.5 + 0.25 * max(t_q, t_k)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows + 0.5), dpi=90,
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= h:
            ax.axis("off")
            continue
        plot_attention(w[i], x_labels, y_labels, title=f"head {i}", ax=ax, colorbar=False,
                       xlabel="key", ylabel="query")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_positional_encoding(
    pe: torch.Tensor | np.ndarray,
    title: str = "Sinusoidal positional encoding",
    ax: Axes | None = None,
) -> Figure:
    """Heatmap of a positional table ``(max_len, d_model)``: position down, dimension across."""
    table = _as_2d("pe", pe)
    fig, ax = _new_axes(ax, (6.0, 3.5))
    image = ax.imshow(table, cmap="RdBu", vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("dimension (columns 2i and 2i + 1 form pair i)")
    ax.set_ylabel("position pos")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return fig


def plot_similarity_vs_distance(
    distances: Sequence[float] | np.ndarray | torch.Tensor,
    similarities: Mapping[str, Sequence[float]] | Sequence[float] | np.ndarray | torch.Tensor,
    title: str = "Similarity of positions vs distance",
    ax: Axes | None = None,
    ylabel: str = "dot product PE(pos)·PE(pos+k)",
) -> Figure:
    """Line plot of similarity against distance k; pass a dict to draw several labelled curves."""
    x = np.asarray(distances.cpu() if isinstance(distances, torch.Tensor) else distances, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"distances must be 1-D, got shape {x.shape}")
    curves = similarities if isinstance(similarities, Mapping) else {"": similarities}
    fig, ax = _new_axes(ax, (6.0, 3.5))
    for label, ys in curves.items():
        y = np.asarray(ys.cpu() if isinstance(ys, torch.Tensor) else ys, dtype=float)
        if y.shape != x.shape:
            raise ValueError(
                f"similarities{'[' + repr(label) + ']' if label else ''} has shape {y.shape} but "
                f"distances has shape {x.shape}; give one value per distance"
            )
        ax.plot(x, y, label=label or None)
    if any(curves):
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel("distance k")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig


def plot_loss_curves(
    history: Mapping[str, Sequence[float]],
    title: str = "Loss",
    ax: Axes | None = None,
    xlabel: str = "step",
    ylabel: str = "loss",
    logy: bool = False,
) -> Figure:
    """One line per entry of ``history``, e.g. ``{"train": [...], "valid": [...]}``.

    Curves of different lengths share the x axis as fractions of the run (e.g. a validation loss
    recorded once per epoch next to a training loss recorded every step).
    """
    if not isinstance(history, Mapping) or not history:
        raise TypeError(f"history must be a non-empty dict of name -> list of losses, got {history!r:.80}")
    longest = max(len(v) for v in history.values())
    fig, ax = _new_axes(ax, (6.0, 3.5))
    for name, values in history.items():
        y = np.asarray(list(values), dtype=float)
        if y.ndim != 1 or y.size == 0:
            raise ValueError(f"history[{name!r}] must be a non-empty list of numbers, got {values!r:.80}")
        # Spread a shorter curve over the same range so both end at the last step.
        x = np.linspace(longest / y.size, longest, y.size) if y.size != longest else np.arange(1, longest + 1)
        ax.plot(x, y, label=name, marker="o" if y.size < 30 else None)
    ax.legend()
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig


def plot_lr_schedule(
    lrs: Sequence[float] | Mapping[str, Sequence[float]],
    title: str = "Learning-rate schedule",
    ax: Axes | None = None,
    warmup_steps: int | None = None,
) -> Figure:
    """Learning rate against step; a dict draws several schedules; ``warmup_steps`` marks the peak."""
    curves = lrs if isinstance(lrs, Mapping) else {"": lrs}
    fig, ax = _new_axes(ax, (6.0, 3.5))
    for label, values in curves.items():
        y = np.asarray(list(values), dtype=float)
        if y.ndim != 1 or y.size == 0:
            raise ValueError(f"lrs{'[' + repr(label) + ']' if label else ''} must be a non-empty list of numbers")
        ax.plot(np.arange(1, y.size + 1), y, label=label or None)
    if warmup_steps is not None:
        ax.axvline(warmup_steps, color="gray", linestyle="--", label=f"warmup_steps={warmup_steps}")
    if any(curves) or warmup_steps is not None:
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    return fig


def draw_architecture(model: torch.nn.Module, ax: Axes | None = None) -> Figure:
    """Draw the model's block diagram (see :mod:`tformer.course.diagram`)."""
    return diagram.draw_architecture(model, ax)
