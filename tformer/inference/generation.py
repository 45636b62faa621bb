"""Generation: one auto-regressive loop for every decoder in tformer (Vaswani et al., 2017, §6.1).

A decoder predicts one token, appends it and predicts the next. Every model here exposes the same
*step*: ``step(ids, caches, start) -> logits (B, T, V)`` runs the new tokens ``ids`` (B, T), at
positions ``start``, ``start + 1``, …, through the decoder and appends their keys and values to
``caches`` (from ``model.new_caches()``; ``None`` re-runs the whole prefix instead — the same
result, more work). For a decoder-only model (GPT,
Llama) the step is the model itself; for the encoder–decoder it is ``model.decode`` with the
encoder's ``memory`` fixed. :func:`generate` (sampling or greedy, for language models),
:func:`greedy_decode` and :func:`beam_search` (translation, beam 4 and length penalty α = 0.6 as in
§6.1, after Wu et al. 2016) all run on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

import tformer._checks as _checks
from tformer.nn.attention import KVCache
from tformer.runtime import eval_mode

Step = Callable[[torch.Tensor, "list | None", int], torch.Tensor]

# --------------------------------------------------------------------------- choosing a token

def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    _checks.number("temperature", temperature)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(
            f"temperature={temperature} must be a finite number > 0 (use do_sample=False for argmax)"
        )
    if top_k is not None:
        _checks.positive_int("top_k", top_k)
    if top_p is not None:
        _checks.number("top_p", top_p)
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




# --------------------------------------------------------------------------- the loop


def _autoregress(
    step: Step,
    new_caches: Callable[[], list] | None,
    ys: torch.Tensor,
    steps: int,
    pick: Callable[[torch.Tensor], torch.Tensor],
    *,
    window: int | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> torch.Tensor:
    """Append up to ``steps`` tokens to ``ys`` (B, T), choosing each with ``pick(logits (B, V))``.

    With ``new_caches`` the first step feeds the whole prefix into fresh caches and every later
    step only the newest token. ``window``: the longest context the model takes (its positional
    table); once the cache is full, the last ``window`` tokens are re-encoded into fresh caches,
    because the positions of all cached keys shift when the window slides. With ``eos_id``, a row
    that produced it gets ``pad_id`` afterwards, and the loop stops when every row is done.
    """
    caches, fed = None, 0
    done = torch.zeros(ys.shape[0], dtype=torch.bool, device=ys.device)
    for _ in range(steps):
        context = ys if window is None else ys[:, -window:]
        if new_caches is None:
            logits = step(context, None, 0)
        elif caches is None or (window is not None and fed >= window):
            caches = new_caches()
            logits = step(context, caches, 0)
            fed = context.shape[1]
        else:
            logits = step(ys[:, -1:], caches, fed)  # only the newest token, at position fed
            fed += 1
        nxt = pick(logits[:, -1])  # (B,) from the prediction after the last token
        if eos_id is not None:
            nxt = nxt.masked_fill(done, pad_id)
            done |= nxt == eos_id
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        if eos_id is not None and done.all():
            break
    return ys


def reorder_caches(caches: list, rows: torch.Tensor) -> None:
    """Keep the batch rows ``rows`` of every growing cache (beam search reorders its hypotheses);
    static caches (cross-attention: equal across a sentence's beams) are left alone."""
    for entry in caches:
        for cache in entry if isinstance(entry, (tuple, list)) else (entry,):
            if isinstance(cache, KVCache) and not cache.static:
                cache.reorder(rows)


def _lm_step(model: nn.Module) -> Step:
    def step(ids: torch.Tensor, caches: list | None, start: int) -> torch.Tensor:
        out = model(ids, caches=caches, start=start)
        return out[0] if isinstance(out, tuple) else out  # GPT returns (logits, loss), Llama logits

    return step


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> torch.Tensor:
    """Continue the token ids ``idx`` (B, T) of a decoder-only model by ``max_new_tokens`` tokens.

    ``model(ids, caches=..., start=...)`` must return the logits or ``(logits, loss)``, and the
    model must have ``new_caches()`` (:class:`tformer.nn.gpt.GPT` and :class:`tformer.nn.llama.Llama` do). ``do_sample=False`` is greedy (argmax)
    decoding; otherwise each token is drawn by :func:`sample` with ``temperature``, ``top_k`` and
    ``top_p``. The model runs in eval mode and is put back afterwards. A context longer than the
    model's ``config.block_size`` is cut to its last ``block_size`` tokens.

    Returns:
        ``(B, T + n)`` ids, ``n <= max_new_tokens`` (fewer when every row has produced ``eos_id``;
        a finished row is then filled with ``pad_id``).
    """
    if hasattr(model, "encode") or not hasattr(model, "new_caches"):
        raise TypeError(f"generate continues a decoder-only model (GPT, Llama, with new_caches), got "
                        f"{type(model).__name__}; decode a Transformer with greedy_decode() or beam_search()")
    _checks.tensor("idx", idx, floating=False)
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    _check_ids("idx", idx, model, vocab)
    if eos_id is not None:
        _check_token_id("eos_id", eos_id, vocab)
    _checks.int_at_least("max_new_tokens", max_new_tokens, 0)
    _check_sampling(temperature, top_k, top_p)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if do_sample:
            return sample(logits, temperature, top_k, top_p, generator=generator)
        return logits.argmax(dim=-1)

    window = getattr(getattr(model, "config", None), "block_size", None)
    with eval_mode(model), torch.inference_mode():  # no dropout, no autograd bookkeeping
        out = _autoregress(_lm_step(model), model.new_caches if use_cache else None, idx,
                           max_new_tokens, pick, window=window, eos_id=eos_id, pad_id=pad_id)
    return out.clone()  # a normal tensor again, usable in autograd outside inference mode


# --------------------------------------------------------------------------- input checks


# candidates beam search may score in one step (batch x beam x vocabulary), checked before allocation
MAX_BEAM_SCORES = 2**27


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return None


def _check_ids(name: str, ids: torch.Tensor, model: nn.Module, vocab_size: int | None) -> None:
    """Token ids a model can embed (their dtype checked by ``_checks.tensor`` before): within the
    vocabulary, on the model's device; a ``ValueError`` naming ``name`` otherwise."""
    device = _model_device(model)
    if device is not None and ids.device != device:
        raise ValueError(f"{name} is on {ids.device} but the model is on {device}; move one to the other "
                         f"({name}.to(model_device) or model.to({str(ids.device)!r}))")
    if ids.numel() and vocab_size is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"{name} holds token id {bad}, outside the vocabulary 0..{vocab_size - 1} of the model")


def _check_token_id(name: str, value: object, vocab_size: int | None) -> None:
    if vocab_size is None:
        _checks.int_at_least(name, value, 0, "a token id >= 0")
    else:
        _checks.int_at_least(name, value, 0, f"a token id in [0, {vocab_size})")
        if value >= vocab_size:
            raise ValueError(f"{name}={value!r} must be a token id in [0, {vocab_size})")


def _check_translator(model: nn.Module, src: torch.Tensor, fn: str, bos_id: object, eos_id: object) -> None:
    """The checks every public decoder of an encoder–decoder model starts with."""
    if not (hasattr(model, "encode") and hasattr(model, "decode")):
        raise TypeError(f"{fn} decodes an encoder–decoder model (a Transformer, with encode and decode), got "
                        f"{type(model).__name__}; continue a decoder-only model with generate()")
    _checks.tensor("src", src, ndim_min=2, floating=False)
    config = getattr(model, "config", None)
    _check_ids("src", src, model, getattr(config, "src_vocab_size", None))
    vocab = getattr(config, "tgt_vocab_size", None)
    _check_token_id("bos_id", bos_id, vocab)
    _check_token_id("eos_id", eos_id, vocab)


# --------------------------------------------------------------------------- translation


def _prepare(model: nn.Module, src: torch.Tensor, src_mask: torch.Tensor | None, max_len: int | None):
    _checks.tensor("src", src, ndim_min=2, floating=False)
    if src_mask is None:
        src_mask = model.make_src_mask(src)  # (B, 1, 1, S)
    limit = model.config.max_len - 1  # position 0 holds <bos>
    if max_len is None:
        max_len = min(2 * src.shape[1] + 10, limit)
    _checks.positive_int("max_len", max_len)
    if max_len > limit:
        raise ValueError(
            f"max_len={max_len} exceeds what the positional table allows ({limit} = config.max_len - 1)"
        )
    return src_mask, max_len


def _seq2seq_step(model: nn.Module, memory: torch.Tensor, src_mask: torch.Tensor) -> Step:
    def step(ids: torch.Tensor, caches: list | None, start: int) -> torch.Tensor:
        return model.decode(ids, memory, src_mask, caches=caches, start=start)

    return step


@torch.no_grad()
def greedy_decode(
    model: nn.Module,
    src: torch.Tensor,
    src_mask: torch.Tensor | None = None,
    *,
    max_len: int | None = None,
    bos_id: int = 1,
    eos_id: int = 2,
    use_cache: bool = True,
) -> torch.Tensor:
    """Pick the most probable next token at every step until <eos> (or ``max_len`` tokens).

    Args:
        model: a :class:`tformer.nn.transformer.Transformer` (in eval mode while decoding).
        src: source ids ``(B, S)``.
        src_mask: ``(B, 1, 1, S)`` bool, True at real tokens; built from ``pad_id`` when None.
        max_len: most tokens to generate (default ``2·S + 10``, capped by ``config.max_len - 1``).
        use_cache: decode step by step with KV caches (same result, less work).

    Returns:
        ``(B, T)`` token ids without the leading <bos>; a finished row holds its <eos> and then
        ``pad_id``.
    """
    _check_translator(model, src, "greedy_decode", bos_id, eos_id)
    src_mask, max_len = _prepare(model, src, src_mask, max_len)
    with eval_mode(model):
        memory = model.encode(src, src_mask)  # (B, S, d_model)
        ys = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
        ys = _autoregress(_seq2seq_step(model, memory, src_mask), model.new_caches if use_cache else None,
                          ys, max_len, lambda logits: logits.argmax(dim=-1), eos_id=eos_id,
                          pad_id=model.config.pad_id)
    return ys[:, 1:]


def length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT's lp(Y) = ((5 + \\|Y\\|) / 6)^α (Wu et al., 2016, Eq. 14); α = 0 means no normalisation.

    Beam search ranks hypotheses by log P(Y | X) / lp(Y): without it, every extra token lowers
    the summed log-probability and short translations win.
    """
    return ((5.0 + length.float()) / 6.0) ** alpha




@torch.no_grad()
def beam_search(
    model: nn.Module,
    src: torch.Tensor,
    src_mask: torch.Tensor | None = None,
    *,
    beam_size: int = 4,
    max_len: int | None = None,
    alpha: float = 0.6,
    bos_id: int = 1,
    eos_id: int = 2,
) -> torch.Tensor:
    """Keep the ``beam_size`` best open partial translations per sentence, for a whole batch at once.

    Each sentence has k = ``beam_size`` *open* hypotheses and, set apart from them, its
    *finished* ones (ended by <eos>) with their length-penalised scores, as in fairseq (Ott et
    al., 2019); only the best finished hypothesis and their number are kept, since that is all the
    search returns or stops on. Every step extends each open hypothesis by every token and ranks
    the k·V candidates by their summed log-probability (all open hypotheses have the same length,
    so the length penalty would not change that order). Of the 2k best:

    * every candidate that ends in <eos> is finished, scored log P(Y | X) / :func:`length_penalty`
      (α = 0.6 as in §6.1) — also one ranked below k, which a beam of k open hypotheses would have
      lost (fairseq and Hugging Face keep only those ranked within k);
    * the first k candidates that do not end in <eos> are the next open hypotheses (there are at
      least k: each open hypothesis adds at most one <eos>), so a finished hypothesis never takes
      an open slot and an open one never pushes a finished one out.

    A sentence is done when k of its hypotheses have finished within the first k candidates of
    their step (fairseq's rule; an <eos> ranked below k is kept but does not count, so a few
    unlikely endings cannot stop the search early) or when no open hypothesis can still beat its
    best finished one. That bound is exact: every further token
    multiplies the probability by at most 1, so an open hypothesis with log-probability ℓ ≤ 0
    ends with some ℓ' ≤ ℓ at a length L' ≤ ``max_len``, and since lp grows with the length for
    α ≥ 0, its score is ℓ' / lp(L') ≤ ℓ / lp(L') ≤ ℓ / lp(``max_len``). The search stops when every
    sentence is done or after ``max_len`` tokens. Each sentence returns its best finished
    hypothesis; one cut off by ``max_len`` before its <eos> never paid for an ending (and may be a
    run of cheap repeated tokens), so the best open hypothesis is returned only when nothing
    finished. ``beam_size=1`` is greedy decoding — the single best candidate each step, finished
    or not — and is left to :func:`greedy_decode` (setting finished candidates apart would make it
    a search over two).

    Returns:
        ``(B, T)`` ids without <bos>, like :func:`greedy_decode`: T is the number of steps run, a
        finished row holds its <eos> and then ``pad_id``.
    """
    _check_translator(model, src, "beam_search", bos_id, eos_id)
    _checks.positive_int("beam_size", beam_size)
    if src.shape[0] * beam_size * model.config.tgt_vocab_size > MAX_BEAM_SCORES:
        raise ValueError(f"beam_size={beam_size} for {src.shape[0]} sentences and {model.config.tgt_vocab_size} "
                         f"target tokens scores more than {MAX_BEAM_SCORES:.3g} candidates a step; use a "
                         "beam of 4-10, as translation systems do")
    alpha = _checks.real_between("alpha", alpha, -1e-12, 100.0, "a finite length-penalty exponent >= 0, e.g. 0.6")
    if beam_size == 1:
        return greedy_decode(model, src, src_mask, max_len=max_len, bos_id=bos_id, eos_id=eos_id)
    src_mask, max_len = _prepare(model, src, src_mask, max_len)
    V, pad_id = model.config.tgt_vocab_size, model.config.pad_id
    B, k, dev = src.shape[0], beam_size, src.device
    n_cand = min(2 * k, k * V)  # each open hypothesis adds at most one <eos>, so k open ones remain
    lp = lambda n: ((5.0 + n) / 6.0) ** alpha  # noqa: E731 - length_penalty for a plain int
    with eval_mode(model):
        memory = model.encode(src, src_mask).repeat_interleave(k, dim=0)  # (B·k, S, d_model)
        step = _seq2seq_step(model, memory, src_mask.repeat_interleave(k, dim=0))
        scores = torch.full((B, k), float("-inf"), device=dev)
        scores[:, 0] = 0.0  # all k beams start identical: expand only the first
        scores = scores.view(-1)  # (B·k,) summed log-probabilities of the open hypotheses
        ys = torch.full((B * k, 1), bos_id, dtype=torch.long, device=dev)
        caches = model.new_caches()
        offsets = (torch.arange(B, device=dev) * k)[:, None]  # (B, 1) first row of each sentence
        best_done = torch.full((B,), float("-inf"), device=dev)  # best finished score per sentence
        best_ids = torch.full((B, max_len), pad_id, dtype=torch.long, device=dev)  # and its tokens
        n_done = torch.zeros(B, dtype=torch.long, device=dev)  # finished hypotheses per sentence
        done = torch.zeros(B, dtype=torch.bool, device=dev)  # sentences that stopped searching
        for t in range(max_len):  # the candidates of this step have t + 1 tokens
            logits = step(ys[:, -1:], caches, t)
            logp = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (B·k, V)
            cand = (scores[:, None] + logp).view(B, k * V)
            vals, idx = cand.topk(n_cand, dim=-1)  # (B, 2k), best first
            beam, tok = idx // V, idx % V
            # finished: every candidate that ends in <eos>, in a sentence still searching
            ends = (tok == eos_id) & torch.isfinite(vals) & ~done[:, None]  # (B, 2k)
            n_done += ends[:, :k].sum(dim=1)  # only those a beam of k would have held count
            final = (vals / lp(t + 1)).masked_fill(~ends, float("-inf"))  # (B, 2k)
            top, pos = final.max(dim=1)  # (B,)
            better = top > best_done
            if better.any():
                rows = offsets.squeeze(1) + beam.gather(1, pos[:, None]).squeeze(1)
                seq = torch.cat([ys[rows, 1:], torch.full((B, 1), eos_id, device=dev)], dim=1)
                best_ids[:, : t + 1] = torch.where(better[:, None], seq, best_ids[:, : t + 1])
                best_done = torch.where(better, top, best_done)
            # open: the first k candidates that do not end in <eos>, in rank order
            rank = torch.arange(n_cand, device=dev) + (tok == eos_id).long() * n_cand
            keep = rank.topk(k, dim=-1, largest=False).indices.sort(dim=-1).values  # (B, k)
            scores = vals.gather(1, keep).view(-1)
            rows = (offsets + beam.gather(1, keep)).view(-1)  # which old hypothesis each extends
            ys = torch.cat([ys[rows], tok.gather(1, keep).view(-1, 1)], dim=1)
            reorder_caches(caches, rows)
            if t + 1 == max_len:
                break
            # can an open hypothesis still beat the best finished one? (bound in the docstring)
            reachable = scores.view(B, k).max(dim=1).values / lp(max_len)
            done |= (n_done >= k) | (best_done >= reachable)
            if done.all():
                break
    steps = ys.shape[1] - 1
    open_best = ys.view(B, k, -1)[torch.arange(B, device=dev), scores.view(B, k).argmax(dim=1), 1:]
    found = torch.isfinite(best_done)[:, None]
    return torch.where(found, best_ids[:, :steps], open_best)
