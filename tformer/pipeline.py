"""The whole translation recipe in one place: data → vocabularies → batches → model → training →
checkpoint → BLEU. The command line (``python -m tformer train``), the translation benchmark and
the training chapter all call these functions, so their settings and numbers agree.

Tokenizers: Chinese is always split by character. English is split by word by default (enough
for the small, regular built-in corpus); ``tokenizer="bpe"`` instead trains a byte-pair encoding
(:class:`tformer.data.BPETokenizer`) on the English side of the training split, the option for
real corpora, where a word vocabulary grows large and leaves many test words unknown (the paper
uses BPE / word pieces, §5.1). The source stays per character because a Chinese character is
already a small sub-word unit and a few thousand of them cover almost any text.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from tformer import data
from tformer.checkpoint import (
    TOKENIZER_KINDS,
    load_checkpoint,
    load_target_tokenizer,
    save_checkpoint,
)
from tformer.decode import Translator
from tformer.metrics import bleu
from tformer.model import Transformer, TransformerConfig
from tformer.train import (
    LabelSmoothingLoss,
    TrainState,
    autocast_dtype,
    default_device,
    fit,
    make_optimizer,
    noam_scheduler,
)


@dataclass
class Settings:
    """Model size and training hyper-parameters; the defaults are the CLI's and the benchmark's.

    They are far smaller than the paper's base model (d_model 512, N = 6, 100k steps on 8 GPUs):
    the built-in corpus is small and regular, and this size reaches BLEU ≥ 90 on it in about three
    minutes on two CPU cores. Label smoothing, Adam's betas and the shape of the learning-rate
    schedule are the paper's; the warmup is shorter because the whole run is a few thousand steps.
    """

    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 2
    dim_feedforward: int = 512
    dropout: float = 0.1
    max_len: int = 128
    batch_tokens: int = 1500
    warmup: int = 200
    lr_factor: float = 0.5
    smoothing: float = 0.1
    clip_norm: float = 1.0
    epochs: int = 10
    max_minutes: float | None = 3.0
    seed: int = 0
    min_freq: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> Settings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def load_data(
    source: str, *, seed: int = 0, errors: str = "raise", log=print
) -> dict[str, list[data.Pair]]:
    """``"builtin"`` → the built-in splits; a path → a Tatoeba-style TSV split 90/5/5 with ``seed``.

    The file split is deterministic, so ``evaluate`` finds the same held-out test sentences that
    ``train`` never saw.
    """
    if source == "builtin":
        return data.builtin_splits()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"--data {source!r}: no such file (use 'builtin' for the built-in corpus)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the count of skipped lines is printed below instead
        pairs = data.read_tsv_pairs(path, errors=errors)
    skipped = getattr(pairs, "skipped", 0)
    if skipped and log is not None:
        log(f"skipped {skipped} malformed line(s) of {path}")
    if len(pairs) < 10:
        raise ValueError(f"{path} holds only {len(pairs)} usable sentence pairs; training needs at least 10")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_hold = max(1, len(pairs) // 20)
    test = [pairs[i] for i in order[:n_hold]]
    valid = [pairs[i] for i in order[n_hold : 2 * n_hold]]
    train = [pairs[i] for i in order[2 * n_hold :]]
    return {"train": train, "valid": valid, "test": test}


def build_vocabs(train: list[data.Pair], min_freq: int = 1) -> tuple[data.Vocab, data.Vocab]:
    """Source vocabulary of Chinese characters and target vocabulary of English words."""
    src = data.Vocab.build([data.tokenize_zh(p.src) for p in train], min_freq=min_freq)
    tgt = data.Vocab.build([data.tokenize_en(p.tgt) for p in train], min_freq=min_freq)
    return src, tgt


def build_bpe_vocabs(
    train: list[data.Pair], vocab_size: int = 8000, min_freq: int = 1
) -> tuple[data.Vocab, data.Vocab, data.BPETokenizer]:
    """Chinese characters for the source, a BPE tokenizer learnt on the English side of ``train``.

    Returns ``(src_vocab, tgt_vocab, tgt_tokenizer)``; ``tgt_vocab`` is ``tgt_tokenizer.vocab``,
    so ids 0..3 are the usual specials. Merges need a pair seen at least twice.
    """
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size <= len(data.SPECIALS):
        raise ValueError(
            f"bpe_vocab_size={vocab_size!r} must be an int > {len(data.SPECIALS)} (the special tokens)"
        )
    src = data.Vocab.build([data.tokenize_zh(p.src) for p in train], min_freq=min_freq)
    tok = data.BPETokenizer.train((p.tgt for p in train), vocab_size=vocab_size)
    return src, tok.vocab, tok


def make_model(settings: Settings, src_vocab: data.Vocab, tgt_vocab: data.Vocab) -> Transformer:
    """A post-LN Transformer (as in the paper) with tied target embedding and output projection."""
    s = settings
    config = TransformerConfig(
        src_vocab_size=len(src_vocab), tgt_vocab_size=len(tgt_vocab), d_model=s.d_model,
        num_heads=s.num_heads, num_encoder_layers=s.num_layers, num_decoder_layers=s.num_layers,
        dim_feedforward=s.dim_feedforward, dropout=s.dropout, max_len=s.max_len,
        pad_id=src_vocab.pad_id,
    )  # fmt: skip
    return Transformer(config)


def batches_for(pairs, src_vocab, tgt_vocab, settings: Settings, *, shuffle: bool, seed: int = 0,
                tgt_tokenize=data.tokenize_en):
    return data.make_batches(
        pairs, src_vocab, tgt_vocab, data.tokenize_zh, tgt_tokenize,
        max_tokens=settings.batch_tokens, shuffle=shuffle, seed=seed, max_len=settings.max_len - 1,
    )  # fmt: skip


def train_translation(
    splits: dict[str, list[data.Pair]],
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
    tokenizer is then the checkpoint's, whatever ``tokenizer`` says.

    Args:
        tokenizer: ``"word"`` (default): English words, vocabularies in ``src_vocab.json`` /
            ``tgt_vocab.json``. ``"bpe"``: a BPE tokenizer of at most ``bpe_vocab_size`` tokens
            is trained on the English side of ``splits["train"]`` and saved as
            ``tgt_tokenizer.json`` in the checkpoint; Chinese stays per character either way.
    """
    s = settings or Settings()
    if tokenizer not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer={tokenizer!r} must be one of {sorted(TOKENIZER_KINDS)}")
    if s.max_minutes is not None and not s.max_minutes > 0:
        raise ValueError(f"max_minutes={s.max_minutes} must be > 0 (leave it out for no time limit)")
    device = torch.device(device) if device is not None else default_device()
    state = None
    if resume and out_dir is not None and (Path(out_dir) / "state.json").exists():
        ckpt = load_checkpoint(out_dir, restore_rng=False)
        # the model and optimisation settings are the checkpoint's; the length of the run is ours
        s = replace(Settings.from_dict(ckpt.config["train"]), epochs=s.epochs, max_minutes=s.max_minutes)
        src_vocab, tgt_vocab, model = ckpt.src_vocab, ckpt.tgt_vocab, ckpt.model.to(device)
        tgt_tokenizer = load_target_tokenizer(out_dir, ckpt.config)
        tokenizer = "word" if tgt_tokenizer is None else "bpe"
    else:
        torch.manual_seed(s.seed)
        if tokenizer == "bpe":
            src_vocab, tgt_vocab, tgt_tokenizer = build_bpe_vocabs(splits["train"], bpe_vocab_size, s.min_freq)
        else:
            (src_vocab, tgt_vocab), tgt_tokenizer = build_vocabs(splits["train"], s.min_freq), None
        model = make_model(s, src_vocab, tgt_vocab).to(device)
    optimizer = make_optimizer(model)
    scheduler = noam_scheduler(optimizer, s.d_model, s.warmup, s.lr_factor)
    if resume and out_dir is not None and (Path(out_dir) / "state.json").exists():
        state = load_checkpoint(out_dir, model, optimizer, scheduler, device=device).state
        log(f"resuming from {out_dir} at step {state.step} (epoch {state.epoch + 1})")
    config = {
        "tokenizer": dict(TOKENIZER_KINDS[tokenizer]),
        "data": data_source,
        "train": asdict(s),
    }
    tok_files = {}
    tgt_tokenize = data.tokenize_en
    if tgt_tokenizer is not None:
        tok_files = {config["tokenizer"]["tgt_file"]: tgt_tokenizer}
        tgt_tokenize = tgt_tokenizer.tokenize

    def save(st: TrainState) -> None:
        if out_dir is not None:
            save_checkpoint(out_dir, model, optimizer, scheduler, st, config=config,
                            src_vocab=src_vocab, tgt_vocab=tgt_vocab, tokenizers=tok_files)  # fmt: skip

    def batches(pairs, **kw):
        return batches_for(pairs, src_vocab, tgt_vocab, s, tgt_tokenize=tgt_tokenize, **kw)

    valid = batches(splits["valid"], shuffle=False) if splits.get("valid") else None
    state = fit(
        model,
        lambda epoch: batches(splits["train"], shuffle=True, seed=s.seed * 1000 + epoch),
        valid,
        epochs=s.epochs, loss_fn=LabelSmoothingLoss(s.smoothing, ignore_index=tgt_vocab.pad_id),
        optimizer=optimizer, scheduler=scheduler, state=state, device=device, clip_norm=s.clip_norm,
        amp_dtype=autocast_dtype(device), max_minutes=s.max_minutes, max_steps=max_steps,
        on_checkpoint=save, progress=progress, log=log,
    )  # fmt: skip
    return Translator(model.eval(), src_vocab, tgt_vocab, device, tgt_tokenizer=tgt_tokenizer), state


def evaluate_bleu(
    translator: Translator, pairs: list[data.Pair], *, beam_size: int = 1
) -> tuple[float, list[str]]:
    """Corpus BLEU of the translations of ``pairs`` against their references, and the translations."""
    if not pairs:
        raise ValueError("no sentence pairs to evaluate")
    hyps = translator.translate([p.src for p in pairs], beam_size=beam_size)
    return bleu(hyps, [p.tgt for p in pairs]), hyps
