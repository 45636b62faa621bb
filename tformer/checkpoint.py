"""Checkpoints: tensors in safetensors, everything else in JSON, every file written atomically.

A checkpoint is a directory::

    model.safetensors      the weights (tied tensors stored once)
    config.json            {"model": TransformerConfig.to_dict(), "tokenizer": ..., "train": ...}
    src_vocab.json         source and target vocabularies (tformer.data.Vocab)
    tgt_vocab.json
    tgt_tokenizer.json     only with ``--tokenizer bpe``: the target side's BPE tokenizer
                           (Hugging Face ``tokenizers`` JSON); config.json's "tokenizer" entry names it
    optimizer.safetensors  Adam's moment tensors and the random-number generators' tensor states
    state.json             step, epoch, loss history, optimizer hyper-parameters, scheduler, RNGs

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

from tformer.train import TrainState, unwrap

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
    src_vocab=None,
    tgt_vocab=None,
    tokenizers: dict | None = None,
) -> Path:
    """Save a model (and optionally the optimizer, scheduler, run state and vocabularies).

    Args:
        directory: created if needed; existing files are replaced one by one, atomically.
        model: a :class:`tformer.model.Transformer` (or a DDP wrapper of one) with a ``.config``.
        config: extra JSON-able entries for ``config.json`` (tokenizer kind, training arguments).
        src_vocab, tgt_vocab: :class:`tformer.data.Vocab` objects saved as JSON.
        tokenizers: ``{file name: tokenizer}`` for trained tokenizers with a ``.save(path)``
            (:class:`tformer.data.BPETokenizer`), each written atomically into ``directory``.

    Returns:
        The directory as a ``Path``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    step = str(state.step if state is not None else 0)
    cfg = {"format": FORMAT, "model": model.config.to_dict(), **(config or {})}
    write_json(directory / "config.json", cfg)
    for name, vocab in (("src_vocab.json", src_vocab), ("tgt_vocab.json", tgt_vocab)):
        if vocab is not None:
            write_json(directory / name, vocab.to_dict())
    for name, tokenizer in (tokenizers or {}).items():
        _atomic(directory / name, tokenizer.save)
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


TOKENIZER_KINDS = {"word": {"src": "zh_char", "tgt": "en_word"},
                   "bpe": {"src": "zh_char", "tgt": "bpe", "tgt_file": "tgt_tokenizer.json"}}


def load_target_tokenizer(directory: str | os.PathLike, config: dict):
    """The target tokenizer a checkpoint's ``config.json`` names: ``None`` for English words.

    ``config["tokenizer"]`` is ``{"src": "zh_char", "tgt": "en_word"}`` (the default, also when
    the entry is absent) or ``{"src": "zh_char", "tgt": "bpe", "tgt_file": NAME}``, in which case
    ``NAME`` in ``directory`` is loaded as a :class:`tformer.data.BPETokenizer`.

    Raises:
        FileNotFoundError: the named tokenizer file is missing.
        ValueError: an unknown tokenizer kind, or a tokenizer file that cannot be read.
    """
    from tformer.data import BPETokenizer

    directory = Path(directory)
    tok = config.get("tokenizer") or TOKENIZER_KINDS["word"]
    if tok.get("src") != "zh_char" or tok.get("tgt") not in ("en_word", "bpe"):
        raise ValueError(
            f"unsupported tokenizer {tok!r} in {directory / 'config.json'}; expected source 'zh_char' "
            "and target 'en_word' or 'bpe'"
        )
    if tok["tgt"] == "en_word":
        return None
    name = tok.get("tgt_file")
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise ValueError(f"{directory / 'config.json'}: tokenizer 'tgt_file' must be a file name, got {name!r}")
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint file {path} is missing (config.json says the target side uses the BPE "
            f"tokenizer saved in {name})"
        )
    try:
        return BPETokenizer.load(path)
    except Exception as error:  # tokenizers raises its own exception type for a bad file
        raise ValueError(f"checkpoint file {path} is corrupt (not a tokenizers JSON file: {error})") from None


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    model: nn.Module
    config: dict
    state: TrainState | None
    src_vocab: object | None
    tgt_vocab: object | None


def _config_diff(want: dict, got: dict) -> list[str]:
    keys = sorted(set(want) | set(got))
    return [f"{k}: checkpoint {want.get(k)!r}, model {got.get(k)!r}" for k in keys if want.get(k) != got.get(k)]


def load_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    restore_rng: bool = True,
    device: torch.device | str = "cpu",
) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        model: load into this model; its config must equal the stored one (``ValueError`` lists
            the differing fields). ``None`` builds a new ``Transformer`` from ``config.json``.
        optimizer, scheduler: restore their state too (needs ``optimizer.safetensors``).
        restore_rng: also restore the torch/Python/NumPy random generators, so that a resumed
            run draws the same dropout masks as an uninterrupted one.

    Raises:
        FileNotFoundError: the directory or a needed file is missing.
        ValueError: a file is corrupt, the files come from different steps, or the model does
            not match.
    """
    from tformer.data import Vocab
    from tformer.model import Transformer, TransformerConfig

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    cfg = read_json(directory / "config.json")
    if "model" not in cfg:
        raise ValueError(f"{directory / 'config.json'} has no 'model' entry; not a tformer checkpoint")
    extra = read_json(directory / "state.json")
    step = str(extra.get("step", 0))
    meta = _safetensors_meta(directory / "model.safetensors")
    if meta.get("step") != step:
        raise ValueError(
            f"model.safetensors (step {meta.get('step')}) and state.json (step {step}) in {directory} "
            "come from different saves; the checkpoint was written half-way"
        )
    try:
        stored = TransformerConfig.from_dict(cfg["model"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{directory / 'config.json'} holds an invalid model config: {error}") from None
    if model is None:
        model = Transformer(stored)
    else:
        diff = _config_diff(stored.to_dict(), unwrap(model).config.to_dict())
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
    vocabs = []
    for name in ("src_vocab.json", "tgt_vocab.json"):
        vocabs.append(Vocab.from_dict(read_json(directory / name)) if (directory / name).exists() else None)
    train = TrainState.from_dict(extra["train"]) if extra.get("train") else None
    return Checkpoint(model, cfg, train, vocabs[0], vocabs[1])
