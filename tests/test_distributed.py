from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from tformer.training.distributed import (
    TORCHRUN_ENV,
    DistInfo,
    init_distributed,
    shard,
    wrap_ddp,
)

# --- device ---------------------------------------------------------------------------------------










# --- mixed precision --------------------------------------------------------------------------------










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








# --- two processes with torchrun ------------------------------------------------------------------




# --- exercise checkers ----------------------------------------------------------------------------










