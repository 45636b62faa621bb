"""The reference solutions of the coding exercises of chapters 8 (training) and 9 (inference), as the
chapters' solution dropdowns print them, pass their checkers; the chapters' own stubs, run as
committed, print "not implemented yet"."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tformer.course.exercises import NOT_IMPLEMENTED, check


def my_loss(logits, target, smoothing, pad_id):  # ex08-label-smoothing
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, target[:, None]).squeeze(-1)
    loss = (1 - smoothing) * nll - smoothing * logp.mean(-1)
    return loss[target != pad_id].mean()


def my_lr(step, d_model, warmup):  # ex08-noam
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def shift_right(target, bos_id):  # ex08-shift
    bos = torch.full_like(target[:, :1], bos_id)
    return torch.cat([bos, target[:, :-1]], dim=1)


def my_greedy(model, src, max_len, bos_id, eos_id):  # ex09-greedy
    with torch.no_grad():
        memory = model.encode(src)
        ys = torch.full((src.shape[0], 1), bos_id)
        done = torch.zeros(src.shape[0], dtype=torch.bool)
        for _ in range(max_len):
            nxt = model.decode(ys, memory, model.make_src_mask(src))[:, -1].argmax(-1)
            nxt = nxt.masked_fill(done, 0)
            ys = torch.cat([ys, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if done.all():
                break
    return ys[:, 1:]


def test_chapter_8_reference_solutions_pass(capsys):
    assert check("train.label_smoothing", my_loss)
    assert check("train.noam_lr", my_lr)
    assert check("train.shift_right", shift_right)
    out = capsys.readouterr().out
    assert out.count("✓") == 3, out


def test_chapter_9_reference_solution_passes(capsys):
    assert check("decode.greedy", my_greedy)
    assert "✓ decode.greedy" in capsys.readouterr().out


def test_the_noam_peak_quoted_in_the_solution():
    # "the peak is at step 4000, where the rate is (512 · 4000)^-0.5 ≈ 7.0e-4"
    rates = [my_lr(s, 512, 4000) for s in range(1, 20001)]
    assert max(range(len(rates)), key=rates.__getitem__) + 1 == 4000
    assert round(max(rates), 5) == 0.0007


def test_the_chapters_stubs_print_not_implemented_yet(capsys):
    def my_loss(logits, target, smoothing, pad_id):
        ...

    def my_lr(step, d_model, warmup):
        raise NotImplementedError

    assert check("train.label_smoothing", my_loss) is False
    assert check("train.noam_lr", my_lr) is False
    out = capsys.readouterr().out
    assert out.count(NOT_IMPLEMENTED) == 2 and "Traceback" not in out
