"""Checkpoint averaging in the translation recipe, and the decoding a checkpoint is evaluated with."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tformer.__main__ import main
from tformer.data.corpus import builtin_splits
from tformer.recipes.translation import (
    AVERAGED,
    RecentWeights,
    Settings,
    Translator,
    train_translation,
)
from tformer.training.checkpoint import load_model_file

TINY = dict(d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
            dropout=0.1, max_len=64)


def _splits():
    s = builtin_splits()
    return {"train": s["train"][:64], "valid": s["valid"][:16], "test": s["test"][:8]}


def _settings(**changes) -> Settings:
    return Settings(model=TINY, batch_tokens=200, warmup=4, max_minutes=None, **changes)


def test_recent_weights_average_hand_computed():
    model = torch.nn.Linear(1, 1, bias=False)
    recent = RecentWeights(2)

    def save(value: float, epoch_end: bool) -> float:
        with torch.no_grad():
            model.weight.fill_(value)
        return recent.record(model, epoch_end)["weight"].item()

    assert save(1.0, True) == 1.0  # one state so far
    assert save(2.0, True) == 1.5  # epoch ends 1 and 2
    assert save(3.0, True) == 2.5  # the last two epoch ends
    assert save(5.0, False) == 4.0  # a stop in mid-epoch: the last epoch end (3) and the current 5
    assert [s["weight"].item() for s in recent.snapshots] == [2.0, 3.0]  # the stop is not kept
    assert RecentWeights(1).record(model, True)["weight"].item() == 5.0  # k = 1: the last weights
    with pytest.raises(ValueError, match="average=0"):
        RecentWeights(0)


def test_training_saves_the_mean_of_the_last_epochs_and_translates_with_it(tmp_path):
    torch.manual_seed(0)
    translator, state = train_translation(_splits(), tmp_path, _settings(epochs=4, average=3),
                                          progress=False, log=None, device="cpu")
    assert state.finished and state.epoch == 4
    recent = [load_file(str(tmp_path / f"recent-{i}.safetensors")) for i in range(3)]  # epochs 2, 3, 4
    assert not (tmp_path / "recent-3.safetensors").exists()
    averaged = load_file(str(tmp_path / AVERAGED))
    name = "encoder.layers.0.ffn.linear1.weight"
    assert torch.allclose(averaged[name], sum(r[name] for r in recent) / 3, atol=1e-6)
    assert not torch.allclose(averaged[name], recent[-1][name])  # the mean is not the last weights
    loaded = Translator.from_checkpoint(tmp_path, device="cpu")
    last = Translator.from_checkpoint(tmp_path, device="cpu", averaged=False)
    assert torch.allclose(dict(loaded.model.named_parameters())[name], averaged[name])
    assert torch.allclose(dict(last.model.named_parameters())[name], recent[-1][name])
    assert torch.allclose(dict(translator.model.named_parameters())[name], averaged[name])  # the run's own


def test_a_resumed_run_averages_exactly_what_an_uninterrupted_one_does(tmp_path):
    torch.manual_seed(0)
    train_translation(_splits(), tmp_path / "a", _settings(epochs=4, average=3), progress=False, log=None,
                      device="cpu")
    torch.manual_seed(0)
    train_translation(_splits(), tmp_path / "b", _settings(epochs=2, average=3), progress=False, log=None,
                      device="cpu")
    train_translation(_splits(), tmp_path / "b", _settings(epochs=4, average=3), resume=True, progress=False,
                      log=None, device="cpu")
    a, b = (load_file(str(tmp_path / run / AVERAGED)) for run in ("a", "b"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_a_damaged_averaged_file_is_named(tmp_path):
    torch.manual_seed(0)
    translator, _ = train_translation(_splits(), tmp_path, _settings(epochs=2, average=2), progress=False,
                                      log=None, device="cpu")
    with open(tmp_path / AVERAGED, "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00" * 8)
    with pytest.raises(ValueError, match="averaged.safetensors is damaged"):
        Translator.from_checkpoint(tmp_path, device="cpu")
    with pytest.raises(FileNotFoundError, match="nope.safetensors is missing"):
        load_model_file(tmp_path, "nope.safetensors", translator.model)


def test_evaluate_decodes_as_the_checkpoint_was_trained_to_unless_told(tmp_path, capsys):
    torch.manual_seed(0)
    train_translation(builtin_splits(), tmp_path, _settings(epochs=1, beam_size=3, alpha=1.0), progress=False,
                      log=None, device="cpu")
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--limit", "6", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("chrF = ")
    assert lines[-1].startswith("BLEU = ") and "beam 3, alpha 1," in lines[-1] and "last weights" in lines[-1]
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--limit", "6", "--beam", "1", "--threads", "1"]) == 0
    assert "greedy" in capsys.readouterr().out.strip().splitlines()[-1]
    with pytest.raises(SystemExit) as bad:  # argparse: usage error, status 2
        main(["evaluate", "--checkpoint", str(tmp_path), "--alpha", "-1"])
    assert bad.value.code == 2 and "--alpha: expected a length penalty in [0, 10), got -1.0" in capsys.readouterr().err


def test_settings_check_the_averaging_and_decoding_fields():
    with pytest.raises(ValueError, match="average=0"):
        Settings(average=0)
    with pytest.raises(ValueError, match="beam_size=0"):
        Settings(beam_size=0)
    with pytest.raises(ValueError, match="alpha=-0.5"):
        Settings(alpha=-0.5)
