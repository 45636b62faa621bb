"""Checkers for the exercises of chapters 8–9: label smoothing, the warmup schedule, teacher
forcing and greedy decoding.

Each checker compares the reader's function with tformer's on a few cases; when a case fails it
also tries the usual wrong versions and, if the reader's answer matches one, the hint names it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tformer.course.exercises import CheckFailed
from tformer.inference.generation import greedy_decode
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.training.objectives import LabelSmoothingLoss
from tformer.training.optim import noam_lr


def _num(x: object) -> float | None:
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return float(x)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    return None


def _same(a: float | None, b: float, rel: float = 1e-4) -> bool:
    return a is not None and math.isfinite(a) and math.isclose(a, b, rel_tol=rel, abs_tol=1e-7)


# --- train.label_smoothing ---------------------------------------------------------------------

HINT_LS_PAD = "positions whose target is pad_id must be left out of both the sum and the count."
HINT_LS_V1 = (
    "spread ε over all V classes (the reference gets 1 - ε + ε/V), as F.cross_entropy("
    "label_smoothing=ε) does; spreading it over the V - 1 other classes is a different convention."
)
HINT_LS_PROB = "use log-probabilities: F.log_softmax(logits, dim=-1), not the raw logits or softmax."
HINT_LS_SIGN = "the loss is -Σ q(k) log p(k): a cross-entropy is positive, check the sign."
HINT_LS = "loss = mean over real tokens of -[(1 - ε) log p(y) + ε · mean_k log p(k)]  (§5.4)."


def _ls_mistakes(logits, target, eps, pad):
    keep = target != pad
    V = logits.shape[-1]
    logp = F.log_softmax(logits, -1)
    nll = -logp.gather(-1, target[:, None]).squeeze(-1)
    out = {}
    out[HINT_LS_PAD] = F.cross_entropy(logits, target, label_smoothing=eps).item()
    others = (-logp.sum(-1) - nll) / (V - 1)
    out[HINT_LS_V1] = (((1 - eps) * nll + eps * others)[keep]).mean().item()
    raw = -logits.gather(-1, target[:, None]).squeeze(-1)
    out[HINT_LS_PROB] = (((1 - eps) * raw - eps * logits.mean(-1))[keep]).mean().item()
    want = F.cross_entropy(logits, target, ignore_index=pad, label_smoothing=eps).item()
    out[HINT_LS_SIGN] = -want
    return out


def check_label_smoothing(fn: Callable) -> int:
    """``fn(logits (N, V), target (N,), smoothing, pad_id) -> scalar`` mean over non-pad targets."""
    g = torch.Generator().manual_seed(0)
    cases = [("no padding, ε = 0.1", 6, 9, 0.1, False), ("with padding, ε = 0.1", 8, 7, 0.1, True),
             ("ε = 0 (plain cross-entropy)", 5, 4, 0.0, True), ("ε = 0.3", 10, 12, 0.3, True)]
    for i, (name, N, V, eps, padded) in enumerate(cases, start=1):
        logits = torch.randn(N, V, generator=g) * 2
        target = torch.randint(1, V, (N,), generator=g)
        if padded:
            target[-3:] = 0
        want = LabelSmoothingLoss(eps, ignore_index=0)(logits, target).item()
        got = _num(fn(logits.clone(), target.clone(), eps, 0))
        if not _same(got, want):
            hint = next((h for h, v in _ls_mistakes(logits, target, eps, 0).items()
                         if _same(got, v) and not _same(v, want)), HINT_LS)
            raise CheckFailed(f"case {i} ({name}): expected {want:.5f}, got {got}", hint=hint)
    return len(cases)


# --- train.noam_lr -----------------------------------------------------------------------------

HINT_NOAM_DMODEL = "multiply by d_model^-0.5 (the whole schedule is scaled by the model width)."
HINT_NOAM_WARM = "the warmup branch is step · warmup^-1.5 (so both branches meet at step = warmup)."
HINT_NOAM_MAX = "take the min of step^-0.5 and step · warmup^-1.5, not the max."
HINT_NOAM = "lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), Eq. (3) of §5.3."


def check_noam_lr(fn: Callable) -> int:
    """``fn(step, d_model, warmup) -> float``."""
    cases = [(1, 512, 4000), (100, 512, 4000), (4000, 512, 4000), (20000, 512, 4000),
             (50, 128, 200), (900, 256, 400)]
    for i, (step, d, w) in enumerate(cases, start=1):
        want = noam_lr(step, d, w)
        got = _num(fn(step, d, w))
        if not _same(got, want):
            mistakes = {
                HINT_NOAM_DMODEL: min(step**-0.5, step * w**-1.5),
                HINT_NOAM_WARM: d**-0.5 * min(step**-0.5, step * w**-0.5),
                HINT_NOAM_MAX: d**-0.5 * max(step**-0.5, step * w**-1.5),
            }
            hint = next((h for h, v in mistakes.items() if _same(got, v)), HINT_NOAM)
            raise CheckFailed(f"case {i} (step={step}, d_model={d}, warmup={w}): expected {want:.6g}, "
                              f"got {got}", hint=hint)
    return len(cases)


# --- train.shift_right -------------------------------------------------------------------------

HINT_SHIFT_KEEP = "drop the last token: the decoder input has the same length as the target."
HINT_SHIFT_LEFT = "shift to the right: put <bos> first and drop the last token (not the first)."
HINT_SHIFT = "decoder input = [<bos>, y1, …, y_{n-1}] for the target [y1, …, y_n] (teacher forcing)."


def check_shift_right(fn: Callable) -> int:
    """``fn(target (B, T) ids ending in <eos>/padding, bos_id) -> decoder input (B, T)``."""
    cases = [torch.tensor([[5, 6, 7, 2]]), torch.tensor([[5, 6, 2, 0, 0], [8, 9, 10, 11, 2]]),
             torch.tensor([[4, 2]])]
    for i, tgt in enumerate(cases, start=1):
        bos = 1
        want = torch.cat([torch.full((tgt.shape[0], 1), bos), tgt[:, :-1]], dim=1)
        got = fn(tgt.clone(), bos)
        if not (isinstance(got, torch.Tensor) and got.shape == want.shape and torch.equal(got.long(), want)):
            hint = HINT_SHIFT
            if isinstance(got, torch.Tensor) and got.shape[-1] == tgt.shape[-1] + 1:
                hint = HINT_SHIFT_KEEP
            elif isinstance(got, torch.Tensor) and got.shape == want.shape and torch.equal(
                got[:, :-1].long(), tgt[:, 1:]
            ):
                hint = HINT_SHIFT_LEFT
            raise CheckFailed(f"case {i}: target {tgt.tolist()} should give {want.tolist()}, "
                              f"got {got.tolist() if isinstance(got, torch.Tensor) else got!r}", hint=hint)
    return len(cases)


# --- decode.greedy -----------------------------------------------------------------------------

HINT_GREEDY_BOS = "start from <bos> but do not return it: the output begins with the first predicted token."
HINT_GREEDY_EOS = "stop a sentence at <eos>: after it, only padding (or nothing) may follow."
HINT_GREEDY = (
    "at each step append the argmax of the logits of the last position (logits[:, -1]) until <eos> "
    "or max_len; feed the whole prefix (or use caches), not only the first token."
)


HINT_GREEDY_SRC_MASK = (
    "the shorter sources end in padding (id model.config.pad_id): pass the source mask "
    "src_mask = model.make_src_mask(src) to model.decode (and encode), or the decoder attends to "
    "the padded source positions."
)


def _greedy_ignoring_source_mask(model, src: torch.Tensor, max_len: int, bos: int, eos: int) -> list:
    # The classic slip: encode(src) builds its own mask, but decode(ys, memory) without src_mask
    # lets the cross-attention see the padded source positions.
    with torch.no_grad():
        memory = model.encode(src)
        ys = torch.full((src.shape[0], 1), bos, dtype=torch.long)
        for _ in range(max_len):
            ys = torch.cat([ys, model.decode(ys, memory)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return [_until_eos(r, eos) for r in ys[:, 1:].tolist()]


def _until_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


def check_greedy(fn: Callable) -> int:
    """``fn(model, src (B, S), max_len, bos_id, eos_id) -> (B, T)`` ids without <bos>."""
    torch.manual_seed(0)
    # An untied random output layer makes the untrained model's choices depend on the source and
    # the prefix (a tied one mostly repeats the last token); pad and <bos> are never predicted.
    model = Transformer(TransformerConfig(15, 12, d_model=16, num_heads=2, num_encoder_layers=1,
                                          num_decoder_layers=1, dim_feedforward=32, max_len=32,
                                          tie_output=False)).eval()
    with torch.no_grad():
        model.generator.weight.normal_(0, 1.0)
        model.generator.bias.zero_()
        model.generator.bias[:2] = -1e4
    g = torch.Generator().manual_seed(1)
    passed = 0
    # The sources of one batch have different lengths, so the shorter ones end in padding (id 0):
    # an answer that forgets the source mask translates the padding too and is caught.
    pad = model.config.pad_id
    for i, (eos, lengths) in enumerate(((2, (6, 4, 2)), (5, (6, 6, 3)), (7, (5, 1, 6))), start=1):
        src = torch.randint(3, 15, (3, 6), generator=g)
        src = src.masked_fill(torch.arange(6)[None, :] >= torch.tensor(lengths)[:, None], pad)
        want = [_until_eos(r, eos) for r in greedy_decode(model, src, max_len=10, eos_id=eos).tolist()]
        out = fn(model, src.clone(), 10, 1, eos)
        got = out.tolist() if isinstance(out, torch.Tensor) else out
        got_rows = ([_until_eos(list(r), eos) for r in got]
                    if isinstance(got, list) and all(isinstance(r, list) for r in got) else None)
        if got_rows != want:
            hint = HINT_GREEDY
            if got_rows and all(r[:1] == [1] for r in got_rows):
                hint = HINT_GREEDY_BOS
            elif got_rows == _greedy_ignoring_source_mask(model, src, 10, 1, eos):
                hint = HINT_GREEDY_SRC_MASK
            if not isinstance(got, list):
                raise CheckFailed(f"case {i} (eos_id={eos}): expected a (B, T) tensor of ids, got "
                                  f"{type(out).__name__}", hint=hint)
            raise CheckFailed(f"case {i} (eos_id={eos}): expected {want}, got {got_rows}", hint=hint)
        if isinstance(got, list) and any(eos in r and any(t != 0 for t in r[r.index(eos) + 1 :]) for r in got):
            raise CheckFailed(f"case {i}: tokens other than padding follow <eos>", hint=HINT_GREEDY_EOS)
        passed += 1
    return passed


CHECKS = {
    "train.label_smoothing": check_label_smoothing,
    "train.noam_lr": check_noam_lr,
    "train.shift_right": check_shift_right,
    "decode.greedy": check_greedy,
}
