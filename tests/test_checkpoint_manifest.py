"""Issue 22: a checkpoint is what its manifest lists, read from one save, with the usual permissions;
the averaging of the recipe and of scripts/tatoeba_recipes.py is one function."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest
import torch
from helpers import tiny_translation_run

from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.training.averaging import RecentWeights, average_state_dicts
from tformer.training.checkpoint import (
    ModelFile,
    add_manifest,
    listed,
    load_checkpoint,
    load_model_file,
    read_config,
    read_json,
    save_checkpoint,
    write_json,
)
from tformer.training.loop import TrainState

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One tiny saved checkpoint (with an averaged weights file), copied by each test that changes it."""
    model, opt, sched, _batches, sv, tv = tiny_translation_run()
    directory = tmp_path_factory.mktemp("manifest") / "run"
    save_checkpoint(directory, model, opt, sched, TrainState(step=3),
                    files={"src_vocab.json": sv, "tgt_vocab.json": tv, "averaged.safetensors": ModelFile(model)})
    return directory, model


def _copy(saved, tmp_path):
    shutil.copytree(saved[0], tmp_path / "run")
    return tmp_path / "run"


def _fresh(directory):
    return Transformer(TransformerConfig.from_dict(read_config(directory)["model"]))


def test_a_checkpoint_without_a_manifest_is_refused_with_the_command_that_adds_one(saved, tmp_path):
    ck = _copy(saved, tmp_path)
    state = read_json(ck / "state.json")
    del state["files"], state["sha256"]  # as an older tformer wrote it, or as someone stripped it
    write_json(ck / "state.json", state)
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[-3] ^= 0x10  # without the manifest this flip would load silently
    (ck / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"has no manifest .*add_manifest\(") as error:
        load_checkpoint(ck, _fresh(ck))
    assert str(ck) in str(error.value)
    add_manifest(ck)  # the user's decision to trust these files
    assert load_checkpoint(ck, _fresh(ck)).state.step == 3


def test_a_file_outside_the_manifest_is_never_read(saved, tmp_path):
    ck = _copy(saved, tmp_path)
    model = saved[1]
    assert listed(ck, "averaged.safetensors") and not listed(ck, "notes.txt")
    shutil.copy(ck / "averaged.safetensors", ck / "stray.safetensors")
    with pytest.raises(ValueError, match=r"stray\.safetensors is not one of the files the checkpoint's manifest"):
        load_model_file(ck, "stray.safetensors", _fresh(ck))
    fresh = load_model_file(ck, "averaged.safetensors", _fresh(ck))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_every_file_gets_the_permissions_json_gets(saved, tmp_path):
    old = os.umask(0o022)
    try:
        model, opt, sched, _b, sv, tv = tiny_translation_run()
        save_checkpoint(tmp_path / "run", model, opt, sched, TrainState(step=1), files={"src_vocab.json": sv})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").iterdir()}
    assert modes == {name: 0o644 for name in ("config.json", "state.json", "model.safetensors",
                                              "optimizer.safetensors", "src_vocab.json")}


def test_readers_during_saves_always_get_one_whole_save(tmp_path):
    model, opt, sched, _b, sv, tv = tiny_translation_run()
    ck = tmp_path / "run"

    def save(step: int) -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(step)
        save_checkpoint(ck, model, opt, sched, TrainState(step=step), files={"src_vocab.json": sv})

    save(1)
    errors: list[str] = []
    loads: list[tuple[int, set[float]]] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            fresh = _fresh(ck)
            try:
                step = load_checkpoint(ck, fresh, restore_rng=False).state.step
            except (OSError, ValueError) as error:
                errors.append(str(error))
                continue
            loads.append((step, {float(p.detach().mean()) for p in fresh.parameters()}))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for step in range(2, 14):
            save(step)
    finally:
        done.set()
        thread.join()
    assert errors == []  # never a false "damaged" or "missing"
    assert loads
    for step, values in loads:
        assert values == {float(step)}  # the weights of the very save whose state was read


def test_one_average_for_the_recipe_and_the_script():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([7])}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([9])}
    mean = average_state_dicts([a, b])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0])) and torch.equal(mean["n"], torch.tensor([9]))
    with pytest.raises(ValueError, match="other keys"):
        average_state_dicts([a, {"w": a["w"]}])
    with pytest.raises(ValueError, match="states is empty"):
        average_state_dicts([])
    model = torch.nn.Linear(2, 1, bias=False)
    recent = RecentWeights(2)
    for value in (1.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        recent.record(model, epoch_end=True)
    assert torch.equal(recent.averaged["weight"], average_state_dicts(list(recent.snapshots))["weight"])
    spec = importlib.util.spec_from_file_location("tatoeba_recipes", ROOT / "scripts" / "tatoeba_recipes.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert not hasattr(script, "average_weights") and script.average_state_dicts is average_state_dicts
