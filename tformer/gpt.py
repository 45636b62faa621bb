"""A decoder-only Transformer language model (GPT), sampling, and a character tokenizer.

GPT keeps only the decoder of Vaswani et al. (2017): masked self-attention (§3.2.3) and the
position-wise feed-forward network (§3.3), with no encoder and no cross-attention. The causal mask
is what makes it a language model: position t sees tokens 0..t and is trained to predict token
t + 1, so one forward pass gives T predictions at once (Radford et al., 2018; 2019).

The blocks are **pre-LN**, as in GPT-2: ``x + Attn(LN(x))`` then ``x + FFN(LN(x))``, and a final
LayerNorm before the output projection. (The paper, and tformer's encoder–decoder by default, use
post-LN: ``LN(x + Sublayer(x))``.) Names follow nanoGPT where it has one: ``n_layer`` is
``num_layers``, ``n_head`` is ``num_heads``, ``n_embd`` is ``d_model``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tformer import _checks
from tformer.attention import KVCache, MultiHeadAttention
from tformer.layers import FeedForward
from tformer.positional import LearnedPositionalEmbedding, PositionalEncoding


@dataclass
class GPTConfig:
    """Shape of a :class:`GPT`. ``dim_feedforward=None`` means ``4 * d_model`` (§3.3, GPT-2)."""

    vocab_size: int
    block_size: int = 256  # the longest context, in tokens
    num_layers: int = 4
    num_heads: int = 4
    d_model: int = 128
    dim_feedforward: int | None = None
    dropout: float = 0.0
    bias: bool = True  # biases in the Linear layers and LayerNorms
    positions: str = "learned"  # "learned" (GPT) or "sinusoidal" (§3.5)
    tie_weights: bool = True  # the output projection shares the token embedding (§3.4)
    activation: str = "gelu"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "num_layers", "num_heads", "d_model"):
            _checks.positive_int(name, getattr(self, name))
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by num_heads={self.num_heads} "
                "(each head gets d_model/num_heads dims)"
            )
        if self.dim_feedforward is None:
            self.dim_feedforward = 4 * self.d_model
        _checks.positive_int("dim_feedforward", self.dim_feedforward)
        _checks.probability("dropout", self.dropout)
        for name in ("bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions={self.positions!r} must be 'learned' or 'sinusoidal'")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation={self.activation!r} must be 'gelu' or 'relu'")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown GPTConfig fields {sorted(unknown)}")
        return cls(**d)


class Block(nn.Module):
    """One pre-LN decoder block without cross-attention: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.d_model
        self.ln_1 = nn.LayerNorm(d, bias=config.bias)
        self.attn = MultiHeadAttention(d, config.num_heads, config.dropout, config.bias)
        self.ln_2 = nn.LayerNorm(d, bias=config.bias)
        self.ffn = FeedForward(d, config.dim_feedforward, config.dropout, config.activation, config.bias)
        self.dropout = nn.Dropout(config.dropout)  # on each sub-layer's output (§5.4)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        h = self.ln_1(x)  # (B, T, d_model)
        if cache is None or len(cache) == 0:
            # No earlier positions: the fused kernel applies the causal mask without reading one.
            a = self.attn(h, h, h, cache=cache, is_causal=True)
        elif x.shape[1] == 1:
            a = self.attn(h, h, h, cache=cache)  # one new token may see every cached position
        else:
            T_q, T_k = x.shape[1], len(cache) + x.shape[1]
            mask = torch.ones(T_q, T_k, dtype=torch.bool, device=x.device).tril(T_k - T_q)
            a = self.attn(h, h, h, mask=mask, cache=cache)
        x = x + self.dropout(a)
        return x + self.dropout(self.ffn(self.ln_2(x)))


class GPT(nn.Module):
    """Token embedding + positions → N pre-LN blocks → LayerNorm → logits over the vocabulary."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        if c.positions == "learned":
            self.pos = LearnedPositionalEmbedding(c.block_size, c.d_model, c.dropout)
        else:
            self.pos = PositionalEncoding(c.d_model, c.block_size, c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.ln_f = nn.LayerNorm(c.d_model, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(self._init_weights)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight  # one (vocab, d_model) matrix, two uses
        # GPT-2 scales the init of the projections that write into the residual stream by
        # 1/sqrt(2N), so the variance of the sum of 2N residual branches stays O(1).
        for block in self.blocks:
            for proj in (block.attn.w_o, block.ffn.linear2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * c.num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_caches(self) -> list[KVCache]:
        """One empty :class:`~tformer.attention.KVCache` per block, for :meth:`forward`."""
        return [KVCache() for _ in self.blocks]

    def _check_idx(self, idx: object, name: str = "idx") -> torch.Tensor:
        _checks.tensor(name, idx, floating=False)
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"{name} must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
        lo, hi = (int(v) for v in torch.aminmax(idx))
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name} holds token id {bad}, outside the vocabulary 0..{self.config.vocab_size - 1}"
            )
        return idx

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        start: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits for every position, and the cross-entropy loss if ``targets`` is given.

        Args:
            idx: token ids ``(B, T)``, ``torch.long``.
            targets: ``(B, T)`` ids of the next tokens (``idx`` shifted left by one).
            caches: from :meth:`new_caches`; keys/values of ``idx`` are appended, earlier ones reused.
            start: position of ``idx[:, 0]``; by default 0, or the cached length with ``caches``.

        Returns:
            ``(logits (B, T, vocab_size), loss or None)``.
        """
        self._check_idx(idx)
        B, T = idx.shape
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"caches must hold one KVCache per block ({len(self.blocks)}), got {len(caches)}")
        cached = 0 if caches is None else len(caches[0])
        if start is None:
            start = cached
        elif start != cached:
            raise ValueError(f"start={start} must equal the number of cached positions ({cached})")
        if start + T > self.config.block_size:
            raise ValueError(
                f"positions {start}..{start + T - 1} exceed block_size={self.config.block_size}; "
                f"crop idx to its last {self.config.block_size - start} tokens"
            )
        x = self.pos(self.tok_emb(idx), start=start)  # (B, T, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        _checks.tensor("targets", targets, floating=False)
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss

    def configure_optimizer(
        self, lr: float = 1e-3, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.99)
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on the matrices (≥ 2-D) only; biases and LayerNorm gains are 1-D."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # The fused kernel updates every tensor in one pass (CPU and CUDA); same arithmetic.
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        do_sample: bool = True,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` tokens to ``idx`` (B, T), one at a time; returns (B, T + n).

        ``do_sample=False`` is greedy (argmax) decoding; otherwise each token is drawn by
        :func:`sample`. The model runs in eval mode (no dropout) and is put back afterwards.

        Context longer than ``block_size``: only the last ``block_size`` tokens are fed. With
        ``use_cache=True`` the cache holds keys/values of absolute positions, which all shift when
        the window slides, so once the window is full every step re-encodes the last
        ``block_size`` tokens into a fresh cache (no speedup there, identical tokens).
        """
        self._check_idx(idx)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")
        _check_sampling(temperature, top_k, top_p)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():  # like no_grad, minus autograd's bookkeeping per tensor
                idx = self._decode(idx, max_new_tokens, temperature, top_k, top_p, use_cache,
                                   generator, do_sample)
        finally:
            self.train(was_training)
        return idx.clone()  # a normal tensor again, usable in autograd outside inference mode

    def _decode(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        use_cache: bool,
        generator: torch.Generator | None,
        do_sample: bool,
    ) -> torch.Tensor:
        block = self.config.block_size
        caches = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = self(idx[:, -block:])
            elif caches is None or len(caches[0]) >= block:
                caches = self.new_caches()  # (re)fill from the last block_size tokens
                logits, _ = self(idx[:, -block:], caches=caches)
            else:
                logits, _ = self(idx[:, -1:], caches=caches)  # only the newest token
            logits = logits[:, -1, :]  # (B, vocab_size): the prediction after the last token
            if do_sample:
                nxt = sample(logits, temperature, top_k, top_p, generator=generator)
            else:
                nxt = logits.argmax(dim=-1)
            idx = torch.cat([idx, nxt[:, None]], dim=1)
        return idx


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float, got {temperature!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(
            f"temperature={temperature} must be a finite number > 0 (use do_sample=False for argmax)"
        )
    if top_k is not None:
        _checks.positive_int("top_k", top_k)
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
            raise TypeError(f"top_p must be a float, got {top_p!r}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p={top_p} must lie in (0, 1]")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits in the last dimension, set the rest to -inf (ties are kept)."""
    _checks.positive_int("k", k)
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al., 2020): keep the most probable tokens whose probabilities
    sum to at least ``p`` (always at least the top one), set the rest to -inf."""
    _check_sampling(1.0, None, p)
    if p >= 1.0:
        return logits
    probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= p  # the tokens before these already reach p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token id per row of ``logits`` (B, V) → (B,) (or (V,) → a 0-dim tensor).

    The logits are divided by ``temperature`` (< 1 sharpens, > 1 flattens), then filtered by
    :func:`top_k_filter` and :func:`top_p_filter`, in that order. Pass a seeded
    ``torch.Generator`` for reproducible draws.
    """
    _checks.tensor("logits", logits, floating=True)
    if logits.dim() > 2:
        raise ValueError(f"logits must have shape (B, V) or (V,), got {tuple(logits.shape)}")
    _check_sampling(temperature, top_k, top_p)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    ids = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return ids.reshape(logits.shape[:-1])


def random_windows(
    ids: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: ``batch_size`` random windows of ``ids`` (1-D) and the same windows
    shifted by one token, ``(x, y)`` each ``(batch_size, block_size)``; y[b, t] follows x[b, t]."""
    _checks.tensor("ids", ids, floating=False)
    if ids.dim() != 1 or len(ids) <= block_size:
        raise ValueError(
            f"ids must be a 1-D tensor longer than block_size={block_size}, got shape {tuple(ids.shape)}"
        )
    windows = ids.unfold(0, block_size + 1, 1)  # (N - block_size, block_size + 1), a view
    xy = windows[torch.randint(len(windows), (batch_size,), generator=generator)]
    return xy[:, :-1], xy[:, 1:]


def warmup_cosine_lr(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then half a cosine from ``lr`` down to ``min_lr`` at
    ``total`` (GPT-2 and nanoGPT's schedule; the paper's own is in :mod:`tformer.train`)."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


@torch.inference_mode()
def evaluate_loss(model: GPT, ids: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy over all of ``ids`` (1-D).

    ``ids`` is cut into consecutive, non-overlapping windows of ``block_size`` tokens (the last
    one shorter), so every token but the first is predicted exactly once, from the tokens before
    it in its window.
    """
    block = model.config.block_size
    was_training = model.training
    model.eval()
    n = (len(ids) - 1) // block
    x = ids[: n * block].view(n, block)
    y = ids[1 : n * block + 1].view(n, block)
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        _, loss = model(x[i : i + batch_size], y[i : i + batch_size])
        total += loss.item() * y[i : i + batch_size].numel()
        count += y[i : i + batch_size].numel()
    rest = len(ids) - 1 - n * block
    if rest:  # the short last window
        _, loss = model(ids[None, n * block : -1], ids[None, n * block + 1 :])
        total, count = total + loss.item() * rest, count + rest
    model.train(was_training)
    return total / count


class CharTokenizer:
    """Character-level tokenizer: one id per distinct character of the text it was built from."""

    def __init__(self, chars: str | list[str]) -> None:
        self.chars = sorted(set(chars))
        if not self.chars:
            raise ValueError("a CharTokenizer needs at least one character")
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """``str`` → 1-D ``torch.long`` tensor of ids."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown[:10]!r}")
        return torch.tensor([self.stoi[ch] for ch in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if any(not 0 <= i < len(self.chars) for i in ids):
            raise ValueError(f"ids must lie in 0..{len(self.chars) - 1}")
        return "".join(self.chars[i] for i in ids)


def load_text(path: str | Path) -> str:
    """Read a UTF-8 text file, e.g. any plain-text corpus a reader wants to train on."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no text file at {path}")
    return path.read_text(encoding="utf-8")


def course_text(root: str | Path | None = None) -> str:
    """The course's own pages as one string: ``book/*.md`` then the markdown cells of
    ``notebooks/*.ipynb``, in file-name order. ``root`` defaults to the repository checkout."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    parts = [load_text(p) for p in sorted((root / "book").glob("*.md"))]
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        cells = json.loads(load_text(nb)).get("cells", [])
        parts += ["".join(c["source"]) for c in cells if c.get("cell_type") == "markdown"]
    if not parts:
        raise FileNotFoundError(f"no book/*.md or notebooks/*.ipynb under {root}")
    return "\n\n".join(parts)
