"""The Chinese→English translator, the whole recipe in one place: data → tokenizers → batches →
model → training → checkpoint → translation and BLEU. The command line (``python -m tformer
train``), the translation benchmark, the data-parallel demo and the training chapters all call
these functions, so their settings and numbers agree.

Tokenization is decided here and nowhere else (:class:`Tokenizers`): Chinese is always split by
character; English by word (``kind="word"``, enough for the small, regular built-in corpus) or by a
byte-pair encoding learnt on the English side of the training split (``kind="bpe"``, the option
for real corpora, where a word vocabulary grows large and leaves many test words unknown; the paper
uses BPE / word pieces, §5.1). A Chinese character is already a small sub-word unit, and a few
thousand of them cover almost any text.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

import tformer._checks as _checks
from tformer.data.augment import concatenate_pairs
from tformer.data.corpus import Pair
from tformer.data.text import SPECIALS
from tformer.inference.attention_maps import cross_attention
from tformer.inference.generation import beam_search, greedy_decode
from tformer.metrics import bleu
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.recipes.tokenizers import BPE_FILE as BPE_FILE
from tformer.recipes.tokenizers import KINDS, Tokenizers
from tformer.recipes.translation_data import (
    DATA_DEFAULTS,
    SMALL_MODEL,
    TOKENIZER_KEYS,
    _fingerprint,
    check_model_size,
)
from tformer.recipes.translation_data import (
    MAX_PARAMETERS as MAX_PARAMETERS,
)
from tformer.recipes.translation_data import (
    load_data as load_data,
)
from tformer.recipes.translation_data import (
    tokenizer_for as tokenizer_for,
)
from tformer.runtime import PRECISIONS, resolve_device, resolve_precision
from tformer.training.averaging import AVERAGED, RecentWeights
from tformer.training.checkpoint import (
    check_committable,
    listed,
    load_checkpoint,
    load_model_file,
    lock_directory,
    read_config,
    read_consistently,
    recover,
    save_checkpoint,
)
from tformer.training.loop import TrainState, fit
from tformer.training.objectives import LabelSmoothingLoss
from tformer.training.optim import make_optimizer, noam_scheduler

# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """Training hyper-parameters and the model's size; the defaults are the CLI's and the benchmark's.

    ``model`` holds :class:`~tformer.nn.transformer.TransformerConfig` fields (the vocabulary sizes
    come from the data) and is checked by that class, once, here. Label smoothing, Adam's betas and
    the shape of the learning-rate schedule are the paper's; the warmup is shorter because the
    whole run is a few thousand steps.
    """

    model: dict = field(default_factory=lambda: dict(SMALL_MODEL))
    batch_tokens: int = 1500  # target + source tokens per batch, roughly
    warmup: int = 200  # steps of the rising half of the schedule (Eq. 3)
    lr_factor: float = 0.5  # multiplies the schedule
    smoothing: float = 0.1  # ε_ls, §5.4
    clip_norm: float = 1.0  # global gradient-norm clipping
    cooldown: float = 0.0  # the last fraction of the run, in which the rate falls linearly to 0 (0: none)
    bpe_dropout: float = 0.0  # BPE-dropout of the English training pieces (Provilkov et al., 2020; 0: none)
    concat: float = 0.0  # joined training pairs added per epoch, as a share of the pairs (Nguyen et al., 2021; 0: none)
    epochs: int = 10
    max_minutes: float | None = 3.0  # stop training after this long (None: only epochs)
    seed: int = 0
    min_freq: int = 1  # rarer tokens become <unk>
    average: int = 1  # translate with the mean of the weights at the last `average` saves (1: the last weights)
    beam_size: int = 1  # how `evaluate` and `translate` decode this model unless told (1: greedy)
    alpha: float = 0.6  # beam search's length penalty, ((5 + length) / 6) ** alpha (Wu et al., 2016)
    # float32, bf16 or auto (bf16 where the hardware has it and it is faster; tformer.runtime.resolve_precision).
    # float32 by default: the Tatoeba recipe was chosen, and the chapters' outputs measured, in float32.
    precision: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.model, dict):
            raise TypeError(f"model must be a dict of TransformerConfig fields, got {type(self.model).__name__}")
        self.model = {**SMALL_MODEL, **self.model}
        bad = {"src_vocab_size", "tgt_vocab_size", "pad_id"} & set(self.model)
        if bad:
            raise ValueError(f"model must not set {sorted(bad)}: the vocabularies decide them")
        self.model_config(len(SPECIALS) + 1, len(SPECIALS) + 1)  # checks the sizes, once
        for name in ("batch_tokens", "warmup", "epochs", "min_freq", "average", "beam_size"):
            _checks.positive_int(name, getattr(self, name))
        _checks.integer("seed", self.seed)
        _checks.positive_float("lr_factor", self.lr_factor)
        _checks.probability("smoothing", self.smoothing)
        _checks.positive_float("clip_norm", self.clip_norm)
        _checks.probability("cooldown", self.cooldown, upper_inclusive=True)
        _checks.probability("bpe_dropout", self.bpe_dropout)
        _checks.probability("concat", self.concat, upper_inclusive=True)
        _checks.real_between("alpha", self.alpha, -1e-12, 10.0, "a length penalty in [0, 10), e.g. 0.6")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        if self.max_minutes is not None:
            _checks.positive_float("max_minutes", self.max_minutes, "3 (leave it out for no time limit)")

    def model_config(self, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0) -> TransformerConfig:
        """A post-LN Transformer (as in the paper) with the target embedding tied to the output."""
        return TransformerConfig(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                                 pad_id=pad_id, **self.model)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Settings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def for_data(cls, source: str = "builtin", **changes) -> Settings:
        """The defaults for ``--data source``: :data:`DATA_DEFAULTS` where it has an entry (the
        Tatoeba recipe), the class defaults otherwise; ``changes`` override either (``model``
        entries one by one)."""
        preset = {k: v for k, v in DATA_DEFAULTS.get(source, {}).items() if k not in TOKENIZER_KEYS}
        model = {**preset.pop("model", {}), **changes.pop("model", {})}
        return cls(model=model, **{**preset, **changes})


# --------------------------------------------------------------------------- text in, text out


class Translator:
    """A trained model plus its tokenizers: sentences in, sentences out.

    Args:
        model: a :class:`tformer.nn.transformer.Transformer`.
        tokenizers: the :class:`Tokenizers` it was trained with.
        device: where to run (default: the model's device).
    """

    def __init__(self, model: nn.Module, tokenizers: Tokenizers, device: torch.device | str | None = None):
        if not isinstance(tokenizers, Tokenizers):
            raise TypeError(f"tokenizers must be a Tokenizers, got {type(tokenizers).__name__}")
        self.model, self.tokenizers = model, tokenizers
        self.src_vocab, self.tgt_vocab = tokenizers.src_vocab, tokenizers.tgt_vocab
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, device: torch.device | str | None = None, *,
                        averaged: bool = True) -> Translator:
        """Load a checkpoint directory written by ``python -m tformer train`` (or :func:`train_translation`).

        A BPE checkpoint (``--tokenizer bpe``) also loads the tokenizer file its ``config.json``
        names; a missing file is a ``FileNotFoundError`` naming it. A run trained with
        ``average > 1`` translates with its averaged weights (``averaged.safetensors``) unless
        ``averaged=False`` asks for the last ones.
        """
        def read():  # every file from one save, even while a training run commits the next
            model, tokenizers, _ = _load(directory)
            if averaged and listed(directory, AVERAGED):
                load_model_file(directory, AVERAGED, model)
            return model, tokenizers

        model, tokenizers = read_consistently(directory, read)
        return cls(model.eval(), tokenizers, resolve_device(device))

    def encode(self, sentences: Sequence[str]) -> torch.Tensor:
        """Tokenize and pad source sentences → ids ``(B, S)`` (unknown characters → <unk>)."""
        rows = []
        limit = self.model.config.max_len
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise TypeError(f"sentence {i} must be a str, got {type(s).__name__}")
            ids = self.src_vocab.encode(self.tokenizers.tokenize_src(s))  # as in training: no <bos>/<eos>
            if not ids:
                raise ValueError(f"sentence {i} ({s!r}) is empty; there is nothing to translate")
            if len(ids) > limit:
                raise ValueError(
                    f"sentence {i} has {len(ids)} tokens but the model's max_len is {limit}; "
                    "split it into shorter sentences"
                )
            rows.append(ids)
        width = max(len(r) for r in rows)
        pad = self.src_vocab.pad_id
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)

    def ids_to_text(self, ids: Sequence[int]) -> str:
        """Target ids → detokenized English, stopping at <eos>."""
        ids = list(ids)
        if self.tgt_vocab.eos_id in ids:
            ids = ids[: ids.index(self.tgt_vocab.eos_id)]
        return self.tokenizers.detokenize_tgt(self.tgt_vocab.decode(ids, strip_special=True))

    def translate(self, sentences: str | Sequence[str], *, beam_size: int = 1, alpha: float = 0.6,
                  max_len: int | None = None, batch_size: int = 128) -> list[str]:
        """Translate one sentence or a list; ``beam_size=1`` is greedy decoding."""
        if isinstance(sentences, str):
            sentences = [sentences]
        if len(sentences) == 0:
            raise ValueError("sentences is empty; give at least one sentence to translate")
        _checks.positive_int("batch_size", batch_size)
        _checks.positive_int("beam_size", beam_size)
        _checks.real_between("alpha", alpha, -1e-12, 10.0, "a length penalty in [0, 10), e.g. 0.6")
        out: list[str] = []
        kw = {"bos_id": self.tgt_vocab.bos_id, "eos_id": self.tgt_vocab.eos_id, "max_len": max_len}
        for i in range(0, len(sentences), batch_size):
            src = self.encode(sentences[i : i + batch_size])
            if beam_size == 1:
                ids = greedy_decode(self.model, src, **kw)
            else:
                ids = beam_search(self.model, src, beam_size=beam_size, alpha=alpha, **kw)
            out += [self.ids_to_text(row) for row in ids.tolist()]
        return out

    def alignment(self, sentence: str, translation: str | None = None):
        """Cross-attention of the last decoder layer, averaged over heads, for one sentence.

        Returns:
            ``(weights (T, S), source tokens, target tokens)``, where row t is the attention while
            producing target token t (the last target token is <eos>).
        """
        src = self.encode([sentence])
        if translation is None:
            translation = self.translate(sentence)[0]
        tgt_tokens = self.tokenizers.tokenize_tgt(translation)
        ids = self.tgt_vocab.encode(tgt_tokens, add_bos=True, add_eos=True)
        tgt_in = torch.tensor([ids[:-1]], device=self.device)
        w = cross_attention(self.model, src, tgt_in)[0].mean(dim=0)  # (T, S)
        return w.cpu(), self.tokenizers.tokenize_src(sentence), tgt_tokens + ["<eos>"]


# --------------------------------------------------------------------------- training


def _load(directory: str | os.PathLike, optimizer_for=None, device: torch.device | str = "cpu"):
    """(model, tokenizers, config) from a checkpoint directory."""
    cfg = read_config(directory)
    try:
        model = Transformer(_checked_model_config(cfg["model"]))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{Path(directory) / 'config.json'} holds an invalid model config: {error}") from None
    load_checkpoint(directory, model, restore_rng=False, device=device)
    tokenizers = Tokenizers.load(directory, cfg.get("tokenizer", "word"))
    for side, vocab, size in (("src", tokenizers.src_vocab, model.config.src_vocab_size),
                              ("tgt", tokenizers.tgt_vocab, model.config.tgt_vocab_size)):
        if len(vocab) != size:  # ids past the table would be out of range, or never produced
            raise ValueError(f"{Path(directory) / f'{side}_vocab.json'} holds {len(vocab)} tokens but the model's "
                             f"{side}_vocab_size is {size}; the files come from different runs")
    return model, tokenizers, cfg




def _checked_model_config(d: dict) -> TransformerConfig:
    """A :class:`TransformerConfig` from a checkpoint's ``"model"`` entry: every field present (a
    missing ``d_model`` must not silently become the default 512), types and ranges checked by the
    class, and the parameter count bounded, all before any tensor is allocated."""
    optional = {"attention_dropout", "activation_dropout"}  # added later; absent means `dropout`
    missing = sorted({f.name for f in fields(TransformerConfig)} - set(d) - optional)
    if missing:
        raise ValueError(f"fields {missing} are missing")
    config = TransformerConfig.from_dict(d)
    check_model_size(config)
    return config


def evaluate_bleu(translator: Translator, pairs: list[Pair], *, beam_size: int = 1,
                  alpha: float = 0.6) -> tuple[float, list[str]]:
    """Corpus BLEU of the translations of ``pairs`` against their references, and the translations."""
    if not pairs:
        raise ValueError("no sentence pairs to evaluate")
    hyps = translator.translate([p.src for p in pairs], beam_size=beam_size, alpha=alpha)
    return bleu(hyps, [p.tgt for p in pairs]), hyps


def decoding_defaults(directory: str | os.PathLike) -> tuple[int, float]:
    """``(beam_size, alpha)`` the run in ``directory`` was trained to be decoded with (its
    :class:`Settings`; greedy for a checkpoint that predates them)."""
    train = read_config(directory).get("train") or {}
    return int(train.get("beam_size", 1)), float(train.get("alpha", 0.6))


def train_translation(
    splits: dict[str, list[Pair]],
    out_dir: str | os.PathLike | None,
    settings: Settings | None = None,
    *,
    data_source: str = "builtin",
    tokenizer: str = "word",
    bpe_vocab_size: int = 8000,
    resume: bool = False,
    max_steps: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    log=print,
) -> tuple[Translator, TrainState]:
    """Train a Transformer on ``splits`` and save checkpoints to ``out_dir`` after every epoch.

    With ``resume=True`` and a checkpoint in ``out_dir``, training continues where it stopped
    (same batches, same dropout masks) and ends exactly where an uninterrupted run would; the
    model, the tokenizers and the optimisation settings are then the checkpoint's (only
    ``epochs``, ``max_minutes`` and ``precision`` are taken from ``settings``). Resuming on other training
    sentences than the checkpoint's (compared by a sha256 stored in ``config.json``) is a
    ``ValueError``, and so is a non-empty ``out_dir`` that holds no loadable checkpoint; an empty
    or missing one starts a new run. ``out_dir`` is locked while training
    (:func:`~tformer.training.checkpoint.lock_directory`); Ctrl-C saves the current step there and
    raises :class:`~tformer.training.loop.TrainingInterrupted`.

    Args:
        tokenizer: ``"word"`` or ``"bpe"`` (see :class:`Tokenizers`); with ``"bpe"`` a tokenizer
            of at most ``bpe_vocab_size`` tokens is learnt from ``splits["train"]``.
    """
    s = settings or Settings()
    if not isinstance(s, Settings):
        raise TypeError(f"settings must be a Settings, got {type(s).__name__}")
    if log is None:
        def log(_message: str) -> None:  # silence, as fit(log=None) is
            pass
    if tokenizer not in KINDS:
        raise ValueError(f"tokenizer={tokenizer!r} must be one of {sorted(KINDS)}")
    device = resolve_device(device)
    resolve_precision(s.precision, device)  # bf16 where the hardware has none fails here, before any work
    if out_dir is not None:
        out_dir = recover(out_dir)  # also finishes what a killed save left
        check_committable(out_dir)  # a save could never replace it: refused before any training
    # a directory with anything in it is resumed (or refused with the reason), never restarted over
    resuming = resume and out_dir is not None and out_dir.is_dir() and any(out_dir.iterdir())
    fingerprint = _fingerprint(splits.get("train", []))
    if resume and not resuming:
        log(f"nothing to resume in {out_dir}: starting a new run")
    if resuming:
        model, tok, cfg = _load(out_dir, device=device)
        if cfg.get("data_sha256", fingerprint) != fingerprint or (
                "data_sha256" not in cfg and cfg.get("data", data_source) != data_source):
            raise ValueError(
                f"the checkpoint in {out_dir} was trained on {cfg.get('data')!r}, but the data given now "
                f"({data_source!r}) holds other training sentences; resume with the same data, or "
                "train into a new directory"
            )
        s = replace(Settings.from_dict(cfg["train"]), epochs=s.epochs, max_minutes=s.max_minutes,
                    precision=s.precision)
        model.to(device)
    else:
        torch.manual_seed(s.seed)
        tok = Tokenizers.build(splits["train"], tokenizer, bpe_vocab_size=bpe_vocab_size, min_freq=s.min_freq)
        for side, vocab in (("Chinese", tok.src_vocab), ("English", tok.tgt_vocab)):
            if len(vocab) <= len(SPECIALS):
                warnings.warn(f"min_freq={s.min_freq} leaves the {side} vocabulary with only the "
                              f"{len(SPECIALS)} special tokens: every word becomes <unk>; lower min_freq",
                              stacklevel=2)
        config = s.model_config(len(tok.src_vocab), len(tok.tgt_vocab), tok.src_vocab.pad_id)
        check_model_size(config, training=True)  # before anything is allocated
        model = Transformer(config).to(device)
    optimizer = make_optimizer(model)
    scheduler = noam_scheduler(optimizer, model.config.d_model, s.warmup, s.lr_factor)
    state = None
    if resuming:
        state = load_checkpoint(out_dir, model, optimizer, scheduler, device=device).state
        log(f"resuming from {out_dir} at step {state.step} (epoch {state.epoch + 1})")
    config = {"tokenizer": tok.kind, "data": data_source, "data_sha256": fingerprint, "train": s.to_dict()}
    recent = RecentWeights(s.average)
    if resuming:
        recent.load(out_dir)

    def save(st: TrainState) -> None:
        files = tok.files()
        if s.average > 1:
            recent.record(model, epoch_end=st.batch_in_epoch == 0)  # a stop in mid-epoch only joins the mean
            files.update(recent.files(model))
        if out_dir is not None:
            save_checkpoint(out_dir, model, optimizer, scheduler, st, config=config, files=files)

    def batches(pairs, **kw):
        return tok.batches(pairs, max_tokens=s.batch_tokens, max_len=model.config.max_len - 1, **kw)

    for split in ("train", "valid"):  # pairs that no batch can hold are counted, never dropped silently
        dropped = tok.count_too_long(splits.get(split, []), model.config.max_len - 1)
        if dropped:
            log(f"{split} {len(splits[split])} pairs, {dropped} longer than max_len {model.config.max_len} "
                f"(--max-len) dropped; raise --max-len to keep them")
    valid = batches(splits["valid"], shuffle=False) if splits.get("valid") else None
    # one writer per directory (re-entrant: the CLI already holds it); Ctrl-C saves, then raises
    with lock_directory(out_dir) if out_dir is not None else contextlib.nullcontext():
        state = fit(
            model,
            lambda epoch: batches(concatenate_pairs(splits["train"], s.concat, seed=s.seed * 1000 + epoch),
                                  shuffle=True, seed=s.seed * 1000 + epoch, bpe_dropout=s.bpe_dropout),
            valid,
            epochs=s.epochs, loss_fn=LabelSmoothingLoss(s.smoothing, ignore_index=tok.tgt_vocab.pad_id),
            optimizer=optimizer, scheduler=scheduler, state=state, device=device, clip_norm=s.clip_norm,
            precision=s.precision, max_minutes=s.max_minutes, max_steps=max_steps, cooldown=s.cooldown,
            on_checkpoint=save, progress=progress, log=log,
        )  # fmt: skip
    if recent.averaged is not None:
        model.load_state_dict(recent.averaged)  # training is over: translate with the mean
    return Translator(model.eval(), tok, device), state
