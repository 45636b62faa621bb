"""tformer.runtime: device choice, mixed precision, grad scaler, unwrap, eval_mode, all-reduce."""

from __future__ import annotations

import pytest
import torch
from helpers import cpu_only
from torch import nn

from tformer.runtime import (
    all_reduce,
    any_rank,
    autocast_context,
    autocast_dtype,
    eval_mode,
    make_grad_scaler,
    pick_device,
    resolve_precision,
    unwrap,
)


@cpu_only
def test_pick_device_falls_back_to_cpu_without_accelerator():
    assert pick_device() == torch.device("cpu")


def test_pick_device_honours_an_explicit_cpu_request():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_pick_device_rejects_cuda_when_absent():
    with pytest.raises(ValueError, match=r"prefer='cuda'.*is_available\(\) is False"):
        pick_device("cuda")


def test_pick_device_rejects_unknown_names():
    with pytest.raises(ValueError, match="not a device name"):
        pick_device("gpu0")


def test_disabled_autocast_leaves_float32_results_bit_identical():
    torch.manual_seed(0)
    layer, x = nn.Linear(16, 8), torch.randn(4, 16)
    plain = layer(x)
    for ctx in (autocast_context("cpu", enabled=False), autocast_context("cpu", dtype=torch.float32)):
        with ctx:
            out = layer(x)
        assert out.dtype == torch.float32
        assert torch.equal(out, plain)


def test_cpu_autocast_runs_linear_layers_in_bfloat16_within_its_precision():
    torch.manual_seed(0)
    layer, x = nn.Linear(64, 32), torch.randn(8, 64)
    with autocast_context("cpu"):  # default dtype on CPU: bfloat16
        out = layer(x)
    assert out.dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32  # the weights themselves stay float32
    # bfloat16 keeps 8 significant bits: relative error per element ~ 2^-8
    torch.testing.assert_close(out.float(), layer(x), rtol=2e-2, atol=2e-2)
    assert not torch.equal(out.float(), layer(x))


def test_autocast_rejects_a_non_mixed_precision_dtype():
    with pytest.raises(ValueError, match=r"dtype=torch.int8 is not a mixed-precision type"):
        autocast_context("cpu", dtype=torch.int8)


def test_grad_scaler_is_a_pass_through_off_cuda():
    scaler = make_grad_scaler("cpu", torch.float16)
    assert not scaler.is_enabled()
    loss = torch.tensor(2.5, requires_grad=True)
    assert scaler.scale(loss) is loss


def test_eval_mode_turns_dropout_off_and_restores_the_mode_even_after_an_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    with eval_mode(model) as same:
        assert same is model and not model.training and not model[1].training
    assert model.training and model[1].training
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training  # restored in finally
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training  # a model in eval mode stays there
    with pytest.raises(TypeError, match="torch.nn.Module"):
        with eval_mode("not a model"):
            pass


def test_unwrap_removes_compile_and_ddp_wrappers_but_leaves_a_plain_model():
    model = nn.Linear(2, 2)
    assert unwrap(model) is model

    class Compiled(nn.Module):  # what torch.compile returns keeps the model at ._orig_mod
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    assert unwrap(Compiled(Compiled(model))) is model


def test_training_uses_float32_by_default_and_autocast_types_are_bfloat16_on_cpu():
    assert resolve_precision("float32", "cpu") == torch.float32  # the recipes' default, for now
    assert autocast_dtype("cpu") == torch.bfloat16


def test_collectives_are_the_identity_without_a_process_group():
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce(x), x) and torch.equal(all_reduce(x, "max"), x)
    assert any_rank(True) is True and any_rank(False) is False
    with pytest.raises(ValueError, match="op='mean' must be 'sum' or 'max'"):
        all_reduce(x, "mean")


def test_peak_memory_is_in_bytes_and_covers_a_tensor_this_process_touched():
    from tformer.runtime import peak_memory

    before = peak_memory()
    assert isinstance(before, int) and before > 2**20  # Linux: VmHWM; a Python process with torch holds > 1 MiB
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, written, so resident
    assert peak_memory() >= big.numel() * 4
    assert peak_memory() >= before  # a peak never falls unless reset
