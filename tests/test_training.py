"""Label smoothing, the warmup schedule, the training loop, checkpoints and exact resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_translation_run
from torch import nn

from tformer.training.checkpoint import load_checkpoint, save_checkpoint
from tformer.training.loop import Cooldown, evaluate, fit, train_epoch
from tformer.training.objectives import GlobalMeanLoss, LabelSmoothingLoss
from tformer.training.optim import make_optimizer, noam_lr, noam_scheduler, warmup_cosine_lr

# ----------------------------------------------------------------------------- label smoothing


def test_label_smoothing_matches_torch_cross_entropy_with_padding_ignored():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    target = torch.randint(1, 11, (3, 5))
    target[0, 3:] = 0  # padding
    for eps in (0.0, 0.1, 0.3):
        got = LabelSmoothingLoss(eps, ignore_index=0)(logits, target)
        want = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=0, label_smoothing=eps)
        torch.testing.assert_close(got, want)


def test_label_smoothing_hand_computed_value():
    # V = 2, logits (0, 0): p = (1/2, 1/2), so every target distribution gives -log(1/2) = log 2.
    loss = LabelSmoothingLoss(0.1, ignore_index=-1)(torch.zeros(1, 2), torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log(2))
    # logits (log 3, 0): p = (3/4, 1/4); target 0 with ε = 0.2 → q = (0.9, 0.1)
    # loss = -(0.9 log 3/4 + 0.1 log 1/4)
    loss = LabelSmoothingLoss(0.2, ignore_index=-1)(torch.tensor([[math.log(3), 0.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(-(0.9 * math.log(0.75) + 0.1 * math.log(0.25)), rel=1e-6)


def test_label_smoothing_padding_positions_contribute_zero():
    logits = torch.randn(2, 4, 7)
    target = torch.tensor([[3, 4, 0, 0], [5, 0, 0, 0]])
    per_token = LabelSmoothingLoss(0.1, reduction="none")(logits, target)
    assert per_token.shape == (2, 4)
    assert (per_token[target == 0] == 0).all() and (per_token[target != 0] > 0).all()
    mean = LabelSmoothingLoss(0.1)(logits, target)
    torch.testing.assert_close(mean, per_token.sum() / 3)


def test_label_smoothing_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="smoothing=1.0"):
        LabelSmoothingLoss(1.0)
    with pytest.raises(ValueError, match="vocabulary dimension"):
        LabelSmoothingLoss()(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        LabelSmoothingLoss()(torch.randn(2, 5), torch.tensor([1, 9]))
    with pytest.raises(TypeError, match="integer token ids"):
        LabelSmoothingLoss()(torch.randn(2, 5), torch.tensor([1.0, 2.0]))


# ----------------------------------------------------------------------------- schedule


def test_noam_lr_matches_the_paper_formula_by_hand():
    # peak at step = warmup: 512^-0.5 · 4000^-0.5
    assert noam_lr(4000, 512, 4000) == pytest.approx(1 / math.sqrt(512 * 4000))
    assert noam_lr(1, 512, 4000) == pytest.approx(512**-0.5 * 4000**-1.5)
    assert noam_lr(16000, 512, 4000) == pytest.approx(noam_lr(4000, 512, 4000) / 2)  # step^-0.5
    assert noam_lr(100, 512, 4000, factor=2.0) == pytest.approx(2 * noam_lr(100, 512, 4000))
    rates = [noam_lr(s, 64, 10) for s in range(1, 40)]
    assert max(rates) == rates[9]  # rises to step 10, then falls


def test_noam_lr_rejects_step_zero_and_bad_sizes():
    with pytest.raises(ValueError, match="step=0"):
        noam_lr(0, 512, 4000)
    with pytest.raises(ValueError, match="warmup"):
        noam_lr(1, 512, 0)
    with pytest.raises(ValueError, match="factor"):
        noam_lr(1, 512, 10, factor=0)


def test_noam_scheduler_sets_the_optimizer_rate_of_every_step():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = make_optimizer(torch.nn.Linear(1, 1))
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-9
    opt = torch.optim.Adam([p], lr=1.0)
    sched = noam_scheduler(opt, d_model=16, warmup=5, factor=3.0)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([noam_lr(s, 16, 5, 3.0) for s in range(1, 13)])


# ----------------------------------------------------------------------------- loop




def test_training_lowers_the_loss():
    model, opt, sched, batches, *_ = tiny_translation_run()
    loss_fn = LabelSmoothingLoss(0.1)
    before = evaluate(model, batches(0), loss_fn)
    state = fit(model, batches, None, epochs=6, loss_fn=loss_fn, optimizer=opt, scheduler=sched,
                progress=False, log=None)
    after = evaluate(model, batches(0), loss_fn)
    assert after < before - 0.5
    assert state.finished and state.step == 6 * len(batches(0)) and len(state.history["train_loss"]) == 6


def test_fit_rejects_a_zero_time_limit():
    model, opt, sched, batches, *_ = tiny_translation_run()
    with pytest.raises(ValueError, match="max_minutes=0"):
        fit(model, batches, None, epochs=1, loss_fn=LabelSmoothingLoss(), optimizer=opt, max_minutes=0)


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_stopped_and_resumed_run_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    loss_fn = LabelSmoothingLoss(0.1)
    # uninterrupted: 3 epochs of 6 batches
    model, opt, sched, batches, sv, tv = tiny_translation_run(seed=1)
    torch.manual_seed(123)
    full = fit(model, batches, batches(99), epochs=3, loss_fn=loss_fn, optimizer=opt, scheduler=sched,
               progress=False, log=None)
    want, want_lr = _params(model), opt.param_groups[0]["lr"]

    # interrupted in the middle of epoch 2, saved, then resumed in a fresh model/optimizer
    model, opt, sched, batches, sv, tv = tiny_translation_run(seed=1)
    torch.manual_seed(123)
    part = fit(model, batches, batches(99), epochs=3, loss_fn=loss_fn, optimizer=opt, scheduler=sched,
               max_steps=9, progress=False, log=None)
    assert not part.finished and part.step == 9 and part.batch_in_epoch == 3
    save_checkpoint(tmp_path, model, opt, sched, part, files={"src_vocab.json": sv, "tgt_vocab.json": tv})
    torch.manual_seed(999)  # disturb the global RNG: the checkpoint must restore it
    model2, opt2, sched2, batches, *_ = tiny_translation_run(seed=7)
    ckpt = load_checkpoint(tmp_path, model2, opt2, sched2)
    resumed = fit(model2, batches, batches(99), epochs=3, loss_fn=loss_fn, optimizer=opt2,
                  scheduler=sched2, state=ckpt.state, progress=False, log=None)

    got = _params(model2)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert resumed.history["step_loss"] == full.history["step_loss"]
    assert resumed.history["train_loss"] == full.history["train_loss"]
    assert resumed.history["valid_loss"] == full.history["valid_loss"]
    assert opt2.param_groups[0]["lr"] == want_lr


# ----------------------------------------------------------------------------- cooldown


def test_cooldown_by_steps_is_a_linear_ramp_worked_by_hand():
    # max_steps 10, fraction 0.3: the last 3 steps get 3/3, 2/3, 1/3 ... of their scheduled rate
    ramp = Cooldown(0.3, max_steps=10)
    got = [ramp.factor(step) for step in range(1, 11)]
    assert got[:7] == [1.0] * 7
    assert got[7:] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert Cooldown(0.0, max_steps=10).factor(10) == 1.0
    # a resumed run (first step 20, limit 30) ramps over its own 10 steps
    assert Cooldown(0.5, first_step=20, max_steps=30).factor(30) == pytest.approx(1 / 5)


def test_cooldown_by_time_falls_to_zero_at_the_deadline(monkeypatch):
    import tformer.training.loop as loop

    now = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    ramp = Cooldown(0.25, deadline=200.0, seconds=100.0)  # started at 100, ramps from 175
    for t, want in [(100.0, 1.0), (175.0, 1.0), (187.5, 0.5), (200.0, 0.0), (230.0, 0.0)]:
        now[0] = t
        assert ramp.factor(1) == pytest.approx(want)


def test_fit_scales_each_step_rate_and_leaves_the_scheduler_its_own():
    loss_fn = LabelSmoothingLoss(0.1)
    model, opt, sched, batches, *_ = tiny_translation_run(seed=2)
    plain = fit(model, batches, None, epochs=3, loss_fn=loss_fn, optimizer=opt, scheduler=sched,
                max_steps=12, progress=False, log=None)
    model, opt, sched, batches, *_ = tiny_translation_run(seed=2)
    cooled = fit(model, batches, None, epochs=3, loss_fn=loss_fn, optimizer=opt, scheduler=sched,
                 max_steps=12, cooldown=0.5, progress=False, log=None)
    want = [lr * Cooldown(0.5, max_steps=12).factor(i + 1) for i, lr in enumerate(plain.history["lr"])]
    assert cooled.history["lr"] == pytest.approx(want)
    assert cooled.history["lr"][-1] == pytest.approx(plain.history["lr"][-1] / 6)
    # after the run the optimizer holds the scheduler's rate for the next step, not a scaled one
    assert opt.param_groups[0]["lr"] == pytest.approx(noam_lr(13, 16, 4, 1.0))


def test_cooldown_over_epochs_when_there_is_no_other_limit():
    model, opt, sched, batches, *_ = tiny_translation_run(seed=3)
    n = len(batches(0))  # 6 batches per epoch
    state = fit(model, batches, None, epochs=2, loss_fn=LabelSmoothingLoss(0.1), optimizer=opt,
                scheduler=sched, cooldown=0.5, progress=False, log=None)
    factors = [lr / noam_lr(i + 1, 16, 4, 1.0) for i, lr in enumerate(state.history["lr"])]
    assert factors == pytest.approx([1.0] * n + [(n - i) / n for i in range(n)])


def test_cooldown_outside_zero_to_one_is_rejected_with_its_value():
    model, opt, sched, batches, *_ = tiny_translation_run()
    with pytest.raises(ValueError, match="cooldown=1.5"):
        fit(model, batches, None, epochs=1, loss_fn=LabelSmoothingLoss(), optimizer=opt, cooldown=1.5)
    with pytest.raises(TypeError, match="cooldown"):
        Cooldown("0.2")


def test_train_epoch_works_inside_distributed_data_parallel(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if dist.is_initialized():
        pytest.skip("a process group is already running")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        loss_fn = LabelSmoothingLoss(0.1)
        model, opt, sched, batches, *_ = tiny_translation_run(seed=3)
        torch.manual_seed(5)
        train_epoch(model, batches(0), loss_fn, opt, sched, progress=False)
        plain = _params(model)
        model, _, _, batches, *_ = tiny_translation_run(seed=3)
        ddp = DistributedDataParallel(model)
        opt = make_optimizer(ddp)
        sched = noam_scheduler(opt, 16, warmup=4)
        torch.manual_seed(5)
        train_epoch(ddp, batches(0), loss_fn, opt, sched, progress=False)
        for k, v in _params(model).items():
            torch.testing.assert_close(v, plain[k], rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- checkpoints


















# ----------------------------------------------------------------------------- exercise checkers








def test_global_mean_loss_on_one_process_is_the_mean_over_real_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    target = torch.tensor([[3, 4, 5, 0, 0], [1, 2, 3, 4, 6]])  # 0 = padding: 8 real tokens
    from tformer.training.objectives import LabelSmoothingLoss

    loss = GlobalMeanLoss(LabelSmoothingLoss(0.0, ignore_index=0, reduction="sum"), ignore_index=0)(logits, target)
    expected = nn.functional.cross_entropy(logits.reshape(-1, 7), target.reshape(-1), ignore_index=0)
    torch.testing.assert_close(loss, expected)


def test_mean_of_per_shard_means_differs_from_the_global_mean_when_token_counts_differ():
    # two shards: 2 tokens with loss 1.0 each, 6 tokens with loss 3.0 each
    s, n = torch.tensor([2 * 1.0, 6 * 3.0]), torch.tensor([2.0, 6.0])
    assert (s / n).mean().item() == pytest.approx(2.0)  # what averaging per-process means gives
    assert (s.sum() / n.sum()).item() == pytest.approx(2.5)  # the mean over all 8 tokens
    world = 2  # GlobalMeanLoss: each process returns W·S_r/N, DDP averages: (1/W)·Σ W·S_r/N = S/N
    assert ((world * s / n.sum()).sum() / world).item() == pytest.approx(2.5)


def test_global_mean_loss_requires_a_summed_loss():
    with pytest.raises(ValueError, match="reduction='sum'"):
        GlobalMeanLoss(nn.CrossEntropyLoss(reduction="mean"))


def test_schedule_warms_up_then_follows_a_cosine_to_min_lr():
    lr = lambda it: warmup_cosine_lr(it, 1e-3, 1e-4, 100, 2000)  # noqa: E731
    assert lr(0) == pytest.approx(1e-3 / 101)
    assert lr(99) == pytest.approx(1e-3 * 100 / 101)
    assert lr(100) == pytest.approx(1e-3)
    assert lr(1050) == pytest.approx(0.55e-3)
    assert lr(2000) == pytest.approx(1e-4)
