from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from tformer.runtime import autocast_context, make_grad_scaler, pick_device
from tformer.training.distributed import (
    TORCHRUN_ENV,
    DistInfo,
    init_distributed,
    shard,
    wrap_ddp,
)
from tformer.training.objectives import GlobalMeanLoss

HAS_GLOO = dist.is_available() and dist.is_gloo_available()
needs_gloo = pytest.mark.skipif(not HAS_GLOO, reason="torch.distributed with the gloo backend is not available")
cpu_only = pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="an accelerator is present"
)

# --- device ---------------------------------------------------------------------------------------


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


# --- mixed precision --------------------------------------------------------------------------------


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


# --- launching ----------------------------------------------------------------------------------


def _clear_torchrun_env(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def test_init_without_torchrun_env_says_how_to_launch(monkeypatch):
    _clear_torchrun_env(monkeypatch)
    with pytest.raises(RuntimeError) as info:
        init_distributed()
    message = str(info.value)
    assert "missing: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT" in message
    assert "torchrun --standalone --nproc_per_node=2 -m tformer.recipes.ddp_demo" in message


def test_init_with_partial_env_names_only_the_missing_variables(monkeypatch):
    _clear_torchrun_env(monkeypatch)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="missing: LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        init_distributed()


@pytest.mark.parametrize(
    ("env", "match"),
    [({"RANK": "x"}, "RANK='x' must be an integer"), ({"RANK": "2"}, "RANK=2 must be smaller than WORLD_SIZE=2")],
)
def test_init_rejects_inconsistent_env(monkeypatch, env, match):
    base = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for name, value in {**base, **env}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        init_distributed()


def test_init_rejects_unknown_backend(monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="backend='mpi'"):
        init_distributed("mpi")


def test_ddp_train_without_torchrun_prints_the_launch_command(monkeypatch, capsys, tmp_path):
    from tformer.recipes.ddp_demo import main

    _clear_torchrun_env(monkeypatch)
    assert main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing: RANK" in err and "torchrun --standalone --nproc_per_node=2" in err
    assert not (tmp_path / "loss.json").exists()


def test_wrap_ddp_single_process_returns_the_model_itself():
    model = nn.Linear(3, 2)
    assert wrap_ddp(model, DistInfo(0, 1, 0, torch.device("cpu"))) is model


def test_wrap_ddp_needs_a_process_group_for_several_processes():
    with pytest.raises(RuntimeError, match="call init_distributed"):
        wrap_ddp(nn.Linear(3, 2), DistInfo(0, 2, 0, torch.device("cpu")))


# --- sharding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 3), (7, 4), (3, 4), (8, 1)])
def test_shards_are_equal_disjoint_and_cover_all_but_the_remainder(n, world):
    items = [f"pair{i}" for i in range(n)]
    shards = [shard(items, r, world) for r in range(world)]
    assert {len(s) for s in shards} == {n // world}
    flat = [x for s in shards for x in s]
    assert len(set(flat)) == len(flat)
    assert sorted(flat, key=items.index) == items[: n - n % world]
    assert shards == [shard(items, r, world) for r in range(world)]  # deterministic


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 3), (9, 4)])
def test_shard_order_matches_distributed_sampler(n, world):
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False, drop_last=True)
        assert shard(list(range(n)), rank, world) == list(sampler)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([1, 2], 2, 2), ValueError, r"rank=2 must lie in \[0, world_size=2\)"),
        (([1, 2], -1, 2), ValueError, "rank=-1"),
        (([1, 2], 0, 0), ValueError, "world_size=0 must be >= 1"),
        (([1, 2], 0.0, 2), TypeError, "rank must be an int"),
        (({1, 2}, 0, 2), TypeError, "items must be a sequence"),
    ],
)
def test_shard_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        shard(*args)


# --- the loss normalisation -----------------------------------------------------------------------


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


# --- two processes with torchrun ------------------------------------------------------------------


@needs_gloo
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    from tformer.recipes.ddp_demo import RunConfig, train_curve

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tformer.recipes.ddp_demo", "--steps", "20", "--global-batch", "16", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "loss.json").read_text())
    one = train_curve(RunConfig(steps=20, global_batch=16))  # this process, no DDP, full batches
    assert two["world_size"] == 2 and one["world_size"] == 1
    # the shards really differ in token count, so a per-process mean would not be exact
    assert two["tokens"][0] != two["tokens"][1]
    assert [a + b for a, b in zip(*two["tokens"])] == one["tokens"][0]
    torch.testing.assert_close(torch.tensor(two["loss"]), torch.tensor(one["loss"]), rtol=1e-5, atol=0)
    assert one["loss"][-1] < one["loss"][0]  # and it does learn


# --- exercise checkers ----------------------------------------------------------------------------


def _run_checker(name, fn, capsys):
    from tformer.course.exercises import check

    ok = check(name, fn)
    return ok, capsys.readouterr().out


def test_shard_checker_accepts_a_strided_solution_and_rejects_uneven_or_contiguous_shards(capsys):
    ok, out = _run_checker("distributed.shard", lambda items, r, w: list(items[r : len(items) - len(items) % w : w]), capsys)
    assert ok and "all 5 cases pass" in out
    ok, out = _run_checker("distributed.shard", lambda items, r, w: list(items[r::w]), capsys)  # keeps the tail
    assert not ok and "sizes [4, 4, 3]" in out and "same number of items" in out
    ok, out = _run_checker(
        "distributed.shard", lambda items, r, w: list(items[r * (len(items) // w) : (r + 1) * (len(items) // w)]), capsys
    )
    assert not ok and "every world_size-th item" in out


def test_rank_losses_checker_accepts_global_normalisation_and_names_the_mean_of_means(capsys):
    ok, out = _run_checker("distributed.rank_losses", lambda s, n: len(n) * s / n.sum(), capsys)
    assert ok and "all 4 cases pass" in out
    ok, out = _run_checker("distributed.rank_losses", lambda s, n: s / n, capsys)
    assert not ok and "mean of the per-process means" in out
    ok, out = _run_checker("distributed.rank_losses", lambda s, n: s / n.sum(), capsys)  # forgot × W
    assert not ok and "must be Σ S_r / Σ n_r" in out


@pytest.mark.parametrize(("kwargs", "match"), [({"dtype": "half"}, "dtype='half'"), ({"steps": 0}, "steps=0")])
def test_ddp_run_config_rejects_bad_values(kwargs, match):
    from tformer.recipes.ddp_demo import RunConfig

    with pytest.raises(ValueError, match=match):
        RunConfig(**kwargs)


def test_ddp_train_rejects_a_global_batch_that_does_not_split_evenly():
    from tformer.recipes.ddp_demo import RunConfig, _build, train_curve

    with pytest.raises(ValueError, match="global_batch=15 must be divisible by the number of processes"):
        _build(RunConfig(steps=1, global_batch=15), rank=0, world_size=2)
    assert len(train_curve(RunConfig(steps=2, global_batch=4))["loss"]) == 2
