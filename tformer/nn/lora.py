"""LoRA: fine-tune a frozen model through low-rank updates of its linear layers (Hu et al., 2021).

A pretrained weight W (out × in) stays frozen; the update is learned as a product of two thin
matrices, ΔW = B A with A (r × in) and B (out × r), r ≪ min(in, out), so the layer computes
``h = W x + (α / r) · B A x`` (Hu et al., 2021, §4.1, Eq. 3). A starts random and B at zero, so
training starts from the pretrained model exactly. Only A and B are trained and saved:
r·(in + out) numbers per adapted layer instead of in·out. After training, B A can be added into W
(:func:`merge_lora`) and inference costs nothing extra (§4.1, "No Additional Inference Latency").

:func:`lora_state_dict` holds all a LoRA run learns; :mod:`tformer.training.adapters` saves and
loads it alone, as a checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import tformer._checks as _checks
from tformer.nn.dropout import Dropout


class LoRALinear(nn.Module):
    """``base(x) + (α/r) · dropout(x) Aᵀ Bᵀ`` around a frozen ``nn.Linear`` (Hu et al., 2021, §4.1).

    B starts at zero, so ΔW = B A = 0 at the start (§4.1). The paper draws A from a Gaussian; its
    code (``loralib``) and ``peft`` use ``nn.Linear``'s Kaiming-uniform, as here. ``merged`` is True after
    :meth:`merge` added (α/r)·B A into ``base.weight``; the forward pass then is ``base(x)`` alone.

    Args:
        base: the pretrained layer (in_features → out_features); it is kept, not copied.
        rank: r, between 1 and min(in_features, out_features).
        alpha: α; the update is scaled by α/r, so changing r needs no new learning rate (§4.1).
        dropout: dropout on the adapter's input during training (0 turns it off).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        _check_adapter(base, "base", rank, alpha)
        self.base = base
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = alpha / rank
        self.dropout = Dropout(_checks.probability("dropout", dropout))
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # (r, in), like nn.Linear(in, r)
        self.merged = False
        self.target = ""  # the targets entry that chose this layer (set by apply_lora)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) · B A, shape (out_features, in_features): what :meth:`merge` adds to W."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)  # (..., out)
        if self.merged:
            return out
        z = self.dropout(x) @ self.lora_A.T  # (..., r): the low-rank bottleneck
        return out + (z @ self.lora_B.T) * self.scaling  # (..., out)

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + (α/r) B A; the adapter then costs nothing at inference."""
        self.base.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − (α/r) B A: back to the frozen weight and a separate adapter."""
        self.base.weight -= self.delta_weight()
        self.merged = False

    def extra_repr(self) -> str:
        """Rank, α and whether the adapter is merged, for ``print(model)``."""
        return f"rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}"


def _check_adapter(linear: object, where: str, rank: object, alpha: object) -> None:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{where} must be an nn.Linear, got {type(linear).__name__}")
    _checks.integer("rank", rank)
    top = min(linear.in_features, linear.out_features)
    if not 1 <= rank <= top:
        raise ValueError(
            f"rank={rank} must lie between 1 and min(in_features, out_features) = {top} for {where} "
            f"({linear.in_features} → {linear.out_features}); a larger rank is no longer low-rank"
        )
    _checks.positive_float("alpha", alpha, "alpha = 2·rank")


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """``{module name: LoRALinear}`` for every adapter in ``model``, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_targets(model: nn.Module, targets: list[str], rank: int, alpha: float) -> dict[str, tuple[str, nn.Linear]]:
    """``{module name: (target, linear)}``: the layers :func:`apply_lora` would wrap, every argument
    checked, ``model`` left as it is (see :func:`apply_lora` for the arguments)."""
    if isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not targets \
            or not all(isinstance(t, str) and t for t in targets):
        raise TypeError(f"targets must be a non-empty list of module-name suffixes such as "
                        f"['w_q', 'w_v'], got {targets!r}")
    tied: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        tied[id(p)] = tied.get(id(p), 0) + 1
    modules = list(model.named_modules())
    found: dict[str, tuple[str, nn.Linear]] = {}
    for target in targets:
        hits = [(n, m) for n, m in modules if n == target or n.endswith("." + target)]
        if not hits:
            linears = sorted({n.rsplit(".", 1)[-1] for n, m in modules if isinstance(m, nn.Linear)})
            raise ValueError(f"targets: {target!r} matches no module of the {type(model).__name__}; "
                             f"its linear layers end in {linears}")
        for name, module in hits:
            if not isinstance(module, nn.Linear):
                raise ValueError(f"targets: {target!r} matches {name!r}, a {type(module).__name__}; "
                                 "LoRA adapts nn.Linear layers only (name one, e.g. 'w_q')")
            if tied[id(module.weight)] > 1:
                raise ValueError(f"targets: {target!r} matches {name!r}, whose weight is tied to another "
                                 "module (merging would change both); leave it out")
            _check_adapter(module, name, rank, alpha)
            found.setdefault(name, (target, module))
    order = {name: i for i, (name, _) in enumerate(modules)}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def apply_lora(model: nn.Module, targets: list[str], rank: int, alpha: float,
               dropout: float = 0.0) -> list[str]:
    """Wrap every ``nn.Linear`` whose name ends in one of ``targets`` in a :class:`LoRALinear`, and
    freeze every other parameter (Hu et al., 2021, §4.2; §7.1 finds W_q and W_v enough).

    Everything is checked before the model is touched, so a bad argument leaves it as it was.

    Args:
        model: any tformer model (or any ``nn.Module``), changed in place.
        targets: module-name suffixes at a dot boundary: ``"w_q"`` matches ``blocks.0.attn.w_q``;
            Llama has ``w_q w_k w_v w_o`` and ``gate up down``, the Transformer's attention
            ``w_q w_k w_v w_o`` (``self_attn.w_q`` / ``cross_attn.w_q`` pick one kind) and its
            FFN ``linear1 linear2``.
        rank, alpha, dropout: as in :class:`LoRALinear`.

    Returns:
        The names of the adapted modules, in module order.
    """
    if lora_layers(model):
        raise ValueError(f"model already has LoRA adapters on {list(lora_layers(model))[:3]}…; "
                         "apply_lora once (merge_lora(model, unload=True) first to stack a new one)")
    found = lora_targets(model, targets, rank, alpha)
    _checks.probability("dropout", dropout)
    model.requires_grad_(False)
    for name, (target, linear) in found.items():
        adapter = LoRALinear(linear, rank, alpha, dropout)
        adapter.target = target
        _set_module(model, name, adapter)
    return list(found)


def _adapters(model: nn.Module, merged: bool | None = None) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"model (a {type(model).__name__}) has no LoRA adapters; call apply_lora first")
    states = {m.merged for m in layers.values()}
    if merged is not None and states != {merged}:
        raise ValueError("model's adapters are already merged (merging twice would add B A twice); "
                         "unmerge_lora(model) first" if merged is False else
                         "model's adapters are not merged; there is nothing to unmerge")
    return layers


def merge_lora(model: nn.Module, unload: bool = False) -> nn.Module:
    """Add (α/r)·B A into every adapted weight (Hu et al., 2021, §4.1): same outputs, no extra cost.

    With ``unload=True`` every :class:`LoRALinear` is replaced by its merged ``nn.Linear`` (for good:
    :func:`unmerge_lora` cannot undo it); otherwise the adapters stay, flagged ``merged``.
    """
    layers = _adapters(model, merged=False)
    _checks.boolean("unload", unload)
    for name, layer in layers.items():
        layer.merge()
        if unload:
            _set_module(model, name, layer.base)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`: subtract (α/r)·B A again, and train or save the adapters separately."""
    for layer in _adapters(model, merged=True).values():
        layer.unmerge()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"NAME.lora_A": (r, in), "NAME.lora_B": (out, r)}`` for every adapter: all a LoRA run learns."""
    return {f"{name}.lora_{k}": getattr(m, f"lora_{k}").detach()
            for name, m in _adapters(model).items() for k in "AB"}


__all__ = ["LoRALinear", "apply_lora", "lora_layers", "lora_state_dict", "lora_targets", "merge_lora",
           "unmerge_lora"]
