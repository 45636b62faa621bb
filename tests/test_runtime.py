"""Tests of runtime."""

from __future__ import annotations

import pytest
import torch
from helpers import cpu_only
from torch import nn

from tformer.runtime import autocast_context, make_grad_scaler, pick_device


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
