"""A character-level language model: text → :class:`~tformer.nn.gpt.GPT`, trained by the one loop.

The recipe of nanoGPT's ``shakespeare_char`` run (Radford et al., 2019, for the model; the text is
split by character): the first 90% of a text for training and the rest for validation, random
windows of ``block_size`` characters as batches, AdamW with weight decay on the matrices, a linear
warmup then half a cosine, gradient clipping. The loop is :func:`tformer.training.loop.train_epoch`,
the same one the translator trains with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import tformer._checks as _checks
from tformer.data.batches import RandomWindows
from tformer.data.text import CharTokenizer
from tformer.nn.gpt import GPT, GPTConfig
from tformer.runtime import PRECISIONS, eval_mode
from tformer.training.loop import TrainState, train_epoch
from tformer.training.objectives import LabelSmoothingLoss
from tformer.training.optim import make_adamw, warmup_cosine_scheduler


@dataclass
class CharLMSettings:
    """nanoGPT's CPU "baby" Shakespeare settings (``config/train_shakespeare_char.py``, CPU overrides)."""

    block_size: int = 64  # characters of context
    batch_size: int = 12  # windows per step
    steps: int = 2000  # optimizer steps
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # at the end of the cosine
    warmup: int = 100  # steps of linear warmup
    weight_decay: float = 0.1  # on the matrices only
    betas: tuple[float, float] = (0.9, 0.99)
    clip_norm: float = 1.0
    seed: int = 1337
    # float32, bf16 or auto (tformer.runtime.resolve_precision); float32 by default, as the chapters'
    # outputs were measured in float32
    precision: str = "float32"

    def __post_init__(self) -> None:
        for name in ("block_size", "batch_size", "steps"):
            _checks.positive_int(name, getattr(self, name))
        _checks.integer("warmup", self.warmup, minimum=0)
        _checks.positive_float("lr", self.lr)
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr={self.min_lr!r} must lie in [0, lr={self.lr}]")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")


def split_text(text: str, tokenizer: CharTokenizer | None = None, train_share: float = 0.9):
    """``(tokenizer, train ids, validation ids)``: the first ``train_share`` of the characters train."""
    if not isinstance(text, str) or len(text) < 2:
        raise ValueError("text must be a str of at least two characters")
    tok = tokenizer or CharTokenizer.from_text(text)
    ids = tok.encode(text)
    split = int(train_share * len(ids))
    return tok, ids[:split], ids[split:]


def train_char_lm(
    model: GPT,
    train_ids: torch.Tensor,
    settings: CharLMSettings | None = None,
    *,
    max_steps: int | None = None,
    progress: bool = False,
) -> TrainState:
    """Train ``model`` on random windows of ``train_ids`` for ``settings.steps`` steps (or stop
    after ``max_steps``); the state holds the loss of every step (``state.history["step_loss"]``)."""
    s = settings or CharLMSettings()
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a tformer GPT, got {type(model).__name__}")
    if s.block_size > model.config.block_size:
        raise ValueError(f"block_size={s.block_size} exceeds the model's block_size={model.config.block_size}")
    optimizer = make_adamw(model, s.lr, s.weight_decay, s.betas)
    scheduler = warmup_cosine_scheduler(optimizer, s.warmup, s.steps, s.min_lr / s.lr)
    batches = RandomWindows(train_ids, s.block_size, s.batch_size, s.steps, seed=s.seed)
    state = TrainState()
    # next-character cross-entropy: no smoothing, and no id is padding (-1 never occurs)
    loss_fn = LabelSmoothingLoss(0.0, ignore_index=-1)
    train_epoch(model, batches, loss_fn, optimizer, scheduler, clip_norm=s.clip_norm, state=state,
                max_steps=max_steps, progress=progress, desc="training", precision=s.precision)
    return state


def new_char_gpt(tokenizer: CharTokenizer, **config) -> GPT:
    """A GPT sized for ``tokenizer``'s characters; ``config`` holds the other GPTConfig fields."""
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **config))


@torch.inference_mode()
def evaluate_loss(model: nn.Module, ids: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy over all of ``ids`` (1-D).

    ``ids`` is cut into consecutive, non-overlapping windows of ``block_size`` tokens (the last
    one shorter), so every token but the first is predicted exactly once, from the tokens before
    it in its window.
    """
    block = model.config.block_size
    n = (len(ids) - 1) // block
    x = ids[: n * block].view(n, block)
    y = ids[1 : n * block + 1].view(n, block)
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, n, batch_size):
            _, loss = model(x[i : i + batch_size], y[i : i + batch_size])
            total += loss.item() * y[i : i + batch_size].numel()
            count += y[i : i + batch_size].numel()
        rest = len(ids) - 1 - n * block
        if rest:  # the short last window
            _, loss = model(ids[None, n * block : -1], ids[None, n * block + 1 :])
            total, count = total + loss.item() * rest, count + rest
    return total / count

