"""Checkers for the exercises of chapters 8–9: label smoothing, the warmup schedule, teacher
forcing and greedy decoding.

Each checker compares the reader's function with tformer's on a few cases; when a case fails it
also tries the usual wrong versions and, if the reader's answer matches one, the hint names it.
The padding and <bos> ids change from case to case, so an answer that hard-codes 0 or 1 fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tformer.course.exercises import CheckFailed
from tformer.course.exercises._common import COMMON, number, short
from tformer.course.exercises._text import texts
from tformer.inference.generation import greedy_decode
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.training.objectives import LabelSmoothingLoss
from tformer.training.optim import noam_lr

MESSAGES = {
    "ls_pad": ("positions whose target is pad_id must be left out of both the sum and the count.",
               "目标为 pad_id 的位置既不计入求和，也不计入计数。"),
    "ls_pad_zero": ("use the pad_id argument: this case pads with id {pad}, but your function leaves "
                    "out the targets equal to 0.",
                    "请使用参数 pad_id：本用例的填充 id 是 {pad}，而你的函数去掉的是等于 0 的目标。"),
    "ls_v1": ("spread ε over all V classes (the reference gets 1 - ε + ε/V), as F.cross_entropy("
              "label_smoothing=ε) does; spreading it over the V - 1 other classes is a different "
              "convention.",
              "把 ε 均匀分给全部 V 个类别（参考词元得到 1 - ε + ε/V），与 F.cross_entropy(label_smoothing=ε) "
              "一致；分给其余 V - 1 个类别是另一种约定。"),
    "ls_v2": ("this is the Annotated Transformer's convention: ε/(V - 2) on every class except the "
              "reference and the padding token. The course spreads ε over all V classes (the reference "
              "gets 1 - ε + ε/V), as F.cross_entropy(label_smoothing=ε) does.",
              "这是 Annotated Transformer 的约定：除参考词元和填充词元外，每个类别得到 ε/(V - 2)。"
              "本课程把 ε 分给全部 V 个类别（参考词元得到 1 - ε + ε/V），与 F.cross_entropy(label_smoothing=ε) 一致。"),
    "ls_prob": ("use log-probabilities: F.log_softmax(logits, dim=-1), not the raw logits or softmax.",
                "要用对数概率：F.log_softmax(logits, dim=-1)，而不是原始的 logits 或 softmax。"),
    "ls_sign": ("the loss is -Σ q(k) log p(k): a cross-entropy is positive, check the sign.",
                "损失是 -Σ q(k) log p(k)：交叉熵是正数，请检查符号。"),
    "ls_sum": ("average over the real tokens (divide by their number), do not return the sum.",
               "对真实词元取平均（除以它们的个数），不要返回总和。"),
    "ls": ("loss = mean over real tokens of -[(1 - ε) log p(y) + ε · mean_k log p(k)]  (§5.4).",
           "损失 = 对真实词元取平均的 -[(1 - ε) log p(y) + ε · mean_k log p(k)]（§5.4）。"),
    "ls_case": ("case {i} ({name}): expected {want:.5f}, got {got}", "用例 {i}（{name}）：应为 {want:.5f}，实际为 {got}"),
    "ls_name": ("ε = {eps}, V = {V}, pad_id = {pad}, {n} padded positions",
                "ε = {eps}，V = {V}，pad_id = {pad}，{n} 个填充位置"),
    "noam_dmodel": ("multiply by d_model^-0.5 (the whole schedule is scaled by the model width).",
                    "要乘以 d_model^-0.5（整个调度按模型宽度缩放）。"),
    "noam_warm": ("the warmup branch is step · warmup^-1.5 (so both branches meet at step = warmup).",
                  "预热分支是 step · warmup^-1.5（这样两个分支在 step = warmup 处相交）。"),
    "noam_max": ("take the min of step^-0.5 and step · warmup^-1.5, not the max.",
                 "取 step^-0.5 与 step · warmup^-1.5 的最小值，而不是最大值。"),
    "noam_shift": ("the step counts from 1 (the first update is step 1, as in the paper): use step as "
                   "given, not step {sign} 1.",
                   "步数从 1 开始计（第一次更新是第 1 步，与论文一致）：直接使用 step，而不是 step {sign} 1。"),
    "noam_branch": ("at step {step} (warmup = {w}) your function took the wrong branch: steps before "
                    "warmup use step · warmup^-1.5, steps after it step^-0.5; min(…) chooses for you.",
                    "在第 {step} 步（warmup = {w}），你的函数用错了分支：warmup 之前用 step · warmup^-1.5，"
                    "之后用 step^-0.5；用 min(…) 就会自动选对。"),
    "noam": ("lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), Eq. (3) of §5.3.",
             "lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)，即 §5.3 的式 (3)。"),
    "noam_case": ("case {i} (step={step}, d_model={d}, warmup={w}): expected {want:.6g}, got {got}",
                  "用例 {i}（step={step}, d_model={d}, warmup={w}）：应为 {want:.6g}，实际为 {got}"),
    "shift_keep": ("drop the last token: the decoder input has the same length as the target.",
                   "去掉最后一个词元：解码器的输入与目标一样长。"),
    "shift_left": ("shift to the right: put <bos> first and drop the last token (not the first).",
                   "向右移位：把 <bos> 放在最前面，去掉最后一个词元（而不是第一个）。"),
    "shift_bos": ("use the bos_id argument ({bos} in this case), not a hard-coded id.",
                  "请使用参数 bos_id（本用例为 {bos}），不要写死某个 id。"),
    "shift": ("decoder input = [<bos>, y1, …, y_{{n-1}}] for the target [y1, …, y_n] (teacher forcing).",
              "对目标 [y1, …, y_n]，解码器的输入是 [<bos>, y1, …, y_{{n-1}}]（教师强制）。"),
    "shift_dtype": ("return integer token ids (the target's dtype, torch.long), not floats: the decoder "
                    "input goes through an embedding.",
                    "请返回整数词元 id（与目标相同的数据类型 torch.long），而不是浮点数：解码器的输入要经过嵌入层。"),
    "shift_case": ("case {i} (bos_id={bos}): target {target} should give {want}, got {got}",
                   "用例 {i}（bos_id={bos}）：目标 {target} 应得到 {want}，实际为 {got}"),
    "greedy_bos": ("start from <bos> but do not return it: the output begins with the first predicted "
                   "token.", "从 <bos> 开始解码，但不要返回它：输出从第一个预测的词元开始。"),
    "greedy_bos_arg": ("start from the bos_id argument ({bos} in this case), not a hard-coded id.",
                       "从参数 bos_id（本用例为 {bos}）开始，不要写死某个 id。"),
    "greedy_eos": ("stop a sentence at <eos>: after it, only padding (or nothing) may follow.",
                   "句子在 <eos> 处结束：其后只能是填充（或什么都没有）。"),
    "greedy": ("at each step append the argmax of the logits of the last position (logits[:, -1]) "
               "until <eos> or max_len; feed the whole prefix (or use caches), not only the first token.",
               "每一步把最后一个位置的 logits（logits[:, -1]）的 argmax 接到序列后面，直到 <eos> 或 max_len；"
               "要输入整个前缀（或使用缓存），而不是只输入第一个词元。"),
    "greedy_src_mask": ("the shorter sources end in padding (id model.config.pad_id): pass the source "
                        "mask src_mask = model.make_src_mask(src) to model.decode (and encode), or the "
                        "decoder attends to the padded source positions.",
                        "较短的源句以填充结尾（id 为 model.config.pad_id）：请把源句掩码 "
                        "src_mask = model.make_src_mask(src) 传给 model.decode（以及 encode），"
                        "否则解码器会关注源句中填充的位置。"),
    "greedy_type": ("case {i} (bos_id={bos}, eos_id={eos}): expected a (B, T) tensor of ids, got {kind}",
                    "用例 {i}（bos_id={bos}, eos_id={eos}）：应返回形状为 (B, T) 的 id 张量，实际得到 {kind}"),
    "greedy_case": ("case {i} (bos_id={bos}, eos_id={eos}): expected {want}, got {got}",
                    "用例 {i}（bos_id={bos}, eos_id={eos}）：应为 {want}，实际为 {got}"),
    "greedy_after_eos": ("case {i}: tokens other than padding follow <eos>", "用例 {i}：<eos> 之后还有非填充的词元"),
}
say = texts(MESSAGES, COMMON)

HINT_LS_PAD, HINT_LS_V1, HINT_LS_V2 = say("ls_pad"), say("ls_v1"), say("ls_v2")
HINT_LS_PROB, HINT_LS_SIGN, HINT_LS = say("ls_prob"), say("ls_sign"), say("ls")
HINT_NOAM_DMODEL, HINT_NOAM_WARM = say("noam_dmodel"), say("noam_warm")
HINT_NOAM_MAX, HINT_NOAM = say("noam_max"), say("noam")
HINT_SHIFT_KEEP, HINT_SHIFT_LEFT, HINT_SHIFT = say("shift_keep"), say("shift_left"), say("shift")
HINT_GREEDY_BOS, HINT_GREEDY_EOS = say("greedy_bos"), say("greedy_eos")
HINT_GREEDY, HINT_GREEDY_SRC_MASK = say("greedy"), say("greedy_src_mask")


def _same(a: float | None, b: float, rel: float = 1e-4) -> bool:
    return a is not None and math.isfinite(a) and math.isclose(a, b, rel_tol=rel, abs_tol=1e-7)


# --- train.label_smoothing ---------------------------------------------------------------------


def _ls_mistakes(logits, target, eps, pad) -> dict:
    keep = target != pad
    V = logits.shape[-1]
    logp = F.log_softmax(logits, -1)
    nll = -logp.gather(-1, target[:, None]).squeeze(-1)
    want = F.cross_entropy(logits, target, ignore_index=pad, label_smoothing=eps).item()
    per_pos = (1 - eps) * nll - eps * logp.mean(-1)
    out = {}
    if pad != 0:
        out[say("ls_pad_zero", pad=pad)] = per_pos[target != 0].mean().item()
    out[HINT_LS_PAD] = F.cross_entropy(logits, target, label_smoothing=eps).item()
    others = (-logp.sum(-1) - nll) / (V - 1)
    out[HINT_LS_V1] = (((1 - eps) * nll + eps * others)[keep]).mean().item()
    rest = -logp.sum(-1) - nll + torch.where(target == pad, 0.0, logp[:, pad])  # neither y nor pad
    out[HINT_LS_V2] = (((1 - eps) * nll + eps * rest / (V - 2))[keep]).mean().item()
    raw = -logits.gather(-1, target[:, None]).squeeze(-1)
    out[HINT_LS_PROB] = (((1 - eps) * raw - eps * logits.mean(-1))[keep]).mean().item()
    out[HINT_LS_SIGN] = -want
    out[say("ls_sum")] = per_pos[keep].sum().item()
    return out


def check_label_smoothing(fn: Callable) -> int:
    """``fn(logits (N, V), target (N,), smoothing, pad_id) -> scalar`` mean over non-pad targets."""
    g = torch.Generator().manual_seed(0)
    # (N, V, ε, pad_id, number of padded positions): the padding id is not always 0
    cases = [(6, 9, 0.1, 0, 0), (8, 7, 0.1, 0, 3), (8, 7, 0.1, 3, 3), (5, 4, 0.0, 2, 2),
             (10, 12, 0.3, 11, 4)]
    for i, (N, V, eps, pad, n_pad) in enumerate(cases, start=1):
        logits = torch.randn(N, V, generator=g) * 2
        target = torch.randint(0, V - 1, (N,), generator=g)
        target = torch.where(target >= pad, target + 1, target)  # any id but pad (0 included)
        if pad != 0:
            target[0] = 0  # a real token with id 0: an answer that drops id 0 instead of pad_id is seen
        if n_pad:
            target[-n_pad:] = pad
        want = LabelSmoothingLoss(eps, ignore_index=pad)(logits, target).item()
        got = number(fn(logits.clone(), target.clone(), eps, pad))
        if not _same(got, want):
            hint = next((h for h, v in _ls_mistakes(logits, target, eps, pad).items()
                         if _same(got, v) and not _same(v, want)), HINT_LS)
            name = say("ls_name", eps=eps, V=V, pad=pad, n=n_pad)
            raise CheckFailed(say("ls_case", i=i, name=name, want=want, got=got), hint)
    return len(cases)


# --- train.noam_lr -----------------------------------------------------------------------------


def check_noam_lr(fn: Callable) -> int:
    """``fn(step, d_model, warmup) -> float``; the steps just before, at and after warmup included."""
    cases = [(1, 512, 4000), (100, 512, 4000), (3999, 512, 4000), (4000, 512, 4000), (4001, 512, 4000),
             (20000, 512, 4000), (50, 128, 200), (199, 128, 200), (200, 128, 200), (201, 128, 200),
             (900, 256, 400)]
    for i, (step, d, w) in enumerate(cases, start=1):
        want = noam_lr(step, d, w)
        got = number(fn(step, d, w))
        if not _same(got, want):
            mistakes = {}
            for other in (d**-0.5 * step**-0.5, d**-0.5 * step * w**-1.5):
                if abs(step - w) <= 1 and not _same(other, want):
                    mistakes[say("noam_branch", step=step, w=w)] = other
            mistakes |= {
                HINT_NOAM_DMODEL: min(step**-0.5, step * w**-1.5),
                HINT_NOAM_WARM: d**-0.5 * min(step**-0.5, step * w**-0.5),
                HINT_NOAM_MAX: d**-0.5 * max(step**-0.5, step * w**-1.5),
                say("noam_shift", sign="+"): noam_lr(step + 1, d, w),
            }
            mistakes[say("noam_shift", sign="-")] = noam_lr(step - 1, d, w) if step > 1 else 0.0
            hint = next((h for h, v in mistakes.items() if _same(got, v)), HINT_NOAM)
            raise CheckFailed(say("noam_case", i=i, step=step, d=d, w=w, want=want, got=got), hint)
    return len(cases)


# --- train.shift_right -------------------------------------------------------------------------


def check_shift_right(fn: Callable) -> int:
    """``fn(target (B, T) ids ending in <eos>/padding, bos_id) -> decoder input (B, T)``."""
    cases = [(torch.tensor([[5, 6, 7, 2]]), 1), (torch.tensor([[5, 6, 2, 0, 0], [8, 9, 10, 11, 2]]), 3),
             (torch.tensor([[4, 2]]), 1), (torch.tensor([[7, 3, 9, 1], [6, 6, 1, 0]]), 2)]
    for i, (tgt, bos) in enumerate(cases, start=1):
        want = torch.cat([torch.full((tgt.shape[0], 1), bos), tgt[:, :-1]], dim=1)
        got = fn(tgt.clone(), bos)
        is_ids = isinstance(got, torch.Tensor) and not got.is_floating_point() and not got.is_complex()
        if is_ids and got.shape == want.shape and torch.equal(got.long(), want):
            continue
        hint = HINT_SHIFT
        if isinstance(got, torch.Tensor) and got.is_floating_point():
            hint = say("shift_dtype")
        elif is_ids and got.dim() == 2 and got.shape[-1] == tgt.shape[-1] + 1:
            hint = HINT_SHIFT_KEEP
        elif is_ids and got.shape == want.shape and torch.equal(got[:, :-1].long(), tgt[:, 1:]):
            hint = HINT_SHIFT_LEFT
        elif is_ids and got.shape == want.shape and torch.equal(got[:, 1:].long(), want[:, 1:]):
            hint = say("shift_bos", bos=bos)
        shown = got.tolist() if is_ids and got.numel() <= 40 else short(got)
        raise CheckFailed(say("shift_case", i=i, bos=bos, target=tgt.tolist(), want=want.tolist(), got=shown),
                          hint)
    return len(cases)


# --- decode.greedy -----------------------------------------------------------------------------


def _greedy_variant(model, src: torch.Tensor, max_len: int, bos: int, eos: int, src_mask: bool) -> list:
    # The classic slips: decode(ys, memory) without src_mask lets the cross-attention see the
    # padded source positions; a hard-coded <bos> starts every sentence from the wrong token.
    with torch.no_grad():
        mask = model.make_src_mask(src) if src_mask else None
        memory = model.encode(src)
        ys = torch.full((src.shape[0], 1), bos, dtype=torch.long)
        for _ in range(max_len):
            ys = torch.cat([ys, model.decode(ys, memory, mask)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return [_until_eos(r, eos) for r in ys[:, 1:].tolist()]


def _until_eos(row: list, eos: int) -> list:
    return row[: row.index(eos) + 1] if eos in row else row


def _rows(out: object, eos: int) -> list | None:
    got = out.tolist() if isinstance(out, torch.Tensor) and out.dim() == 2 else out
    if isinstance(got, list) and all(isinstance(r, list) for r in got):
        return [_until_eos(list(r), eos) for r in got]
    return None


def check_greedy(fn: Callable) -> int:
    """``fn(model, src (B, S), max_len, bos_id, eos_id) -> (B, T)`` ids without <bos>."""
    torch.manual_seed(0)
    # An untied random output layer makes the untrained model's choices depend on the source and
    # the prefix (a tied one mostly repeats the last token); pad and id 1 are never predicted.
    model = Transformer(TransformerConfig(15, 12, d_model=16, num_heads=2, num_encoder_layers=1,
                                          num_decoder_layers=1, dim_feedforward=32, max_len=32,
                                          tie_output=False)).eval()
    with torch.no_grad():
        model.generator.weight.normal_(0, 1.0)
        model.generator.bias.zero_()
        model.generator.bias[:2] = -1e4
    g = torch.Generator().manual_seed(1)
    # The sources of one batch have different lengths, so the shorter ones end in padding (id 0):
    # an answer that forgets the source mask translates the padding too and is caught. <bos> is
    # not always 1.
    pad = model.config.pad_id
    cases = ((1, 2, (6, 4, 2)), (3, 5, (6, 6, 3)), (4, 7, (5, 1, 6)))
    for i, (bos, eos, lengths) in enumerate(cases, start=1):
        src = torch.randint(3, 15, (3, 6), generator=g)
        src = src.masked_fill(torch.arange(6)[None, :] >= torch.tensor(lengths)[:, None], pad)
        want = [_until_eos(r, eos) for r in
                greedy_decode(model, src, max_len=10, bos_id=bos, eos_id=eos).tolist()]
        out = fn(model, src.clone(), 10, bos, eos)
        got_rows = _rows(out, eos)
        if got_rows != want:
            hint = HINT_GREEDY
            if got_rows == _greedy_variant(model, src, 10, bos, eos, src_mask=False):
                hint = HINT_GREEDY_SRC_MASK
            elif bos != 1 and got_rows == _greedy_variant(model, src, 10, 1, eos, src_mask=True):
                hint = say("greedy_bos_arg", bos=bos)
            elif got_rows and all(r[:1] == [bos] and r[1:] == w[:len(r) - 1]
                                  for r, w in zip(got_rows, want, strict=False)):
                hint = HINT_GREEDY_BOS
            if got_rows is None:
                raise CheckFailed(say("greedy_type", i=i, bos=bos, eos=eos, kind=type(out).__name__), hint)
            raise CheckFailed(say("greedy_case", i=i, bos=bos, eos=eos, want=want, got=got_rows), hint)
        full = out.tolist() if isinstance(out, torch.Tensor) else out
        if any(eos in r and any(t != pad for t in r[r.index(eos) + 1:]) for r in full):
            raise CheckFailed(say("greedy_after_eos", i=i), HINT_GREEDY_EOS)
    return len(cases)


CHECKS = {
    "train.label_smoothing": check_label_smoothing,
    "train.noam_lr": check_noam_lr,
    "train.shift_right": check_shift_right,
    "decode.greedy": check_greedy,
}
