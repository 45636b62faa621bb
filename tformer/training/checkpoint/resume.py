"""What a resumed run needs beyond the weights: the optimizer's state and the random generators.

The optimizer's tensors (Adam's moments) and the torch generators' states go in
``optimizer.safetensors``; its hyper-parameters, scalar entries and the Python/NumPy generators'
states in ``state.json``. Restoring them makes a resumed run draw the same dropout masks and
take the same steps as an uninterrupted one.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from tformer.training.checkpoint.files import _safetensors_meta, read_tensors


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    scalars = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, scalars


def _set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, internal, gauss = scalars["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = scalars["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors for optimizer.safetensors, JSON entries for state.json)`` of an optimizer and
    the random generators."""
    sd = optimizer.state_dict()
    tensors, rng_scalars = _rng_state()
    scalar_state: dict[str, dict] = {}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalar_state.setdefault(str(pid), {})[key] = value
    return tensors, {"optimizer": {"param_groups": sd["param_groups"], "scalars": scalar_state},
                     "rng": rng_scalars}


def _load_optimizer(directory: Path, extra: dict, step: str, optimizer, restore_rng: bool) -> None:
    path = directory / "optimizer.safetensors"
    if _safetensors_meta(path).get("step") != step or "optimizer" not in extra:
        raise ValueError(f"{path} does not belong to the same save as state.json (step {step})")
    tensors = read_tensors(path)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, entries in extra["optimizer"]["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": extra["optimizer"]["param_groups"]})
    if restore_rng:
        _set_rng_state(tensors, extra["rng"])
