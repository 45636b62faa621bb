"""tformer.recipes.ddp_demo: the data-parallel demo on one and two processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import needs_gloo

from tformer.training.distributed import TORCHRUN_ENV


def test_ddp_train_without_torchrun_prints_the_launch_command(monkeypatch, capsys, tmp_path):
    from tformer.recipes.ddp_demo import main

    _clear_torchrun_env(monkeypatch)
    assert main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing: RANK" in err and "torchrun --standalone --nproc_per_node=2" in err
    assert not (tmp_path / "loss.json").exists()


def _clear_torchrun_env(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


@needs_gloo
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    from tformer.recipes.ddp_demo import RunConfig, launch, train_curve

    done = launch(2, tmp_path, "--steps", "20", "--global-batch", "16", timeout=120)  # chapter 12's launcher
    assert "2 process(es), 20 steps" in done.stdout
    two = json.loads((tmp_path / "loss.json").read_text())
    one = train_curve(RunConfig(steps=20, global_batch=16))  # this process, no DDP, full batches
    assert two["world_size"] == 2 and one["world_size"] == 1
    # the shards really differ in token count, so a per-process mean would not be exact
    assert two["tokens"][0] != two["tokens"][1]
    assert [a + b for a, b in zip(*two["tokens"])] == one["tokens"][0]
    torch.testing.assert_close(torch.tensor(two["loss"]), torch.tensor(one["loss"]), rtol=1e-5, atol=0)
    assert one["loss"][-1] < one["loss"][0]  # and it does learn


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


def _finished(returncode, stderr=""):
    return subprocess.CompletedProcess([], returncode, stdout="", stderr=stderr)


def test_launch_builds_the_torchrun_command_and_checks_its_arguments(tmp_path):
    from tformer.recipes.ddp_demo import launch, launch_command

    cmd = launch_command(2, tmp_path, "--steps", "5")
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "tformer.recipes.ddp_demo", "--steps", "5", "--out", str(tmp_path)]
    with pytest.raises(ValueError, match="nproc=0"):
        launch_command(0, tmp_path)
    with pytest.raises(ValueError, match="retries=-1"):
        launch(2, tmp_path, retries=-1)


def test_launch_runs_again_only_after_the_gloo_teardown_abort(monkeypatch, tmp_path):
    from tformer.recipes import ddp_demo

    def fake(results):
        calls = []

        def run(cmd, **kwargs):
            calls.append(cmd)
            return results[len(calls) - 1]
        monkeypatch.setattr(ddp_demo.subprocess, "run", run)
        return calls

    abort = _finished(-6, f"...\n{ddp_demo.GLOO_TEARDOWN_ABORT}\nSignal 6 (SIGABRT)")
    calls = fake([abort, _finished(0)])
    assert ddp_demo.launch(2, tmp_path).returncode == 0 and len(calls) == 2  # the abort, then a clean run

    calls = fake([abort, abort])
    with pytest.raises(RuntimeError, match="exited with code -6"):
        ddp_demo.launch(2, tmp_path)
    assert len(calls) == 2  # one retry by default, no more

    calls = fake([_finished(1, "ValueError: global_batch=15 must be divisible")])
    with pytest.raises(RuntimeError, match="global_batch=15 must be divisible"):
        ddp_demo.launch(2, tmp_path)
    assert len(calls) == 1  # any other failure is reported at once

    calls = fake([abort])
    with pytest.raises(RuntimeError, match="terminate called"):
        ddp_demo.launch(2, tmp_path, retries=0)
    assert len(calls) == 1
