"""Label smoothing, the warmup schedule, the training loop, checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from tformer.data.batches import make_batches
from tformer.data.corpus import load_builtin
from tformer.data.text import Vocab, tokenize_en, tokenize_zh
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.training.checkpoint import load_checkpoint, read_config, read_json, save_checkpoint
from tformer.training.loop import TrainState, evaluate, fit, train_epoch
from tformer.training.objectives import LabelSmoothingLoss
from tformer.training.optim import make_optimizer, noam_lr, noam_scheduler

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


def _tiny(seed: int = 0, n: int = 48):
    pairs = load_builtin("train")[:n]
    sv = Vocab.build([tokenize_zh(p.src) for p in pairs])
    tv = Vocab.build([tokenize_en(p.tgt) for p in pairs])
    torch.manual_seed(seed)
    cfg = TransformerConfig(len(sv), len(tv), d_model=16, num_heads=2, num_encoder_layers=1,
                            num_decoder_layers=1, dim_feedforward=32, dropout=0.1, max_len=64)
    model = Transformer(cfg)
    opt = make_optimizer(model)
    sched = noam_scheduler(opt, 16, warmup=4, factor=1.0)

    def batches(epoch: int):
        return make_batches(pairs, sv, tv, tokenize_zh, tokenize_en, batch_size=8, shuffle=True, seed=epoch)

    return model, opt, sched, batches, sv, tv


def test_training_lowers_the_loss():
    model, opt, sched, batches, *_ = _tiny()
    loss_fn = LabelSmoothingLoss(0.1)
    before = evaluate(model, batches(0), loss_fn)
    state = fit(model, batches, None, epochs=6, loss_fn=loss_fn, optimizer=opt, scheduler=sched,
                progress=False, log=None)
    after = evaluate(model, batches(0), loss_fn)
    assert after < before - 0.5
    assert state.finished and state.step == 6 * len(batches(0)) and len(state.history["train_loss"]) == 6


def test_fit_rejects_a_zero_time_limit():
    model, opt, sched, batches, *_ = _tiny()
    with pytest.raises(ValueError, match="max_minutes=0"):
        fit(model, batches, None, epochs=1, loss_fn=LabelSmoothingLoss(), optimizer=opt, max_minutes=0)


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_stopped_and_resumed_run_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    loss_fn = LabelSmoothingLoss(0.1)
    # uninterrupted: 3 epochs of 6 batches
    model, opt, sched, batches, sv, tv = _tiny(seed=1)
    torch.manual_seed(123)
    full = fit(model, batches, batches(99), epochs=3, loss_fn=loss_fn, optimizer=opt, scheduler=sched,
               progress=False, log=None)
    want, want_lr = _params(model), opt.param_groups[0]["lr"]

    # interrupted in the middle of epoch 2, saved, then resumed in a fresh model/optimizer
    model, opt, sched, batches, sv, tv = _tiny(seed=1)
    torch.manual_seed(123)
    part = fit(model, batches, batches(99), epochs=3, loss_fn=loss_fn, optimizer=opt, scheduler=sched,
               max_steps=9, progress=False, log=None)
    assert not part.finished and part.step == 9 and part.batch_in_epoch == 3
    save_checkpoint(tmp_path, model, opt, sched, part, files={"src_vocab.json": sv, "tgt_vocab.json": tv})
    torch.manual_seed(999)  # disturb the global RNG: the checkpoint must restore it
    model2, opt2, sched2, batches, *_ = _tiny(seed=7)
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


def test_train_epoch_works_inside_distributed_data_parallel(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if dist.is_initialized():
        pytest.skip("a process group is already running")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        loss_fn = LabelSmoothingLoss(0.1)
        model, opt, sched, batches, *_ = _tiny(seed=3)
        torch.manual_seed(5)
        train_epoch(model, batches(0), loss_fn, opt, sched, progress=False)
        plain = _params(model)
        model, _, _, batches, *_ = _tiny(seed=3)
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


def _saved(tmp_path):
    model, opt, sched, batches, sv, tv = _tiny()
    state = train_and_state(model, opt, sched, batches)
    save_checkpoint(tmp_path, model, opt, sched, state, config={"note": "x"},
                    files={"src_vocab.json": sv, "tgt_vocab.json": tv})
    return model, sv, tv


def _model_for(directory):
    """A fresh model built from the checkpoint's own config, as a caller of load_checkpoint must."""
    return Transformer(TransformerConfig.from_dict(read_config(directory)["model"]))


def train_and_state(model, opt, sched, batches):
    state = TrainState()
    train_epoch(model, batches(0)[:2], LabelSmoothingLoss(), opt, sched, state=state, progress=False)
    return state


def test_checkpoint_round_trip_keeps_weights_vocab_and_config(tmp_path):
    model, sv, tv = _saved(tmp_path)
    names = sorted(os.listdir(tmp_path))
    assert names == ["config.json", "model.safetensors", "optimizer.safetensors", "src_vocab.json",
                     "state.json", "tgt_vocab.json"]
    ckpt = load_checkpoint(tmp_path, _model_for(tmp_path))
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[k], v), k
    assert ckpt.model.generator.weight is ckpt.model.tgt_embed.weight  # tying survives
    assert Vocab.from_dict(read_json(tmp_path / "src_vocab.json")) == sv
    assert Vocab.from_dict(read_json(tmp_path / "tgt_vocab.json")) == tv
    assert ckpt.config["note"] == "x" and ckpt.state.step == 2
    # scalars are JSON, never pickle
    assert json.loads((tmp_path / "state.json").read_text())["step"] == 2


def test_checkpoint_config_mismatch_names_the_field(tmp_path):
    _saved(tmp_path)
    ckpt = load_checkpoint(tmp_path, _model_for(tmp_path))
    other = TransformerConfig(**{**ckpt.model.config.to_dict(), "d_model": 32})
    with pytest.raises(ValueError, match="d_model: checkpoint 16, model 32"):
        load_checkpoint(tmp_path, Transformer(other))


def test_missing_or_corrupt_checkpoint_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope", _tiny()[0])
    model, *_ = _saved(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(tmp_path, model)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(tmp_path, model)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_checkpoint(tmp_path, model)


def test_files_from_different_saves_are_detected(tmp_path):
    model, opt, sched, batches, sv, tv = _tiny()
    state = train_and_state(model, opt, sched, batches)
    save_checkpoint(tmp_path, model, opt, sched, state)
    saved_state = (tmp_path / "state.json").read_text()
    state.step += 5
    save_checkpoint(tmp_path, model, opt, sched, state)
    (tmp_path / "state.json").write_text(saved_state)  # as if the last save died before state.json
    with pytest.raises(ValueError, match="different saves"):
        load_checkpoint(tmp_path, _model_for(tmp_path))


def test_a_failed_save_leaves_the_previous_file_and_no_temporary_file(tmp_path, monkeypatch):
    model, sv, tv = _saved(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    import tformer.training.checkpoint as ck

    def broken(model, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


# ----------------------------------------------------------------------------- exercise checkers


def test_training_checkers_accept_the_reference_solutions():
    from tformer.course.exercises import check
    from tformer.inference.generation import greedy_decode

    def ls(logits, target, eps, pad):
        return F.cross_entropy(logits, target, ignore_index=pad, label_smoothing=eps)

    assert check("train.label_smoothing", ls, quiet=True)
    assert check("train.noam_lr", lambda s, d, w: d**-0.5 * min(s**-0.5, s * w**-1.5), quiet=True)
    assert check("train.shift_right",
                 lambda t, bos: torch.cat([torch.full_like(t[:, :1], bos), t[:, :-1]], 1), quiet=True)
    assert check("decode.greedy",
                 lambda m, src, n, bos, eos: greedy_decode(m, src, max_len=n, bos_id=bos, eos_id=eos),
                 quiet=True)


def _verdict(name, fn, capsys):
    from tformer.course.exercises import check

    assert not check(name, fn)
    return capsys.readouterr().out


def test_training_checkers_name_the_typical_mistakes(capsys):
    def no_pad(logits, target, eps, pad):
        return F.cross_entropy(logits, target, label_smoothing=eps)

    assert "pad_id must be left out" in _verdict("train.label_smoothing", no_pad, capsys)

    def other_classes(logits, target, eps, pad):
        logp = F.log_softmax(logits, -1)
        nll = -logp.gather(-1, target[:, None]).squeeze(-1)
        loss = (1 - eps) * nll + eps * (-logp.sum(-1) - nll) / (logits.shape[-1] - 1)
        return loss[target != pad].mean()

    assert "all V classes" in _verdict("train.label_smoothing", other_classes, capsys)
    assert "d_model^-0.5" in _verdict("train.noam_lr", lambda s, d, w: min(s**-0.5, s * w**-1.5), capsys)
    assert "min of" in _verdict("train.noam_lr", lambda s, d, w: d**-0.5 * max(s**-0.5, s * w**-1.5), capsys)
    out = _verdict("train.shift_right", lambda t, bos: torch.cat([torch.full_like(t[:, :1], bos), t], 1), capsys)
    assert "drop the last token" in out
    out = _verdict("train.shift_right", lambda t, bos: torch.cat([t[:, 1:], torch.full_like(t[:, :1], bos)], 1),
                   capsys)
    assert "shift to the right" in out

    def keeps_bos(model, src, n, bos, eos):
        from tformer.inference.generation import greedy_decode

        out = greedy_decode(model, src, max_len=n, bos_id=bos, eos_id=eos)
        return torch.cat([torch.full_like(out[:, :1], bos), out], 1)

    assert "do not return it" in _verdict("decode.greedy", keeps_bos, capsys)
