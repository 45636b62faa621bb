"""A Llama-style decoder-only language model (Touvron et al., 2023), built from tformer's pieces.

It is chapter 10's GPT with four changes, each from its own paper:

* **RMSNorm** instead of LayerNorm (Zhang & Sennrich, 2019): rescale by the root mean square, no
  mean subtraction and no bias;
* **rotary position embedding** instead of learned positions (RoPE; Su et al., 2021): queries and
  keys are rotated by their position, so attention sees only relative distances;
* the **SwiGLU** feed-forward network instead of a GELU MLP (Shazeer, 2020);
* **grouped-query attention** instead of multi-head attention (GQA; Ainslie et al., 2023): several
  query heads share one key/value head, which shrinks the KV cache.

The blocks are **pre-norm**, like GPT-2: ``x + Attn(RMSNorm(x))`` then ``x + FFN(RMSNorm(x))``, and
a final RMSNorm before the output projection. There are no biases. Names follow ``torch.nn`` and
:class:`tformer.nn.gpt.GPT`, whose interface (``new_caches``, ``forward``) :class:`Llama` copies, so
:func:`tformer.inference.generation.generate` drives both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import tformer._checks as _checks
from tformer.masks import causal_mask, padding_mask
from tformer.nn.attention import KVCache, cache_start, scaled_dot_product_attention
from tformer.nn.positional import RotaryEmbedding


def _check_heads(d_model: int, num_heads: int, num_kv_heads: int) -> None:
    for name, value in (("d_model", d_model), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
        _checks.positive_int(name, value)
    if d_model % num_heads:
        raise ValueError(
            f"d_model={d_model} must be divisible by num_heads={num_heads} "
            "(each head gets d_model/num_heads dims)"
        )
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads} "
            "(each key/value head serves the same number of query heads)"
        )


@dataclass
class LlamaConfig:
    """Shape of a :class:`Llama`; :meth:`smollm2_135m` gives SmolLM2-135M's numbers."""

    vocab_size: int
    block_size: int = 2048  # the longest context, in tokens (the rotary table's length)
    num_layers: int = 4
    num_heads: int = 4  # query heads h
    num_kv_heads: int = 2  # key/value heads; h / num_kv_heads query heads share each one
    d_model: int = 128
    dim_feedforward: int = 344  # hidden width of SwiGLU (≈ 8/3 · d_model keeps GPT's FFN size)
    rope_base: float = 10000.0  # θ of RoPE; long-context models use larger (SmolLM2: 100000)
    norm_eps: float = 1e-5  # ε inside RMSNorm's square root
    tie_weights: bool = True  # the output projection shares the token embedding

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "num_layers", "dim_feedforward"):
            _checks.positive_int(name, getattr(self, name))
        _check_heads(self.d_model, self.num_heads, self.num_kv_heads)
        if (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"head_dim = d_model/num_heads = {self.d_model // self.num_heads} must be even "
                "(RoPE rotates pairs of dimensions)"
            )
        for name in ("rope_base", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, got {type(value).__name__} ({value!r})")
        if not (self.rope_base > 1 and math.isfinite(self.rope_base)):
            raise ValueError(f"rope_base={self.rope_base} must be a finite number > 1 (Llama uses 10000)")
        if not 0 < self.norm_eps < 1:
            raise ValueError(f"norm_eps={self.norm_eps} must be a small positive float such as 1e-5")
        if not isinstance(self.tie_weights, bool):
            raise TypeError(f"tie_weights must be a bool, got {self.tie_weights!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @classmethod
    def smollm2_135m(cls) -> LlamaConfig:
        """SmolLM2-135M (Allal et al., 2025): 30 layers, 9 query / 3 KV heads, 134,515,008 parameters."""
        return cls(vocab_size=49152, block_size=8192, num_layers=30, num_heads=9, num_kv_heads=3,
                   d_model=576, dim_feedforward=1536, rope_base=100000.0, norm_eps=1e-5)


class RMSNorm(nn.Module):
    """x / RMS(x) · g with RMS(x) = sqrt(mean(x²) + ε) (Zhang & Sennrich, 2019, §3).

    LayerNorm without the mean and the bias: equal to ``torch.nn.RMSNorm(d_model, eps)``.
    """

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))  # the gain g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # the mean of squares in float32, also under bf16/fp16 autocast
        rms = x32.pow(2).mean(dim=-1, keepdim=True).add(self.eps).sqrt()  # (B, T, 1)
        return (x32 / rms).to(x.dtype) * self.weight


class SwiGLUFeedForward(nn.Module):
    """FFN_SwiGLU(x) = (Swish(x W_gate) ⊙ x W_up) W_down (Shazeer, 2020, §2), without biases.

    A gated variant of the position-wise FFN of Vaswani et al. (2017), §3.3: the up projection is
    multiplied elementwise by a learned gate, at the cost of a third matrix.
    """

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, dim_feedforward, bias=False)
        self.up = nn.Linear(d_model, dim_feedforward, bias=False)
        self.down = nn.Linear(dim_feedforward, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))  # Swish_1 = SiLU


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, h_kv, T, d)`` → ``(B, h_kv·n_rep, T, d)``: KV head j serves query heads j·n_rep … j·n_rep+n_rep-1."""
    return x.repeat_interleave(n_rep, dim=1)


class GroupedQueryAttention(nn.Module):
    """Causal self-attention in which h query heads share num_kv_heads key/value heads (Ainslie et
    al., 2023, §2.2). ``num_kv_heads == num_heads`` is multi-head attention, 1 is multi-query.

    Keys and values are projected to ``num_kv_heads · head_dim`` columns only, and the KV cache
    holds them un-repeated: it is ``num_heads / num_kv_heads`` times smaller than with MHA.
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int) -> None:
        super().__init__()
        _check_heads(d_model, num_heads, num_kv_heads)
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = d_model // num_heads
        self.w_q = nn.Linear(d_model, num_heads * self.head_dim, bias=False)
        self.w_k = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=False)
        self.w_v = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=False)
        self.w_o = nn.Linear(num_heads * self.head_dim, d_model, bias=False)
        self.keep_weights = False  # True: repeat K/V by hand, use the math path, keep .attn_weights
        self.attn_weights: torch.Tensor | None = None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        rope: RotaryEmbedding | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """Attend from each position of ``x`` (B, T, d_model) to the earlier ones; → (B, T, d_model).

        Args:
            mask: bool, broadcastable to ``(B, h, T, T_k)``, True = may attend, where T_k counts the
                cached positions too. ``None`` means causal (and, with a filled cache and T = 1,
                "see everything", which is the same thing).
            cache: a :class:`KVCache`; the new (rotated) keys and values are appended to it.
            rope: rotates queries and keys by their positions ``start … start + T - 1``.
        """
        B, T, _ = x.shape
        q = self.w_q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, T, d)
        k = self.w_k(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, h_kv, T, d)
        v = self.w_v(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = rope(q, start), rope(k, start)
        past = 0 if cache is None else len(cache)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, h_kv, past + T, d)
        if mask is None and T > 1 and (past > 0 or self.keep_weights):
            mask = causal_mask(T, past + T, past, device=x.device)
        if self.keep_weights:  # the readable path: every query head gets its own copy of K and V
            n_rep = self.num_heads // self.num_kv_heads
            out, w = scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask)
            self.attn_weights = w.detach()
        else:  # the fused kernel reads each KV head once for its group of query heads
            causal = mask is None and T > 1  # no cache: the kernel skips the masked half itself
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                 enable_gqa=True)
        out = out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)  # concat heads
        return self.w_o(out)


class LlamaBlock(nn.Module):
    """One pre-norm block: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)) (Touvron et al., 2023, §2.2)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        c = config
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = GroupedQueryAttention(c.d_model, c.num_heads, c.num_kv_heads)
        self.ffn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.ffn = SwiGLUFeedForward(c.d_model, c.dim_feedforward)

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryEmbedding,
        start: int = 0,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask, cache, rope, start)  # (B, T, d_model)
        return x + self.ffn(self.ffn_norm(x))


class Llama(nn.Module):
    """Token embedding → N pre-norm blocks (RoPE inside attention) → RMSNorm → logits.

    No position is added to the embeddings: RoPE rotates queries and keys inside every block.

    **Padding.** Pass ``attention_mask`` (B, T_k) with 1 (or True) at real tokens and 0 at padding,
    as Hugging Face does; T_k counts cached positions too. Pad on the **left** for generation, so
    every row's next token comes right after its last real one. The positions of a left-padded row
    then start at its number of pads instead of 0, but RoPE makes attention depend only on the
    distance between query and key (Su et al., 2021, §3.2), and that shift is the same for every
    token of the row: its logits equal those of the unpadded prompt (tests check it).
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.rope = RotaryEmbedding(c.head_dim, c.block_size, c.rope_base)
        self.blocks = nn.ModuleList(LlamaBlock(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight  # one (vocab, d_model) matrix, two uses

    def new_caches(self) -> list[KVCache]:
        """One empty :class:`~tformer.nn.attention.KVCache` per block, for :meth:`forward`."""
        return [KVCache() for _ in self.blocks]

    def _check_idx(self, idx: object, start: int) -> torch.Tensor:
        _checks.tensor("idx", idx, floating=False)
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(
                f"idx must have shape (B, T) with T >= 1 token ids, got {tuple(idx.shape)} "
                "(an empty prompt has nothing to continue: start it with at least one token)"
            )
        lo, hi = (int(v) for v in torch.aminmax(idx))
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(
                f"idx holds token id {lo if lo < 0 else hi}, outside the vocabulary "
                f"0..{self.config.vocab_size - 1}; encode text with the model's own tokenizer"
            )
        if start + idx.shape[1] > self.config.block_size:
            raise ValueError(
                f"{idx.shape[1]} tokens after {start} cached ones exceed the context of "
                f"block_size={self.config.block_size} tokens; keep only the last "
                f"{self.config.block_size - start} tokens of idx"
            )
        return idx

    def _padding_mask(self, attention_mask: object, B: int, T: int, start: int) -> torch.Tensor:
        """Hugging Face's (B, start + T) 0/1 mask → tformer's bool mask (B, 1, T, start + T)."""
        _checks.tensor("attention_mask", attention_mask)
        if attention_mask.is_floating_point() or tuple(attention_mask.shape) != (B, start + T):
            raise ValueError(
                f"attention_mask must be an integer or bool tensor of shape (B, cached + T) = "
                f"({B}, {start + T}) with 1 at real tokens and 0 at padding, got "
                f"{attention_mask.dtype} {tuple(attention_mask.shape)}"
            )
        keys = padding_mask(attention_mask, pad_id=0)  # (B, 1, 1, T_k), True at real tokens
        mask = keys & causal_mask(T, start + T, start, device=keys.device)  # (B, 1, T, T_k)
        # A left pad sees no real key at all; let it see everything (its output is never used)
        # rather than give the kernel an all-masked row, whose softmax is 0/0.
        return mask | ~mask.any(dim=-1, keepdim=True)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        start: int | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits for every position; with ``targets``, also the cross-entropy loss.

        Args:
            idx: token ids ``(B, T)``, ``torch.long``.
            targets: ``(B, T)`` ids of the next tokens; -100 marks positions to ignore (padding).
            caches: from :meth:`new_caches`; keys/values of ``idx`` are appended, earlier ones reused.
            start: position of ``idx[:, 0]``; by default 0, or the cached length with ``caches``.
            attention_mask: ``(B, start + T)``, 1 at real tokens, 0 at padding (see the class).

        Returns:
            logits ``(B, T, vocab_size)`` (as Hugging Face's ``model(ids).logits``), or
            ``(logits, loss)`` when ``targets`` is given (the form the training loop accepts).
        """
        start = cache_start(caches, len(self.blocks), start)
        B, T = self._check_idx(idx, start).shape
        mask = None if attention_mask is None else self._padding_mask(attention_mask, B, T, start)
        x = self.tok_emb(idx)  # (B, T, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, self.rope, start, mask, None if caches is None else caches[i])
        logits = self.lm_head(self.norm(x))  # (B, T, vocab_size)
        if targets is None:
            return logits
        _checks.tensor("targets", targets, floating=False)
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())
