"""The checkpoint's file format: safetensors for tensors, JSON for everything else, and a manifest.

``state.json`` records the sha256 of every other file of the checkpoint (``"files"``, the manifest)
and the sha256 of its own contents (``"sha256"``). safetensors itself carries no checksum, so a
flipped byte would otherwise load silently. A file the manifest does not list is not part of the
checkpoint and is never read; a checkpoint without a manifest is refused (:func:`add_manifest`
gives one to a checkpoint the user trusts).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file, save_model
from torch import nn

from tformer.runtime import unwrap

FORMAT = 1
STATE = "state.json"
# the checkpoint's own files, beside whatever the caller adds (vocabularies, tokenizers)
OWN_FILES = ("config.json", STATE, "model.safetensors", "optimizer.safetensors")
# a bound on config.json sizes, checked before anything is allocated: 2**31 of anything is absurd
# for this course (the paper's big model has d_model 1024 and a 37000-token vocabulary)
MAX_CONFIG_INT = 2**31 - 1
# JSON files of a checkpoint are small (vocabularies of a few thousand entries); a bound keeps a
# damaged or hostile file from taking gigabytes of memory before it is parsed
MAX_JSON_BYTES = 64 * 2**20


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _usual_permissions(path: str | os.PathLike) -> None:
    """rw for whoever the umask allows, as ``open(..., "w")`` would give (mkstemp and some writers
    create 0600, which would make another user's reader call a good file unreadable)."""
    os.chmod(path, 0o666 & ~_umask())


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(tmp_name)`` and ``os.replace``; nothing half-written remains."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _usual_permissions(tmp)
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


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` as UTF-8 (``\\n`` line ends on every system)."""
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)

    _atomic(path, write)


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """Read a checkpoint JSON file with a clear error when it is missing, too large or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} is missing")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"checkpoint file {path} is {size / 2**20:.0f} MiB, more than the "
                             f"{max_bytes / 2**20:.0f} MiB a checkpoint's JSON file may have; it is not "
                             "a file tformer wrote")
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


def _safetensors_meta(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as error:  # safetensors raises its own error type for a bad header
        raise ValueError(f"checkpoint file {path} is corrupt or truncated ({error})") from None


class ModelFile:
    """Another set of weights for the same model, stored beside ``model.safetensors``:
    ``save_checkpoint(..., files={"averaged.safetensors": ModelFile(other_model)})`` writes it (in the
    same atomic commit, with its sha256 in the manifest) and
    :func:`~tformer.training.checkpoint.load_model_file` reads it back."""

    def __init__(self, model: nn.Module):
        self.model = model

    def save(self, path: str) -> None:
        save_model(unwrap(self.model), path)


class TensorFile:
    """A ``{name: tensor}`` dict stored as one safetensors file of a checkpoint (as :class:`ModelFile`
    stores a model's weights); read it back with :func:`read_tensors`."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def save(self, path: str) -> None:
        save_file(self.tensors, path)


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, with an error naming the file when it is damaged."""
    _safetensors_meta(Path(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as error:
        raise ValueError(f"checkpoint file {path} is corrupt or truncated ({error})") from None


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


def _upgrade_command(directory: Path) -> str:
    return f"python -c \"from tformer.training.checkpoint import add_manifest; add_manifest({str(directory)!r})\""


def _manifest(directory: Path) -> dict[str, str]:
    """The ``files`` manifest of ``state.json``, checked against the sha256 that file records."""
    extra = read_json(directory / STATE)
    if not isinstance(extra, dict):
        raise ValueError(f"checkpoint file {directory / STATE} is corrupt (not a JSON object)")
    if "sha256" not in extra or "files" not in extra:
        raise ValueError(
            f"the checkpoint in {directory} has no manifest ({STATE} records no sha256 of its files: it "
            "was written by an older tformer, or the entries were removed), so its files cannot be "
            f"checked; if you trust it, add one with: {_upgrade_command(directory)}")
    body = {k: v for k, v in extra.items() if k != "sha256"}
    if _json_sha256(body) != extra["sha256"]:
        raise ValueError(f"checkpoint file {directory / STATE} is damaged (its contents do not "
                         "match the sha256 it records)")
    files = extra["files"]
    if not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())):
        raise ValueError(f"checkpoint file {directory / STATE} is corrupt ('files' is not a name -> sha256 map)")
    return files


def listed(directory: str | os.PathLike, name: str) -> bool:
    """Whether ``name`` is one of the files the checkpoint's manifest lists (a file that merely
    lies in the directory, such as an ``averaged.safetensors`` copied there, is not)."""
    return name in _manifest(Path(directory))


def _verify(directory: Path, names: list[str] | None = None) -> None:
    """Compare files with the sha256 recorded in ``state.json``; name the first damaged one. A name
    in ``names`` that the manifest does not list is refused: only the checkpoint's files are read."""
    files = _manifest(directory)
    for name in names if names is not None else sorted(files):
        if name not in files and not (directory / name).exists():
            raise FileNotFoundError(f"checkpoint file {directory / name} is missing (and the checkpoint's "
                                    f"manifest, {STATE}, does not list it: this save did not write it)")
        if name not in files:
            raise ValueError(f"{directory / name} is not one of the files the checkpoint's manifest "
                             f"({STATE}) lists, so it was not written by the save; tformer does not "
                             "read it (remove it, or save the checkpoint again)")
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} is missing")
        if _sha256(path) != files[name]:
            raise ValueError(f"checkpoint file {path} is damaged: its sha256 differs from the one "
                             f"recorded in {STATE} when it was saved")


def verify_files(directory: str | os.PathLike, names: list[str]) -> None:
    """Check the named files of a checkpoint: each must be listed in its manifest and match the
    sha256 recorded there (``ValueError``/``FileNotFoundError`` naming the file otherwise)."""
    _verify(Path(directory), list(names))


def add_manifest(directory: str | os.PathLike) -> None:
    """Give a checkpoint written before manifests existed one: record the sha256 of its files
    (those of the checkpoint's own format and the caller's JSON/safetensors files) in
    ``state.json``. Run it only on a checkpoint you trust: from then on its files are checked."""
    directory = Path(directory)
    extra = read_json(directory / STATE)
    if not isinstance(extra, dict):
        raise ValueError(f"checkpoint file {directory / STATE} is corrupt (not a JSON object)")
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != STATE
                   and not p.name.startswith(".") and p.suffix in (".json", ".safetensors"))
    extra.pop("sha256", None)
    extra["files"] = {name: _sha256(directory / name) for name in names}
    extra["sha256"] = _json_sha256(extra)
    write_json(directory / STATE, extra)
