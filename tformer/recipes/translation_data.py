"""The data of the translation recipe: its presets (the model size and the defaults of each
``--data`` source) and its splits (:func:`load_data`), in a module of their own so the command
line's parser can show the defaults without importing the model."""

from __future__ import annotations

import hashlib
import random
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

from tformer.data import corpus, sources, tatoeba
from tformer.data.corpus import Pair
from tformer.runtime import available_memory

# TransformerConfig fields (all but the vocabularies): far smaller than the paper's base model
# (d_model 512, N = 6, 100k steps on 8 GPUs); the built-in corpus is small and regular, and this
# size reaches BLEU ≥ 90 on it in about three minutes on two CPU cores.
SMALL_MODEL = dict(d_model=128, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                   dim_feedforward=512, dropout=0.1, max_len=128)


# The recipe for the shipped Tatoeba pairs (``--data tatoeba``), chosen by experiment on the
# validation split (scripts/tatoeba_recipes.py; the table in chapter 8). Real sentences have a large,
# open English vocabulary, hence BPE; fifteen minutes on two cores is the budget it was tuned for.
# concat=0.5 adds joined pairs every epoch (tformer.data.augment): the one change that beat the
# recipe by more than its interval, over two seeds.
DATA_DEFAULTS: dict[str, dict] = {
    "tatoeba": dict(tokenizer="bpe", bpe_vocab_size=4000, max_minutes=15.0, epochs=100, average=3,
                    beam_size=4, alpha=1.5, concat=0.5,
                    model=dict(d_model=128, num_heads=4, dim_feedforward=512, dropout=0.1,
                               attention_dropout=0.0, activation_dropout=0.0)),
}
TOKENIZER_KEYS = ("tokenizer", "bpe_vocab_size")


def tokenizer_for(source: str) -> tuple[str, int]:
    """``(tokenizer, bpe_vocab_size)`` defaults for ``--data source``."""
    preset = DATA_DEFAULTS.get(source, {})
    return preset.get("tokenizer", "word"), preset.get("bpe_vocab_size", 8000)


# a parallel corpus is read into memory whole; Tatoeba's cmn-eng is 5 MB
MAX_DATA_BYTES = 2 * 2**30


def load_data(source: str, *, seed: int = 0, errors: str = "raise", log=print) -> dict[str, list[Pair]]:
    """``"builtin"`` → the built-in splits; ``"tatoeba"`` → the shipped Tatoeba pairs in their fixed
    splits (:func:`tformer.data.tatoeba.tatoeba_splits`); a path → a Tatoeba-style TSV split
    90/5/5 with ``seed``.

    Every split is deterministic, so ``evaluate`` finds the same held-out test sentences that
    ``train`` never saw.
    """
    if source == "builtin":
        return corpus.builtin_splits()
    if source == "tatoeba":
        return tatoeba.tatoeba_splits()
    path = Path(source)
    if path.is_dir():
        raise ValueError(f"--data {source!r} is a directory; give a TSV file (English<TAB>Chinese"
                         "<TAB>attribution per line), 'builtin' or 'tatoeba'")
    if path.exists() and not path.is_file():
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(path.stat().st_mode) else "a device or other special file"
        raise ValueError(f"--data {source!r} is {kind}, not a regular file (it may never end); "
                         "save the data to a TSV file first and give that file")
    if path.is_file() and path.stat().st_size > MAX_DATA_BYTES:
        raise ValueError(f"--data {source!r} is {path.stat().st_size / 2**30:.1f} GiB, more than the "
                         f"{MAX_DATA_BYTES // 2**30} GiB this course's recipe reads into memory; use a subset")
    if not path.is_file():
        raise FileNotFoundError(
            f"--data {source!r}: no such file (use 'builtin' for the built-in corpus or 'tatoeba' for "
            "the shipped Tatoeba sentences)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the count of skipped lines is printed below instead
        pairs = sources.read_tsv_pairs(path, errors=errors)
    tatoeba.check_direction(pairs, str(path))
    skipped = getattr(pairs, "skipped", 0)
    if skipped and log is not None:
        log(f"skipped {skipped} malformed line(s) of {path} ({sources.skip_summary(pairs)})")
    if len(pairs) < 10:
        raise ValueError(f"{path} holds only {len(pairs)} usable sentence pairs; training needs at least 10")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_hold = max(1, len(pairs) // 20)
    test = [pairs[i] for i in order[:n_hold]]
    valid = [pairs[i] for i in order[n_hold : 2 * n_hold]]
    train = [pairs[i] for i in order[2 * n_hold :]]
    return {"train": train, "valid": valid, "test": test}


def _fingerprint(pairs: Sequence[Pair]) -> str:
    """sha256 of the training pairs: a resumed run must read the very sentences it started on."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(f"{p.src}\t{p.tgt}\n".encode())
    return h.hexdigest()


# a bound on what config.json may ask for, checked before anything is allocated (the paper's big
# model has 213M parameters; this course trains models of a few million)
MAX_PARAMETERS = 500_000_000


def check_model_size(config, training: bool = False) -> int:
    """The parameter count of a Transformer of ``config``, estimated without building it, checked
    against :data:`MAX_PARAMETERS` and against the memory this machine has available (4 bytes a
    parameter for the weights; training adds the gradients and Adam's two moments, 16 in all).
    A ``ValueError`` names the limit and the flags that set the size."""
    c = config
    per_layer = 4 * c.d_model * c.d_model + 2 * c.d_model * c.dim_feedforward
    total = (c.src_vocab_size + c.tgt_vocab_size + c.max_len) * c.d_model + per_layer * (
        c.num_encoder_layers + 2 * c.num_decoder_layers)
    sizes = "--d-model, --num-layers, --dim-feedforward, --max-len"
    if total > MAX_PARAMETERS:
        raise ValueError(f"the model would have about {total:.3g} parameters (more than {MAX_PARAMETERS:.0e}); "
                         f"the sizes are absurd for this course (choose smaller {sizes})")
    need = total * (16 if training else 4)
    free = available_memory()
    if free is not None and need > free:
        what = "to train (weights, gradients and Adam's two moments)" if training else "for its weights"
        raise ValueError(f"the model ({total:.3g} parameters) needs about {need / 2**30:.1f} GiB {what}, more "
                         f"than the {free / 2**30:.1f} GiB this machine has available; choose smaller {sizes}")
    return total
