"""LoRA adapters saved and loaded alone, as checkpoints (Hu et al., 2021, §4.2: one frozen model,
many small task-specific adapters).

An adapter is a checkpoint directory written by :func:`~tformer.training.checkpoint.save_checkpoint`,
so it has the checkpoints' guarantees (written beside ``path`` and renamed into place as a whole,
every file's sha256 checked on load, NaN/Inf refused, nothing unpickled)::

    model.safetensors   NAME.lora_A (r, in) and NAME.lora_B (out, r) of every adapted layer
    config.json         "model": rank, alpha, dropout, targets, the base model's fingerprint;
                        "lora": the targets and {NAME: [in_features, out_features]}
    state.json          the manifest

It lives above :mod:`tformer.nn.lora` because the package is layered: ``tformer.nn`` never imports
from ``tformer.training``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import tformer._checks as _checks
from tformer.nn.lora import LoRALinear, apply_lora, lora_layers, lora_state_dict, lora_targets
from tformer.training.checkpoint import load_checkpoint, read_config, save_checkpoint


def base_fingerprint(model: nn.Module) -> str:
    """A short hash of the base model's class and config (or, without a config, of the shapes of its
    non-adapter parameters): an adapter loads only into the kind of model it was trained on."""
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        body: object = dataclasses.asdict(config)
    else:
        body = {n.replace(".base.", "."): list(p.shape) for n, p in model.state_dict().items()
                if ".lora_" not in n}
    text = json.dumps({"class": type(model).__name__, "config": body}, sort_keys=True, default=str)
    return f"{type(model).__name__}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass
class _AdapterConfig:
    rank: int
    alpha: float
    dropout: float
    targets: str  # comma-separated (config.json's "model" entry holds scalars only)
    base: str  # base_fingerprint of the model the adapter belongs to

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _AdapterFile(nn.Module):
    """Holds A and B under the adapted modules' own names, so the file's keys are ``NAME.lora_A``."""

    def __init__(self, config: _AdapterConfig, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.config = config
        for key, tensor in tensors.items():
            *path, leaf = key.split(".")
            parent: nn.Module = self
            for part in path:
                if part not in parent._modules:
                    parent.add_module(part, nn.Module())
                parent = parent._modules[part]
            parent.register_parameter(leaf, tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor))


def _config_of(model: nn.Module, layers: dict[str, LoRALinear]) -> tuple[_AdapterConfig, dict]:
    first = next(iter(layers.values()))
    targets = sorted({m.target or name.rsplit(".", 1)[-1] for name, m in layers.items()})
    config = _AdapterConfig(first.rank, first.alpha, first.dropout.p, ",".join(targets), base_fingerprint(model))
    shapes = {name: [m.base.in_features, m.base.out_features] for name, m in layers.items()}
    return config, {"lora": {"targets": targets, "modules": shapes}}


def save_lora(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save the adapters alone (A and B of every :class:`LoRALinear`, a few MB for SmolLM2) to the
    checkpoint directory ``path``, written beside it and renamed into place as a whole: a failure
    at any moment leaves the previous adapter or the new one. Returns the absolute path."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"model (a {type(model).__name__}) has no LoRA adapters; call apply_lora first")
    if Path(path).is_dir() and (Path(path) / "config.json").is_file() and "lora" not in read_config(path):
        raise ValueError(f"path={str(path)!r} holds a model checkpoint, not a LoRA adapter; "
                         "save the adapter to another directory")
    config, extra = _config_of(model, layers)
    params = {f"{n}.lora_{k}": getattr(m, f"lora_{k}") for n, m in layers.items() for k in "AB"}
    return save_checkpoint(path, _AdapterFile(config, params), config=extra)


def load_lora(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load adapters saved by :func:`save_lora` into ``model``.

    A model without adapters gets them first (:func:`apply_lora` with the saved rank, α, dropout and
    targets); one with adapters must have the saved rank, α and modules. Everything is checked (and
    the file read) before the model changes. Returns the names of the adapted modules.
    """
    cfg = read_config(path)
    if not isinstance(cfg.get("lora"), dict):
        raise ValueError(f"path={str(path)!r} holds a model checkpoint, not a LoRA adapter")
    saved = _checks.config_from_dict(_AdapterConfig, cfg["model"])
    modules = cfg["lora"].get("modules")
    if not (isinstance(modules, dict) and modules and all(
            isinstance(s, list) and len(s) == 2 and all(type(n) is int for n in s) for s in modules.values())):
        raise ValueError(f"path={str(path)!r}: config.json's 'lora' entry must map module names to "
                         f"[in_features, out_features], got {str(modules)[:200]}")
    modules = {name: tuple(shape) for name, shape in modules.items()}
    if saved.base != base_fingerprint(model):
        raise ValueError(f"path={str(path)!r} holds an adapter for the model {saved.base}, but model is "
                         f"{base_fingerprint(model)} (another class or config)")
    layers = lora_layers(model)
    if layers:
        have, _ = _config_of(model, layers)
        for field in ("rank", "alpha"):
            if getattr(have, field) != getattr(saved, field):
                raise ValueError(f"path={str(path)!r} holds an adapter of {field}={getattr(saved, field)}, "
                                 f"but model's adapters have {field}={getattr(have, field)}")
        if any(m.merged for m in layers.values()):
            raise ValueError("model's adapters are merged; unmerge_lora(model) before loading others")
        found = {n: m.base for n, m in layers.items()}
    else:
        targets = saved.targets.split(",")
        found = {n: lin for n, (_, lin) in lora_targets(model, targets, saved.rank, saved.alpha).items()}
    shapes = {n: (lin.in_features, lin.out_features) for n, lin in found.items()}
    if shapes != modules:
        diff = sorted(set(shapes.items()) ^ set(modules.items()))[:4]
        raise ValueError(f"path={str(path)!r} adapts other modules than model does "
                         f"(targets={saved.targets!r}); they differ in {diff}")
    fresh = {f"{n}.lora_{k}": torch.zeros((saved.rank, i) if k == "A" else (o, saved.rank))
             for n, (i, o) in modules.items() for k in "AB"}
    loaded = load_checkpoint(path, _AdapterFile(saved, fresh)).model.state_dict()
    if not layers:
        apply_lora(model, targets, saved.rank, saved.alpha, saved.dropout)
    with torch.no_grad():
        for key, value in lora_state_dict(model).items():
            value.copy_(loaded[key])
    return list(modules)


__all__ = ["base_fingerprint", "load_lora", "save_lora"]
