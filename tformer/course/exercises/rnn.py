"""Checkers for the coding exercises of chapter 9b (the recurrent translator): Luong's batched
attention scores, and how many steps each model must run one after the other."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tformer.course.exercises import CheckFailed
from tformer.course.exercises._common import COMMON, close, describe, diagnose, number, short
from tformer.course.exercises._text import texts

MESSAGES = {
    "luong": ("e_ij = s_i W h_jᵀ for all i, j at once: scores = states @ W @ memory.transpose(1, 2), "
              "-inf where src_mask is False, softmax over the source (dim=-1).",
              "一次算出所有 i、j 的 e_ij = s_i W h_jᵀ：scores = states @ W @ memory.transpose(1, 2)，"
              "src_mask 为 False 处填 -inf，再沿源句（dim=-1）做 softmax。"),
    "luong_wt": ("the score is s_i W h_j: states @ W, not states @ W.T (W maps the encoder side, "
                 "h_j, to the decoder side).", "分数是 s_i W h_j：states @ W，而不是 states @ W.T。"),
    "luong_dim": ("each target position's weights must sum to 1 over the source positions: softmax over "
                  "the last axis, dim=-1.", "每个目标位置的权重在源句位置上之和为 1：沿最后一维 dim=-1 做 softmax。"),
    "luong_mask": ("use src_mask: padded source positions (False) must get weight 0.",
                   "要使用 src_mask：源句中填充的位置（False）权重必须为 0。"),
    "luong_inverted": ("src_mask is True at real tokens: fill the scores where it is False (~src_mask).",
                       "src_mask 在真实词元处为 True：应在它为 False 的位置（~src_mask）填充分数。"),
    "luong_case": ("case {i} (B={B}, T={T}, S={S}, source lengths {lengths})",
                   "用例 {i}（B={B}, T={T}, S={S}，源句长度 {lengths}）"),
    "steps_case": ("case {i} (S={S}, T={T}, {n_enc}+{n_dec} layers): expected {want}, got {got}",
                   "用例 {i}（S={S}, T={T}，{n_enc}+{n_dec} 层）：应为 {want}，实际为 {got}"),
    "steps_return": ("return three numbers: (GRU, GRU with attention, Transformer).",
                     "返回三个数：(GRU, 带注意力的 GRU, Transformer)。"),
    "steps": ("in training each GRU runs its encoder over the S source positions and then its decoder "
              "over the T target positions, one step after another; the Transformer runs each layer as "
              "one parallel computation over all positions.",
              "训练时，GRU 先让编码器逐个走过 S 个源句位置，再让解码器逐个走过 T 个目标位置；"
              "Transformer 的每一层都是对所有位置的一次并行计算。"),
    "steps_bidir": ("the two directions of the bidirectional encoder run side by side: S steps, not 2·S.",
                    "双向编码器的两个方向并排运行：S 步，而不是 2·S 步。"),
    "steps_attention": ("attention adds no step to the chain: the scores over the source are one parallel "
                        "computation per decoder step.", "注意力不会给链条增加步数：每个解码步对源句的打分是一次并行计算。"),
    "steps_transformer": ("a Transformer layer processes all positions at once: the chain is one step per "
                          "layer, whatever S and T.", "Transformer 的一层同时处理所有位置：链条每层一步，与 S、T 无关。"),
}
say = texts(MESSAGES, COMMON)


def check_luong_attention(fn: Callable) -> int:
    """``fn(states (B, T, d), memory (B, S, d), W (d, d), src_mask (B, S) bool) -> weights (B, T, S)``."""
    g = torch.Generator().manual_seed(9)
    cases = [(2, 3, 5, 4, [5, 3]), (1, 4, 2, 6, [2]), (3, 2, 6, 8, [6, 1, 4])]
    for i, (B, T, S, d, lengths) in enumerate(cases, start=1):
        states = torch.randn(B, T, d, generator=g, dtype=torch.float64)
        memory = torch.randn(B, S, d, generator=g, dtype=torch.float64)
        W = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
        src_mask = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]
        scores = states @ W @ memory.transpose(1, 2)
        keep = src_mask[:, None, :]

        def softmax(s: torch.Tensor, m: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
            return torch.softmax(s if m is None else s.masked_fill(~m, float("-inf")), dim=dim)

        want = softmax(scores, keep)
        got = fn(states.clone(), memory.clone(), W.clone(), src_mask.clone())
        if not close(got, want):
            mistakes = {say("luong_wt"): softmax(states @ W.T @ memory.transpose(1, 2), keep),
                        say("luong_mask"): softmax(scores, None),
                        say("luong_dim"): softmax(scores, keep, dim=1)}
            if not bool(src_mask.all()):
                mistakes[say("luong_inverted")] = softmax(scores, ~keep | ~src_mask.any(-1)[:, None, None])
            case = say("luong_case", i=i, B=B, T=T, S=S, lengths=lengths)
            raise CheckFailed(say("case_join", case=case, detail=describe(got, want)),
                              diagnose(got, mistakes, say("luong")))
    return len(cases)


def check_sequential_steps(fn: Callable) -> int:
    """``fn(src_len, tgt_len, num_encoder_layers, num_decoder_layers) -> (gru, gru_attention,
    transformer)``: the longest chain of computations that must wait for each other in training."""
    cases = [(12, 10, 2, 2), (30, 25, 6, 6), (5, 7, 1, 3)]
    for i, (S, T, n_enc, n_dec) in enumerate(cases, start=1):
        want = (S + T, S + T, n_enc + n_dec)
        out = fn(S, T, n_enc, n_dec)
        got = tuple(number(v) for v in out) if isinstance(out, (tuple, list)) and len(out) == 3 else None
        if got is None or None in got:
            raise CheckFailed(say("steps_case", i=i, S=S, T=T, n_enc=n_enc, n_dec=n_dec, want=want,
                                  got=short(out)), say("steps_return"))
        if got != want:
            hint = say("steps")
            if got[0] == 2 * S + T or got[1] == 2 * S + T:
                hint = say("steps_bidir")
            elif got[0] == want[0] and got[1] != want[1]:
                hint = say("steps_attention")
            elif got[:2] == want[:2]:
                hint = say("steps_transformer")
            raise CheckFailed(say("steps_case", i=i, S=S, T=T, n_enc=n_enc, n_dec=n_dec, want=want,
                                  got=tuple(int(v) if float(v).is_integer() else v for v in got)), hint)
    return len(cases)


CHECKS = {
    "rnn.luong_attention": check_luong_attention,
    "rnn.sequential_steps": check_sequential_steps,
}
