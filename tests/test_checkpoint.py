"""tformer.training.checkpoint: safetensors + JSON, atomic files, clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import tiny_translation_run

from tformer.data.text import Vocab
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.training.checkpoint import load_checkpoint, read_config, read_json, save_checkpoint
from tformer.training.loop import TrainState, train_epoch
from tformer.training.objectives import LabelSmoothingLoss


def _saved(tmp_path):
    model, opt, sched, batches, sv, tv = tiny_translation_run()
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
        load_checkpoint(tmp_path / "nope", tiny_translation_run()[0])
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
    model, opt, sched, batches, sv, tv = tiny_translation_run()
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
