"""Checkpoints: tensors in safetensors, everything else in JSON, the directory committed as a whole.

A checkpoint is a directory::

    model.safetensors      the weights (tied tensors stored once)
    config.json            {"model": model.config.to_dict(), ...whatever the caller adds}
    optimizer.safetensors  the optimizer's tensors and the random-number generators' tensor states
    state.json             step, epoch, loss history, optimizer hyper-parameters, scheduler, RNGs,
                           and the sha256 of every other file (the manifest)
    ...                    any other file the caller hands over (vocabularies, tokenizers)

This package knows no model class and no tokenizer: it saves what objects give it (a model with a
``.config.to_dict()``, objects with ``to_dict()`` or ``save(path)``) and loads into objects the
caller builds. The translation recipe (:mod:`tformer.recipes.translation`) decides what goes in.
Its parts, one job each:

- :mod:`.files`: the file format (safetensors, JSON, the manifest and its sha256 checks);
- :mod:`.directory`: the atomic commit of the directory as a whole, recovery after a kill, the
  writer's lock, and reading one save's files while a writer commits the next;
- :mod:`.resume`: the optimizer's and the random generators' state of a resumed run;
- this module: :func:`save_checkpoint`, :func:`read_config`, :func:`load_checkpoint`.

No file is ever unpickled, so loading a checkpoint from someone else cannot run their code.
Loading checks every file against the sha256 recorded in ``state.json`` and refuses NaN/Inf
weights. Training runs (the translation recipe, the CLI) hold :func:`lock_directory` while they
write, so two runs cannot write one directory; :func:`save_checkpoint` itself takes no lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from tformer.runtime import unwrap
from tformer.training.checkpoint.directory import (
    CheckpointLocked as CheckpointLocked,
)
from tformer.training.checkpoint.directory import (
    _commit,
    _keep_foreign_files,
    _leftovers,
    read_consistently,
    recover,
)
from tformer.training.checkpoint.directory import (
    check_committable as check_committable,
)
from tformer.training.checkpoint.directory import (
    lock_directory as lock_directory,
)
from tformer.training.checkpoint.files import (
    FORMAT,
    OWN_FILES,
    STATE,
    _check_json_scalars,
    _fsync,
    _json_sha256,
    _safetensors_meta,
    _sha256,
    _usual_permissions,
    _verify,
    read_json,
)
from tformer.training.checkpoint.files import (
    MAX_CONFIG_INT as MAX_CONFIG_INT,
)
from tformer.training.checkpoint.files import (
    ModelFile as ModelFile,
)
from tformer.training.checkpoint.files import (
    TensorFile as TensorFile,
)
from tformer.training.checkpoint.files import (
    add_manifest as add_manifest,
)
from tformer.training.checkpoint.files import (
    listed as listed,
)
from tformer.training.checkpoint.files import (
    read_tensors as read_tensors,
)
from tformer.training.checkpoint.files import (
    verify_files as verify_files,
)
from tformer.training.checkpoint.files import (
    write_json as write_json,
)
from tformer.training.checkpoint.resume import _load_optimizer, optimizer_state
from tformer.training.loop import TrainState


def _is_checkpoint(directory: Path) -> bool:
    return (directory / "config.json").is_file()


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

    The new checkpoint is written beside ``directory`` and renamed into place as a whole (see
    :mod:`.directory`): an interruption at any moment leaves the previous checkpoint or the new
    one, never a mixture. Files in ``directory`` that are not part of the previous checkpoint
    (notes a user put there) are kept.

    Args:
        directory: created if needed; it must be new, empty or a checkpoint already.
        model: a model with a ``.config`` that has ``to_dict()`` (or a DDP / compiled wrapper of one).
        config: extra JSON-able entries for ``config.json`` (training arguments, data, ...).
        files: ``{file name: object}``; an object with ``to_dict()`` is written as JSON, one with
            ``save(path)`` (a trained tokenizer) writes itself.

    Returns:
        The directory as an absolute ``Path``.
    """
    directory = recover(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file, not a checkpoint directory")
    if directory.is_dir() and any(directory.iterdir()) and not _is_checkpoint(directory):
        raise FileExistsError(
            f"{directory} is not empty and holds no checkpoint; save into a new or empty directory"
        )
    for name in files or {}:
        if Path(name).name != name or name in OWN_FILES:
            raise ValueError(f"files: {name!r} must be a plain file name inside the checkpoint directory, "
                             "other than the checkpoint's own files")
    model = unwrap(model)
    step = str(state.step if state is not None else 0)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    try:
        _write_all(tmp, model, optimizer, scheduler, state, step, config, files)
        if directory.is_dir():
            with contextlib.suppress(OSError):
                os.chmod(tmp, stat.S_IMODE(directory.stat().st_mode))
            _keep_foreign_files(directory, tmp)
        _commit(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not directory.exists():  # interrupted between the two renames of _commit
            for kind, pid, path in _leftovers(directory):
                if kind == "old" and pid == os.getpid():
                    with contextlib.suppress(OSError):
                        os.rename(path, directory)
                    break
        raise
    return directory


def _write_all(tmp: Path, model, optimizer, scheduler, state, step: str, config, files) -> None:
    written: list[str] = []

    def json_file(name: str, obj: object) -> None:
        with open(tmp / name, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)
        written.append(name)

    json_file("config.json", {"format": FORMAT, "model": model.config.to_dict(), **(config or {})})
    for name, obj in (files or {}).items():
        if hasattr(obj, "to_dict"):
            json_file(name, obj.to_dict())
        elif hasattr(obj, "save"):
            obj.save(str(tmp / name))
            written.append(name)
        else:
            raise TypeError(f"files[{name!r}] must have to_dict() or save(path), got {type(obj).__name__}")
    save_model(model, str(tmp / "model.safetensors"), {"step": step})
    written.append("model.safetensors")
    extra: dict = {"format": FORMAT, "step": int(step)}
    if optimizer is not None:
        tensors, entries = optimizer_state(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"), {"step": step})
        written.append("optimizer.safetensors")
        extra.update(entries)
    if scheduler is not None:
        extra["scheduler"] = {
            k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"
        }
    extra["train"] = state.to_dict() if state is not None else None
    for name in written:
        _usual_permissions(tmp / name)  # safetensors writes 0600; every file gets what JSON gets
        _fsync(tmp / name)
    extra["files"] = {name: _sha256(tmp / name) for name in written}
    extra["sha256"] = _json_sha256(extra)  # of everything above: state.json checks itself
    json_file(STATE, extra)
    _usual_permissions(tmp / STATE)
    _fsync(tmp / STATE)


def read_config(directory: str | os.PathLike) -> dict:
    """``config.json`` of a checkpoint directory, checked to be one: build the model from its
    ``"model"`` entry, then :func:`load_checkpoint` into it.

    The file's checksum is verified and the ``"model"`` entry must be a flat JSON object of
    numbers, strings and bools within sane bounds, so nothing is allocated from a damaged file.
    """
    directory = recover(directory, wait=1.0)
    if directory.exists() and not directory.is_dir():
        raise FileNotFoundError(f"{directory} is a file, not a checkpoint directory")
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    return read_consistently(directory, lambda: _read_config(directory))


def _read_config(directory: Path) -> dict:
    cfg = read_json(directory / "config.json")
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ValueError(f"{directory / 'config.json'} has no 'model' entry; not a tformer checkpoint")
    if not (directory / STATE).is_file():
        raise FileNotFoundError(f"checkpoint file {directory / STATE} is missing (it holds the manifest "
                                "that every file is checked against)")
    _verify(directory, ["config.json"])
    if not isinstance(cfg["model"], dict):
        raise ValueError(f"{directory / 'config.json'}: 'model' must be a JSON object of the model's "
                         f"config fields, got {type(cfg['model']).__name__}")
    _check_json_scalars(str(directory / "config.json"), cfg["model"])
    if cfg.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{directory / 'config.json'} has format {cfg.get('format')!r}; this version "
                         f"of tformer reads format {FORMAT}")
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


def _load_weights(path: Path, model: nn.Module, device, diverged: str = "") -> None:
    try:
        load_model(unwrap(model), str(path), strict=True, device=str(device))
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit the model: {str(error)[:500]}") from None
    for key, tensor in unwrap(model).state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path} holds NaN or Inf values in {key}{diverged}")


def load_model_file(directory: str | os.PathLike, name: str, model: nn.Module,
                    device: torch.device | str = "cpu") -> nn.Module:
    """Load the weights file ``name`` of a checkpoint (written with :class:`ModelFile`) into ``model``.

    The file must be listed in the checkpoint's manifest and match its sha256; a missing, unlisted,
    damaged or non-finite file, or one that does not fit ``model``, is an error naming it.
    """
    directory = recover(directory, wait=0)

    def read() -> None:
        _verify(directory, [name])
        _load_weights(directory / name, model, device)

    read_consistently(directory, read)
    return model.to(device)


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

    Every file is read from one save, even while another process commits the next one.

    Args:
        model: load into this model (build it from ``read_config(directory)["model"]``); its
            config must equal the stored one (``ValueError`` lists the differing fields).
        optimizer, scheduler: restore their state too (needs ``optimizer.safetensors``).
        restore_rng: also restore the torch/Python/NumPy random generators, so that a resumed
            run draws the same dropout masks as an uninterrupted one.

    Raises:
        FileNotFoundError: the directory or a needed file is missing.
        ValueError: a file is corrupt or damaged (its sha256 differs from the recorded one), the
            checkpoint has no manifest, the files come from different saves, the weights hold
            NaN/Inf, or the model does not match.
    """
    directory = recover(directory, wait=1.0)
    return read_consistently(directory, lambda: _load_checkpoint(
        directory, model, optimizer, scheduler, restore_rng=restore_rng, device=device))


def _load_checkpoint(directory: Path, model, optimizer, scheduler, *, restore_rng: bool, device) -> Checkpoint:
    cfg = read_config(directory)
    extra = read_json(directory / STATE)
    if not isinstance(extra, dict):
        raise ValueError(f"checkpoint file {directory / STATE} is corrupt (not a JSON object)")
    step = str(extra.get("step", 0))
    meta = _safetensors_meta(directory / "model.safetensors")
    if meta.get("step") != step:
        raise ValueError(
            f"model.safetensors (step {meta.get('step')}) and state.json (step {step}) in {directory} "
            "come from different saves; the checkpoint was written half-way"
        )
    _verify(directory)
    diff = _config_diff(cfg["model"], unwrap(model).config.to_dict())
    if diff:
        raise ValueError(
            f"the checkpoint in {directory} does not match the model's config: " + "; ".join(diff)
        )
    _load_weights(directory / "model.safetensors", model, device,
                  "; the run diverged before this save, so these weights cannot be used")
    model.to(device)
    try:
        if optimizer is not None:
            _load_optimizer(directory, extra, step, optimizer, restore_rng)
        if scheduler is not None:
            if "scheduler" not in extra:
                raise ValueError(f"{directory / STATE} holds no scheduler state")
            scheduler.load_state_dict({**scheduler.state_dict(), **extra["scheduler"]})
        train = TrainState.from_dict(extra["train"]) if extra.get("train") else None
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{directory / STATE} is corrupt ({type(error).__name__}: {error})") from None
    return Checkpoint(model, cfg, train)
