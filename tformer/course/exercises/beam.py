"""Checkers for beam search (chapter 9, used again in 9b and 11b): the length penalty and a beam
search that keeps its finished hypotheses.

The beam-search checker runs the reader's search on toy "models" whose next-token probabilities
depend only on the last token, so every expected answer is computed by hand in the comments below
and does not depend on any implementation (tformer's included).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tformer.course.exercises import CheckFailed
from tformer.course.exercises._common import COMMON, close, describe, diagnose
from tformer.course.exercises._text import texts

PAD, BOS, EOS, A, B, C, D, E = range(8)
V = 8
NAMES = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>", A: "A", B: "B", C: "C", D: "D", E: "E"}

MESSAGES = {
    "lp": ("lp(len) = ((5 + len) / 6)^α (Wu et al., 2016, Eq. 14).", "lp(len) = ((5 + len) / 6)^α（Wu et al., 2016，式 14）。"),
    "lp_plain_len": ("GNMT's penalty is ((5 + len) / 6)^α, not len^α: the 5 keeps very short "
                     "hypotheses from being divided by almost nothing.",
                     "GNMT 的长度惩罚是 ((5 + len) / 6)^α，而不是 len^α：加上 5 是为了让很短的假设不至于被一个"
                     "很小的数去除。"),
    "lp_no_alpha": ("raise (5 + len) / 6 to the power α (α = 0 must give 1: no normalisation).",
                    "要把 (5 + len) / 6 取 α 次幂（α = 0 时必须得到 1：不做归一化）。"),
    "lp_inverse": ("the penalty is ((5 + len) / 6)^α, not its inverse: the score is log P / lp.",
                   "长度惩罚是 ((5 + len) / 6)^α，而不是它的倒数：分数是 log P / lp。"),
    "lp_parens": ("the power applies to the whole fraction: ((5 + len) / 6)^α, not (5 + len)^α / 6.",
                  "幂作用于整个分式：((5 + len) / 6)^α，而不是 (5 + len)^α / 6。"),
    "lp_case": ("case {i} (lengths {lengths}, α={alpha})", "用例 {i}（长度 {lengths}，α={alpha}）"),
    "beam_case": ("case {i} ({name}): expected {want}, got {got}", "用例 {i}（{name}）：应为 {want}，实际为 {got}"),
    "beam_type": ("case {i} ({name}): expected a list of token ids, got {kind}",
                  "用例 {i}（{name}）：应返回词元 id 的列表，实际得到 {kind}"),
    "beam_type_hint": ("return the best hypothesis as a list of ids (or a 1-D tensor) without <bos>, "
                       "ending with <eos>.", "以 id 列表（或一维张量）返回最佳假设，不含 <bos>，以 <eos> 结尾。"),
    "case_kept": ("finished hypotheses kept, beam 2, α = 0", "保留已完成的假设，束宽 2，α = 0"),
    "case_first": ("the first hypothesis to finish is not the best, beam 2, α = 0",
                   "最先完成的假设不是最好的，束宽 2，α = 0"),
    "case_alpha": ("length penalty α = 1, beam 2", "长度惩罚 α = 1，束宽 2"),
    "case_alpha0": ("the same model with α = 0, beam 2", "同一个模型，α = 0，束宽 2"),
    "case_greedy": ("beam 1 is greedy decoding", "束宽 1 就是贪心解码"),
    "beam_dropped": ("a hypothesis that reached <eos> was lost. Every hypothesis of the beam that can end "
                     "with <eos> gives a finished one, and it must be kept (set aside, or kept with its "
                     "score frozen) even when it is not among the k best candidates of that step; the "
                     "beam goes on with the k best unfinished ones, and the best finished hypothesis "
                     "wins at the end. Here [B, <eos>] (log 0.1) beats every longer hypothesis.",
                     "一个已生成 <eos> 的假设被丢掉了。束中每个能以 <eos> 结束的假设都给出一个已完成的假设，"
                     "即使它不在这一步的前 k 个候选之中，也必须保留（放到一边，或以冻结的分数保留）；束则用前 k 个"
                     "未完成的假设继续搜索，最后由最好的已完成假设胜出。这里 [B, <eos>]（log 0.1）胜过所有更长的假设。"),
    "beam_first": ("do not stop at the first hypothesis that finishes: keep extending the others while "
                   "one of them can still beat it, then return the best finished one.",
                   "不要在第一个假设完成时就停下：只要其他假设还可能超过它，就继续扩展，最后返回最好的已完成假设。"),
    "beam_no_penalty": ("divide each hypothesis' summed log-probability by lp = ((5 + len) / 6)^α (divide, "
                        "do not multiply: log P is negative), len counting its tokens up to <eos>, and do "
                        "not stop early: with α > 0 an unfinished hypothesis can still overtake a finished "
                        "one, as the longer translation does here.",
                        "把每个假设的对数概率之和除以 lp = ((5 + len) / 6)^α（是除，不是乘：log P 是负数），"
                        "len 为到 <eos> 为止的词元数；也不要过早停止：α > 0 时，未完成的假设仍可能超过已完成的，"
                        "这里较长的译文就是如此。"),
    "beam_alpha0": ("α = 0 means lp = 1: no length normalisation, the highest summed log-probability "
                    "wins.", "α = 0 表示 lp = 1：不做长度归一化，对数概率之和最高者胜出。"),
    "beam_bos": ("do not return <bos>: the output starts with the first generated token.",
                 "不要返回 <bos>：输出从第一个生成的词元开始。"),
    "beam_eos": ("end the returned hypothesis with its <eos>.", "返回的假设要以它的 <eos> 结尾。"),
    "beam_hint": ("keep the beam_size best prefixes by summed log-probability (divided by the length "
                  "penalty), set finished ones aside, and return the best finished one.",
                  "按对数概率之和（除以长度惩罚）保留最好的 beam_size 个前缀，把已完成的放到一边，"
                  "最后返回最好的已完成假设。"),
}
say = texts(MESSAGES, COMMON)


# --- decode.length_penalty --------------------------------------------------------------------


def check_length_penalty(fn: Callable) -> int:
    """``fn(length (tensor of ints), alpha) -> tensor``: GNMT's ((5 + len) / 6)^α, elementwise."""
    cases = [([1, 2, 5, 10], 0.6), ([3], 0.0), ([7, 20], 1.0), ([1, 4], 2.0)]
    for i, (lengths, alpha) in enumerate(cases, start=1):
        length = torch.tensor(lengths)
        n = length.double()
        want = ((5 + n) / 6) ** alpha
        got = fn(length.clone(), alpha)
        if isinstance(got, (int, float)) and not isinstance(got, bool) and len(lengths) == 1:
            got = torch.tensor([float(got)])
        if not close(got, want):
            mistakes = {say("lp_plain_len"): n**alpha, say("lp_inverse"): ((5 + n) / 6) ** -alpha,
                        say("lp_parens"): (5 + n) ** alpha / 6}
            if alpha != 1.0:
                mistakes[say("lp_no_alpha")] = (5 + n) / 6
            raise CheckFailed(say("case_join", case=say("lp_case", i=i, lengths=lengths, alpha=alpha),
                                  detail=describe(got, want)), diagnose(got, mistakes, say("lp")))
    return len(cases)


# --- decode.beam_search -----------------------------------------------------------------------


class ToyModel:
    """Next-token log-probabilities that depend on the last token only: ``table[last] = {token: p}``.

    Every token not listed gets a probability of 1e-6 (so no score is -inf), and each row is
    renormalised. Called with a prefix (a list or 1-D tensor of ids starting with <bos>) it returns
    the (V,) log-probabilities; with a 2-D tensor (N, t) it returns (N, V).
    """

    def __init__(self, table: dict[int, dict[int, float]]) -> None:
        rows = torch.full((V, V), 1e-6, dtype=torch.float64)
        for last, nxt in table.items():
            for token, p in nxt.items():
                rows[last, token] = p
        self.logp = (rows / rows.sum(-1, keepdim=True)).log()

    def __call__(self, prefix: object) -> torch.Tensor:
        ids = torch.as_tensor(prefix.tolist() if isinstance(prefix, torch.Tensor) else list(prefix))
        if ids.dim() == 2:
            return self.logp[ids[:, -1].long()].clone()
        return self.logp[int(ids[-1])].clone()


# Hand-computed expectations (log 0.9 = -0.105, log 0.5 = -0.693, log 0.1 = -2.303):
# 1. After <bos>: A (-0.105), B (-2.303). Step 2: AA, AC (-0.798 each) and [B, <eos>] (-2.303,
#    finished). Every unfinished hypothesis loses 0.693 per step, so by length 5 it is at -2.88:
#    [B, <eos>] is the best finished hypothesis and must survive being pushed out of the beam.
KEPT = ToyModel({BOS: {A: 0.9, B: 0.1}, A: {A: 0.5, C: 0.5}, C: {A: 0.5, C: 0.5}, B: {EOS: 1.0}})
# 2. Step 1: A (log .6 = -0.511), B (-0.916). Step 2: AD (-0.734), [B, <eos>] (-1.022, finished
#    first), [A, <eos>] (-2.120), BD (-3.219). Step 3: [A, D, <eos>] (-0.734) beats [B, <eos>].
FIRST = ToyModel({BOS: {A: 0.6, B: 0.4}, A: {EOS: 0.2, D: 0.8}, B: {EOS: 0.9, D: 0.1}, D: {EOS: 1.0}})
# 3. [A, <eos>]: log .55 = -0.598, length 2, lp = 7/6 → -0.512; [B, C, D, E, <eos>]: log .45 =
#    -0.799, length 5, lp = 10/6 → -0.479. With α = 1 the long one wins; with α = 0, [A, <eos>].
#    (Not counting <eos> in the length, or counting <bos> too, gives the same winners.)
PENALTY = ToyModel({BOS: {A: 0.55, B: 0.45}, A: {EOS: 1.0}, B: {C: 1.0}, C: {D: 1.0}, D: {E: 1.0},
                    E: {EOS: 1.0}})

BEAM_CASES = [
    ("case_kept", KEPT, 2, 6, 0.0, [B, EOS]),
    ("case_first", FIRST, 2, 5, 0.0, [A, D, EOS]),
    ("case_alpha", PENALTY, 2, 6, 1.0, [B, C, D, E, EOS]),
    ("case_alpha0", PENALTY, 2, 6, 0.0, [A, EOS]),
    ("case_greedy", FIRST, 1, 5, 0.0, [A, D, EOS]),
]


def _ids(out: object) -> list[int] | None:
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == 1:
        out = out[0]
    if isinstance(out, torch.Tensor) and out.dim() == 1 and not out.is_floating_point() and not out.is_complex():
        out = out.tolist()
    if isinstance(out, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in out):
        ids = list(out)
        while ids and ids[-1] == PAD:
            ids.pop()
        return ids
    return None


def _show(ids: list[int]) -> str:
    return "[" + ", ".join(NAMES.get(t, str(t)) for t in ids) + "]"


def _beam_hint(key: str, got: list[int], want: list[int]) -> str:
    if got[:1] == [BOS]:
        return say("beam_bos")
    if got == want[:-1]:
        return say("beam_eos")
    if key == "case_kept" and EOS not in got:
        return say("beam_dropped")
    if (key == "case_first" and got == [B, EOS]) or got == [EOS]:
        return say("beam_first")
    if key == "case_alpha" and got == [A, EOS]:
        return say("beam_no_penalty")
    if key == "case_alpha0" and got == [B, C, D, E, EOS]:
        return say("beam_alpha0")
    return say("beam_hint")


def check_beam_search(fn: Callable) -> int:
    """``fn(next_logprobs, bos_id, eos_id, beam_size, max_len, alpha) -> list of ids``.

    ``next_logprobs(prefix)`` gives the (V,) log-probabilities of the next token after ``prefix``
    (ids starting with <bos>). At every step each hypothesis of the beam that can end with <eos>
    gives a finished hypothesis, which is kept whether or not it ranks among the k best candidates;
    the beam continues with the k best unfinished continuations, until ``max_len`` tokens or until
    no unfinished hypothesis is left. The answer is the best finished hypothesis, scored by its
    summed log-probability divided by ((5 + len) / 6)^α (len counts its tokens, <eos> included),
    without <bos> and ending with <eos>.
    """
    for i, (key, model, beam, max_len, alpha, want) in enumerate(BEAM_CASES, start=1):
        out = fn(model, BOS, EOS, beam, max_len, alpha)
        got = _ids(out)
        if got is None:
            raise CheckFailed(say("beam_type", i=i, name=say(key), kind=type(out).__name__),
                              say("beam_type_hint"))
        if got != want:
            hint = _beam_hint(key, got, want)
            raise CheckFailed(say("beam_case", i=i, name=say(key), want=_show(want), got=_show(got)), hint)
    return len(BEAM_CASES)


CHECKS = {
    "decode.length_penalty": check_length_penalty,
    "decode.beam_search": check_beam_search,
}
