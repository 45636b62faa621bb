"""Checkpoints: tensors in safetensors, everything else in JSON, the directory committed as a whole.

A checkpoint is a directory::

    model.safetensors      the weights (tied tensors stored once)
    config.json            {"model": model.config.to_dict(), ...whatever the caller adds}
    optimizer.safetensors  the optimizer's tensors and the random-number generators' tensor states
    state.json             step, epoch, loss history, optimizer hyper-parameters, scheduler, RNGs,
                           and the sha256 of every other file (the manifest)
    ...                    any other file the caller hands over (vocabularies, tokenizers)

This module knows no model class and no tokenizer: it saves what objects give it (a model with a
``.config.to_dict()``, objects with ``to_dict()`` or ``save(path)``) and loads into objects the
caller builds. The translation recipe (:mod:`tformer.recipes.translation`) decides what goes in.

No file is ever unpickled, so loading a checkpoint from someone else cannot run their code.

A save never touches the previous checkpoint until the new one is complete: every file is written
(and flushed to disk) into a sibling directory ``.NAME.tmp-PID-XXXX``; then the old directory is
renamed to ``.NAME.old-PID-XXXX``, the new one to ``NAME``, and the old one removed. A kill at any
moment leaves either the old or the new checkpoint; if it lands between the two renames, the next
reader or writer renames the old one back (:func:`recover`) and removes what a dead writer left.
Loading checks every file against the sha256 recorded in ``state.json`` (safetensors itself
carries no checksum, so a flipped byte would otherwise load silently) and refuses NaN/Inf weights.
Training runs (the translation recipe, the CLI) hold :func:`lock_directory` while they write, so
two runs cannot write one directory; :func:`save_checkpoint` itself takes no lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from tformer.runtime import unwrap
from tformer.training.loop import TrainState

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second writer is not detected there
    fcntl = None

FORMAT = 1
STATE = "state.json"
# a bound on config.json sizes, checked before anything is allocated: 2**31 of anything is absurd
# for this course (the paper's big model has d_model 1024 and a 37000-token vocabulary)
MAX_CONFIG_INT = 2**31 - 1


_HELD: dict[Path, int] = {}  # lock files this process holds, with their nesting depth


class CheckpointLocked(RuntimeError):
    """Another process holds the lock of a checkpoint directory."""


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(tmp_name)`` and ``os.replace``; nothing half-written remains."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file (or a directory's entries) to disk, so a crash cannot reorder it after a rename."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


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
    except OSError as error:
        raise ValueError(f"checkpoint file {path} cannot be read ({error.strerror})") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_sha256(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# --------------------------------------------------------------------------- the directory as a whole

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")


def _plain(directory: str | os.PathLike) -> Path:
    """An absolute path with a non-empty last component (a symlink to a directory is followed, so
    the swap renames the real directory, never the link)."""
    if str(directory) == "":
        raise ValueError("the checkpoint directory is '' (empty); give a directory name")
    path = Path(os.path.abspath(directory))
    if path.is_symlink():
        path = path.resolve()
    if path.name == "":
        raise ValueError(f"{directory} cannot be a checkpoint directory (it is the root of the file system)")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(directory: Path) -> list[tuple[str, int, Path]]:
    """``(kind, pid, path)`` of the ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings of ``directory``."""
    try:
        names = os.listdir(directory.parent)
    except OSError:
        return []
    out = []
    for name in names:
        m = _LEFTOVER.match(name)
        if m and m["name"] == directory.name:
            out.append((m["kind"], int(m["pid"]), directory.parent / name))
    return out


def recover(directory: str | os.PathLike, wait: float = 5.0) -> Path:
    """Finish what a killed save left: if ``directory`` is missing but a dead writer's previous
    checkpoint (``.NAME.old-*``) is there, rename it back; remove dead writers' temporary
    directories. Returns the (absolute) directory. Called by every load and save."""
    directory = _plain(directory)
    deadline = time.monotonic() + wait
    while True:
        leftovers = _leftovers(directory)
        if not leftovers:
            return directory
        if not directory.exists():
            olds = sorted((p for kind, pid, p in leftovers if kind == "old" and not _alive(pid)),
                          key=lambda p: p.stat().st_mtime, reverse=True)
            for old in olds:
                with contextlib.suppress(OSError):
                    os.rename(old, directory)
                    _fsync(directory.parent)
                    break
        if not directory.exists() and any(k == "old" for k, _, _ in leftovers) and time.monotonic() < deadline:
            time.sleep(0.02)  # a live writer is between its two renames: a few microseconds
            continue
        for _kind, pid, path in leftovers:
            if path.exists() and not _alive(pid):
                shutil.rmtree(path, ignore_errors=True)
        return directory


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _commit(tmp: Path, directory: Path) -> None:
    """Put the complete directory ``tmp`` in place of ``directory``, keeping the old one until then."""
    _fsync(tmp)
    if not directory.exists():
        os.rename(tmp, directory)
        _fsync(directory.parent)
        return
    old = directory.parent / f".{directory.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(directory, old)
    try:
        os.rename(tmp, directory)
    except BaseException:
        if not directory.exists():
            os.rename(old, directory)
        raise
    _fsync(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def lock_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an advisory lock (``fcntl.flock``) on checkpoint ``directory`` while writing it.

    The lock file is the sibling ``.NAME.lock`` (the directory itself is replaced by every save).
    A second writer fails at once with :class:`CheckpointLocked` naming the holder's pid. The
    lock is re-entrant within one process (the CLI takes it before reading any data, and
    :func:`~tformer.recipes.translation.train_translation` takes it again).
    """
    directory = _plain(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    path = directory.parent / f".{directory.name}.lock"
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield directory
        finally:
            _HELD[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise CheckpointLocked(
                    f"{directory} is being written by another process (pid {holder}); wait for it to "
                    "finish or choose another directory"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[path] = 1
        yield directory
    finally:
        _HELD.pop(path, None)
        os.close(fd)  # closing releases the lock


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

    The new checkpoint is written beside ``directory`` and renamed into place as a whole (see the
    module's docstring): an interruption at any moment leaves the previous checkpoint or the new
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
        if Path(name).name != name or name in ("config.json", STATE, "model.safetensors", "optimizer.safetensors"):
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
        sd = optimizer.state_dict()
        tensors, rng_scalars = _rng_state()
        scalar_state: dict[str, dict] = {}
        for pid, entries in sd["state"].items():
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalar_state.setdefault(str(pid), {})[key] = value
        save_file(tensors, str(tmp / "optimizer.safetensors"), {"step": step})
        written.append("optimizer.safetensors")
        extra["optimizer"] = {"param_groups": sd["param_groups"], "scalars": scalar_state}
        extra["rng"] = rng_scalars
    if scheduler is not None:
        extra["scheduler"] = {
            k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"
        }
    extra["train"] = state.to_dict() if state is not None else None
    for name in written:
        _fsync(tmp / name)
    extra["files"] = {name: _sha256(tmp / name) for name in written}
    extra["sha256"] = _json_sha256(extra)  # of everything above: state.json checks itself
    json_file(STATE, extra)
    _fsync(tmp / STATE)


def _keep_foreign_files(old: Path, new: Path) -> None:
    """Hard-link (or copy) into ``new`` what ``old`` holds beyond its checkpoint's own files."""
    try:
        owned = set(read_json(old / STATE).get("files", {})) | {STATE}
    except (OSError, ValueError, AttributeError):
        owned = {STATE, "config.json", "model.safetensors", "optimizer.safetensors"}
    for entry in os.scandir(old):
        stale = entry.name.startswith(".") and entry.name.endswith(".tmp")  # an older version's killed write
        if entry.name in owned or stale or (new / entry.name).exists():
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), new / entry.name)
        else:
            _link_or_copy(entry.path, str(new / entry.name))


def _check_json_scalars(where: str, d: dict) -> None:
    for key, value in d.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int):
            if not -MAX_CONFIG_INT <= value <= MAX_CONFIG_INT:
                raise ValueError(f"{where}: {key}={value} is out of range (|value| <= {MAX_CONFIG_INT})")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{where}: {key}={value} must be a finite number")
        else:
            raise ValueError(f"{where}: {key} must be a number, a string or a bool, got {type(value).__name__}")


def _manifest(directory: Path) -> dict | None:
    """The ``files`` manifest of ``state.json`` (checked against its own sha256), or None for a
    checkpoint written before manifests existed."""
    extra = read_json(directory / STATE)
    if not isinstance(extra, dict):
        raise ValueError(f"checkpoint file {directory / STATE} is corrupt (not a JSON object)")
    if "sha256" in extra:
        body = {k: v for k, v in extra.items() if k != "sha256"}
        if _json_sha256(body) != extra["sha256"]:
            raise ValueError(f"checkpoint file {directory / STATE} is damaged (its contents do not "
                             "match the sha256 it records)")
    files = extra.get("files")
    if files is not None and not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())):
        raise ValueError(f"checkpoint file {directory / STATE} is corrupt ('files' is not a name -> sha256 map)")
    return files


def _verify(directory: Path, names: list[str] | None = None) -> None:
    """Compare files with the sha256 recorded in ``state.json``; name the first damaged one."""
    files = _manifest(directory)
    if files is None:
        return
    for name in names if names is not None else sorted(files):
        if name not in files:
            continue
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} is missing")
        if _sha256(path) != files[name]:
            raise ValueError(f"checkpoint file {path} is damaged: its sha256 differs from the one "
                             f"recorded in {STATE} when it was saved")


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
    cfg = read_json(directory / "config.json")
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ValueError(f"{directory / 'config.json'} has no 'model' entry; not a tformer checkpoint")
    if (directory / STATE).is_file():
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


class ModelFile:
    """Another set of weights for the same model, stored beside ``model.safetensors``:
    ``save_checkpoint(..., files={"averaged.safetensors": ModelFile(other_model)})`` writes it (in the
    same atomic commit, with its sha256 in the manifest) and :func:`load_model_file` reads it back."""

    def __init__(self, model: nn.Module):
        self.model = model

    def save(self, path: str) -> None:
        save_model(unwrap(self.model), path)


def load_model_file(directory: str | os.PathLike, name: str, model: nn.Module,
                    device: torch.device | str = "cpu") -> nn.Module:
    """Load the weights file ``name`` of a checkpoint (written with :class:`ModelFile`) into ``model``.

    The file is checked against the checkpoint's manifest first; a missing, damaged or non-finite
    file, or one that does not fit ``model``, is an error naming it.
    """
    directory = recover(directory, wait=0)
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} is missing")
    _verify(directory, [name])
    try:
        load_model(unwrap(model), str(path), strict=True, device=str(device))
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit the model: {str(error)[:500]}") from None
    for key, tensor in unwrap(model).state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path} holds NaN or Inf values in {key}")
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

    Args:
        model: load into this model (build it from ``read_config(directory)["model"]``); its
            config must equal the stored one (``ValueError`` lists the differing fields).
        optimizer, scheduler: restore their state too (needs ``optimizer.safetensors``).
        restore_rng: also restore the torch/Python/NumPy random generators, so that a resumed
            run draws the same dropout masks as an uninterrupted one.

    Raises:
        FileNotFoundError: the directory or a needed file is missing.
        ValueError: a file is corrupt or damaged (its sha256 differs from the recorded one), the
            files come from different saves, the weights hold NaN/Inf, or the model does not match.
    """
    cfg = read_config(directory)
    directory = recover(directory, wait=0)
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
    try:
        load_model(unwrap(model), str(directory / "model.safetensors"), strict=True, device=str(device))
    except RuntimeError as error:
        raise ValueError(
            f"{directory / 'model.safetensors'} does not fit the model: {str(error)[:500]}"
        ) from None
    for name, tensor in unwrap(model).state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{directory / 'model.safetensors'} holds NaN or Inf values in {name}; "
                             "the run diverged before this save, so these weights cannot be used")
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


def _load_optimizer(directory: Path, extra: dict, step: str, optimizer, restore_rng: bool) -> None:
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
