"""Checkpoints: tensors in safetensors, everything else in JSON, every file written atomically.

A checkpoint is a directory::

    model.safetensors      the weights (tied tensors stored once)
    config.json            {"model": model.config.to_dict(), ...whatever the caller adds}
    optimizer.safetensors  the optimizer's tensors and the random-number generators' tensor states
    state.json             step, epoch, loss history, optimizer hyper-parameters, scheduler, RNGs
    ...                    any other file the caller hands over (vocabularies, tokenizers)

This module knows no model class and no tokenizer: it saves what objects give it (a model with a
``.config.to_dict()``, objects with ``to_dict()`` or ``save(path)``) and loads into objects the
caller builds. The translation recipe (:mod:`tformer.recipes.translation`) decides what goes in.

No file is ever unpickled, so loading a checkpoint from someone else cannot run their code.
Each file is written to a temporary file in the same directory and moved into place with
``os.replace``, so an interrupted save leaves the previous file intact; ``state.json`` goes last
and records the step, which every other file repeats, so a mixed-up directory is detected.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from tformer.runtime import unwrap
from tformer.training.loop import TrainState

FORMAT = 1


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(tmp_name)`` and ``os.replace``; nothing half-written remains."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Atomically write ``obj`` as UTF-8 JSON."""
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)

    _atomic(path, write)


def read_json(path: str | os.PathLike) -> dict:
    """Read a checkpoint JSON file with a clear error when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} is missing")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"checkpoint file {path} is corrupt (not valid JSON: {error})") from None


def _safetensors_meta(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as error:  # safetensors raises its own error type for a bad header
        raise ValueError(f"checkpoint file {path} is corrupt or truncated ({error})") from None


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


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    state: TrainState | None = None,
    *,
    config: dict | None = None,
    files: dict[str, object] | None = None,
) -> Path:
    """Save a model (and optionally the optimizer, scheduler, run state and extra files).

    Args:
        directory: created if needed; existing files are replaced one by one, atomically.
        model: a model with a ``.config`` that has ``to_dict()`` (or a DDP / compiled wrapper of one).
        config: extra JSON-able entries for ``config.json`` (training arguments, data, ...).
        files: ``{file name: object}``; an object with ``to_dict()`` is written as JSON, one with
            ``save(path)`` (a trained tokenizer) writes itself; each file atomically.

    Returns:
        The directory as a ``Path``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    step = str(state.step if state is not None else 0)
    cfg = {"format": FORMAT, "model": model.config.to_dict(), **(config or {})}
    write_json(directory / "config.json", cfg)
    for name, obj in (files or {}).items():
        if Path(name).name != name:
            raise ValueError(f"files: {name!r} must be a plain file name inside the checkpoint directory")
        if hasattr(obj, "to_dict"):
            write_json(directory / name, obj.to_dict())
        elif hasattr(obj, "save"):
            _atomic(directory / name, obj.save)
        else:
            raise TypeError(f"files[{name!r}] must have to_dict() or save(path), got {type(obj).__name__}")
    _atomic(directory / "model.safetensors", lambda tmp: save_model(model, tmp, {"step": step}))
    extra: dict = {"format": FORMAT, "step": int(step)}
    if optimizer is not None:
        sd = optimizer.state_dict()
        tensors, rng_scalars = _rng_state()
        scalar_state: dict[str, dict] = {}
        for pid, entries in sd["state"].items():
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalar_state.setdefault(str(pid), {})[key] = value
        _atomic(
            directory / "optimizer.safetensors",
            lambda tmp: save_file(tensors, tmp, {"step": step}),
        )
        extra["optimizer"] = {"param_groups": sd["param_groups"], "scalars": scalar_state}
        extra["rng"] = rng_scalars
    if scheduler is not None:
        extra["scheduler"] = {
            k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"
        }
    extra["train"] = state.to_dict() if state is not None else None
    write_json(directory / "state.json", extra)
    return directory


def read_config(directory: str | os.PathLike) -> dict:
    """``config.json`` of a checkpoint directory, checked to be one: build the model from its
    ``"model"`` entry, then :func:`load_checkpoint` into it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    cfg = read_json(directory / "config.json")
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ValueError(f"{directory / 'config.json'} has no 'model' entry; not a tformer checkpoint")
    return cfg


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    model: nn.Module
    config: dict
    state: TrainState | None


def _config_diff(want: dict, got: dict) -> list[str]:
    keys = sorted(set(want) | set(got))
    return [f"{k}: checkpoint {want.get(k)!r}, model {got.get(k)!r}" for k in keys if want.get(k) != got.get(k)]


def load_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    restore_rng: bool = True,
    device: torch.device | str = "cpu",
) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        model: load into this model (build it from ``read_config(directory)["model"]``); its
            config must equal the stored one (``ValueError`` lists the differing fields).
        optimizer, scheduler: restore their state too (needs ``optimizer.safetensors``).
        restore_rng: also restore the torch/Python/NumPy random generators, so that a resumed
            run draws the same dropout masks as an uninterrupted one.

    Raises:
        FileNotFoundError: the directory or a needed file is missing.
        ValueError: a file is corrupt, the files come from different steps, or the model does
            not match.
    """
    directory = Path(directory)
    cfg = read_config(directory)
    extra = read_json(directory / "state.json")
    step = str(extra.get("step", 0))
    meta = _safetensors_meta(directory / "model.safetensors")
    if meta.get("step") != step:
        raise ValueError(
            f"model.safetensors (step {meta.get('step')}) and state.json (step {step}) in {directory} "
            "come from different saves; the checkpoint was written half-way"
        )
    diff = _config_diff(cfg["model"], unwrap(model).config.to_dict())
    if diff:
        raise ValueError(
            f"the checkpoint in {directory} does not match the model's config: " + "; ".join(diff)
        )
    try:
        load_model(unwrap(model), str(directory / "model.safetensors"), strict=True, device=str(device))
    except RuntimeError as error:
        raise ValueError(
            f"{directory / 'model.safetensors'} does not fit the model: {str(error)[:500]}"
        ) from None
    model.to(device)
    if optimizer is not None:
        path = directory / "optimizer.safetensors"
        if _safetensors_meta(path).get("step") != step or "optimizer" not in extra:
            raise ValueError(f"{path} does not belong to the same save as state.json (step {step})")
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
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
    if scheduler is not None:
        if "scheduler" not in extra:
            raise ValueError(f"{directory / 'state.json'} holds no scheduler state")
        scheduler.load_state_dict({**scheduler.state_dict(), **extra["scheduler"]})
    train = TrainState.from_dict(extra["train"]) if extra.get("train") else None
    return Checkpoint(model, cfg, train)
