"""scripts/train_tatoeba_model.py --set and scripts/tatoeba_runs.py, the log behind chapter 8's
decisions: what a record holds, that its scores are sacrebleu's of its own translations, and that
``--epochs`` translates with the mean of those epochs' weights."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import sacrebleu

from tformer.recipes.translation import Translator, load_data

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def test_set_splits_recipe_and_model_fields_and_reads_numbers():
    train = _script("train_tatoeba_model")
    assert train.parse_changes(["cooldown=0.2", "dropout=0.3", "seed=1", "precision=bf16", "norm_first=true"]) == {
        "cooldown": 0.2, "seed": 1, "precision": "bf16", "model": {"dropout": 0.3, "norm_first": True}}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        train.parse_changes(["cooldown"])


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A 30-step run of the recipe (one setting changed), as `train_tatoeba_model.py` leaves it."""
    out = tmp_path_factory.mktemp("run") / "run"
    train = _script("train_tatoeba_model")  # a fresh module: the patch below stays in it
    full = train.train_translation
    train.train_translation = lambda *args, **kwargs: full(*args, **{**kwargs, "max_steps": 30})
    assert train.main([str(out), "--set", "average=2", "--set", "dim_feedforward=256",
                       "--set", "bpe_vocab_size=600"]) == 0
    return out


def test_set_bpe_vocab_size_changes_the_tokenizer_not_the_settings(short_run):
    config = json.loads((short_run / "config.json").read_text(encoding="utf-8"))
    assert config["tokenizer"] == "bpe" and config["model"]["tgt_vocab_size"] == 600
    assert "bpe_vocab_size" not in config["train"]
    assert len(json.loads((short_run / "tgt_vocab.json").read_text(encoding="utf-8"))["tokens"]) == 600


def test_record_keeps_the_settings_speed_and_translations(short_run, tmp_path, monkeypatch):
    runs = _script("tatoeba_runs")
    valid = load_data("tatoeba")["valid"][:12]
    monkeypatch.setattr(runs, "load_data", lambda source: {"valid": valid})
    monkeypatch.setattr(runs, "LOG", tmp_path / "runs.json.gz")
    rec = runs.record("short", short_run, ["average=2", "dim_feedforward=256", "bpe_vocab_size=600"])
    assert rec["settings"]["average"] == 2 and rec["settings"]["model"]["dim_feedforward"] == 256
    assert rec["steps"] == 30 and rec["decoding"] == {"beam": 4, "alpha": 1.5, "average": 2, "epochs": None}
    # the record's translations are the checkpoint's, decoded as `evaluate` would
    want = Translator.from_checkpoint(short_run, device="cpu").translate([p.src for p in valid], beam_size=4, alpha=1.5)
    assert rec["hyps"] == want
    assert rec["bleu"] == round(sacrebleu.corpus_bleu(want, [[p.tgt for p in valid]]).score, 2)
    # a second record of the same name replaces the first; the file is gzip'd JSON, bytes reproducible
    first = (tmp_path / "runs.json.gz").read_bytes()
    runs.record("short", short_run, ["average=2", "dim_feedforward=256", "bpe_vocab_size=600"])
    assert (tmp_path / "runs.json.gz").read_bytes() == first
    with gzip.open(tmp_path / "runs.json.gz", "rt", encoding="utf-8") as f:
        assert [r["name"] for r in json.load(f)] == ["short"]


def test_record_of_epochs_translates_with_their_mean(short_run, tmp_path, monkeypatch):
    runs = _script("tatoeba_runs")
    valid = load_data("tatoeba")["valid"][:8]
    monkeypatch.setattr(runs, "load_data", lambda source: {"valid": valid})
    monkeypatch.setattr(runs, "LOG", tmp_path / "runs.json.gz")
    epochs = short_run / "epochs"
    for i in (1, 2):  # two copies of the last weights: their mean is those weights
        shutil.copy(short_run / "model.safetensors", epochs / f"epoch{i}.safetensors")
    minutes = json.loads((epochs / "minutes.json").read_text())
    (epochs / "minutes.json").write_text(json.dumps({**minutes, "epoch_minutes": [0.1, 0.2]}))
    rec = runs.record("two", short_run, [], epochs=[1, 2])
    last = Translator.from_checkpoint(short_run, device="cpu", averaged=False)
    assert rec["hyps"] == last.translate([p.src for p in valid], beam_size=4, alpha=1.5)
    assert rec["steps"] is None and rec["epochs_done"] == 2 and rec["train_minutes"] == 0.2
    assert rec["decoding"]["average"] == 2 and rec["decoding"]["epochs"] == [1, 2]
    with pytest.raises(SystemExit, match="no run named 'nope'"):
        runs.compare("two", "nope")
