"""The command line: python -m tformer {train,translate,evaluate,bench}, and its error messages."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tformer.__main__ import main
from tformer.data.corpus import load_builtin
from tformer.data.text import BPETokenizer

TINY = ["--d-model", "32", "--num-heads", "2", "--num-layers", "1", "--dim-feedforward", "64",
        "--batch-tokens", "200", "--warmup", "50", "--lr-factor", "1", "--dropout", "0", "--quiet"]


def _tatoeba_file(path, n: int = 400, bad_line: bool = False):
    """A Tatoeba-format file (English<TAB>Chinese<TAB>attribution, BOM, blank lines) from the corpus."""
    pairs = load_builtin("train")[:n]
    lines = [f"{p.tgt}\t{p.src}\tCC-BY 2.0 (France) Attribution: tformer built-in #{i}"
             for i, p in enumerate(pairs)]
    if bad_line:
        lines.insert(5, "only one column here")
    path.write_text("\ufeff" + "\n".join(lines[:100]) + "\n\n" + "\n".join(lines[100:]) + "\n\n",
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train on a never-seen Tatoeba-format file for a few epochs (a few seconds)."""
    root = tmp_path_factory.mktemp("cli")
    tsv = _tatoeba_file(root / "cmn.txt")
    out = root / "ckpt"
    code = main(["train", "--data", str(tsv), "--out", str(out), "--epochs", "12", *TINY])
    assert code == 0
    return tsv, out


def test_train_writes_a_complete_checkpoint(trained):
    _, out = trained
    names = {p.name for p in out.iterdir()}
    assert names == {"config.json", "model.safetensors", "optimizer.safetensors", "src_vocab.json",
                     "tgt_vocab.json", "state.json"}


def test_evaluate_on_held_out_lines_of_a_tatoeba_file_gives_bleu_above_zero(trained, capsys):
    tsv, out = trained
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(tsv)]) == 0
    text = capsys.readouterr().out
    score = float(re.search(r"BLEU = ([\d.]+)", text).group(1))
    assert score > 0, text
    assert "test split" in text and "20 sentences" in text  # 400 lines → 5% held out for test


def test_translate_prints_one_line_per_sentence_and_handles_unknown_characters(trained, capsys):
    _, out = trained
    assert main(["translate", "--checkpoint", str(out), "--beam", "3", "--threads", "1", "我买了书", "龘龘"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 2


def test_resume_continues_from_the_saved_step(trained, tmp_path, capsys):
    tsv, out = trained
    import shutil

    shutil.copytree(out, tmp_path / "ck")
    assert main(["train", "--data", str(tsv), "--out", str(tmp_path / "ck"), "--epochs", "13",
                 "--resume", *TINY]) == 0
    text = capsys.readouterr().out
    assert "resuming from" in text and "epoch 13/13" in text and "epoch 12/13" not in text


@pytest.mark.parametrize("command", ["train", "translate", "evaluate"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--" in capsys.readouterr().out


def test_max_minutes_zero_is_refused_with_a_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path), "--max-minutes", "0"])
    assert exit_info.value.code == 2
    assert "--max-minutes must be > 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_malformed_tsv_line_is_named_or_skipped(tmp_path, capsys):
    tsv = _tatoeba_file(tmp_path / "bad.txt", n=40, bad_line=True)
    assert main(["train", "--data", str(tsv), "--out", str(tmp_path / "ck"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "line 6" in err and "bad.txt" in err
    assert not (tmp_path / "ck").exists()  # nothing written
    code = main(["train", "--data", str(tsv), "--out", str(tmp_path / "ck2"), "--epochs", "1",
                 "--skip-bad-lines", *TINY])
    assert code == 0 and "skipped 1 malformed line" in capsys.readouterr().out


def test_missing_data_file_and_missing_checkpoint_are_clear_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["translate", "--checkpoint", str(tmp_path / "nope"), "我"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_corrupt_checkpoint_and_empty_sentence_are_clear_errors(trained, tmp_path, capsys):
    import shutil

    _, out = trained
    assert main(["translate", "--checkpoint", str(out), ""]) == 2
    assert "is empty" in capsys.readouterr().err
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 10)
    assert main(["translate", "--checkpoint", str(bad), "我"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_too_long_sentence_is_a_clear_error(trained, capsys):
    _, out = trained
    assert main(["translate", "--checkpoint", str(out), "我" * 500]) == 2
    assert "max_len" in capsys.readouterr().err


def test_bench_delegates_to_tformer_benchmarks(monkeypatch):
    import tformer.benchmarks

    seen = []
    monkeypatch.setattr(tformer.benchmarks, "main", lambda argv: seen.append(argv) or 0)
    assert main(["bench", "--quick", "--only", "translation"]) == 0
    assert seen == [["--quick", "--only", "translation"]]


def test_python_dash_m_tformer_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "tformer", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "train" in result.stdout and "translate" in result.stdout


# ---------------------------------------------------------------- --tokenizer bpe (issue 4)

BPE = ["--tokenizer", "bpe", "--bpe-vocab-size", "300", "--threads", "1"]


@pytest.fixture(scope="module")
def trained_bpe(tmp_path_factory):
    """Train with a BPE target tokenizer on a Tatoeba-format file (about a second with 1 thread)."""
    root = tmp_path_factory.mktemp("cli_bpe")
    tsv = _tatoeba_file(root / "cmn.txt")
    out = root / "ckpt"
    assert main(["train", "--data", str(tsv), "--out", str(out), "--epochs", "8", *BPE, *TINY]) == 0
    return tsv, out


def test_word_tokenizer_stays_the_default_and_writes_no_tokenizer_file(trained):
    from tformer.training.checkpoint import read_json

    _, out = trained
    assert read_json(out / "config.json")["tokenizer"] == "word"
    assert not (out / "tgt_tokenizer.json").exists()


def test_bpe_checkpoint_saves_the_tokenizer_and_config_names_it(trained_bpe, tmp_path):
    from tformer.training.checkpoint import read_json

    tsv, out = trained_bpe
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "optimizer.safetensors",
                                               "src_vocab.json", "tgt_vocab.json", "state.json",
                                               "tgt_tokenizer.json"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing behind
    config = read_json(out / "config.json")
    assert config["tokenizer"] == "bpe"
    # round trip: the saved tokenizer reloads with the ids of tgt_vocab.json and saves back unchanged
    tok = BPETokenizer.load(out / "tgt_tokenizer.json")
    assert tok.vocab.to_dict() == read_json(out / "tgt_vocab.json")
    assert 50 < len(tok) <= 300
    tok.save(tmp_path / "again.json")
    assert read_json(tmp_path / "again.json") == read_json(out / "tgt_tokenizer.json")
    sentence = "My friend's cat didn't eat the cake."
    pieces = tok.tokenize(sentence)
    assert "▁" in "".join(pieces)  # word starts are marked, so spaces come back exactly
    assert tok.detokenize(pieces) == sentence


def test_bpe_checkpoint_translates_and_evaluates_on_detokenized_text(trained_bpe, capsys):
    from tformer.recipes.translation import Translator

    tsv, out = trained_bpe
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(tsv)]) == 0
    text = capsys.readouterr().out
    assert float(re.search(r"BLEU = ([\d.]+)", text).group(1)) > 0, text
    assert main(["translate", "--checkpoint", str(out), "我买了书", "龘龘"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 2
    translator = Translator.from_checkpoint(out, device="cpu")
    assert translator.tokenizers.kind == "bpe" and translator.tokenizers.bpe is not None
    hyps = translator.translate([p.src for p in load_builtin("train")[:20]])
    for hyp in hyps + lines:  # text, not pieces: no word-start marks, single spaces
        assert "▁" not in hyp and "  " not in hyp and hyp == hyp.strip()
    assert any(" " in hyp for hyp in hyps)
    _, src_tokens, tgt_tokens = translator.alignment("我买了书")
    assert src_tokens == ["我", "买", "了", "书"] and tgt_tokens[-1] == "<eos>"


def test_resume_keeps_the_bpe_tokenizer_of_the_checkpoint(trained_bpe, tmp_path, capsys):
    import shutil

    from tformer.training.checkpoint import read_json

    tsv, out = trained_bpe
    shutil.copytree(out, tmp_path / "ck")
    before = read_json(out / "tgt_tokenizer.json")
    # --tokenizer is left at its default ('word'): the checkpoint's BPE tokenizer wins
    assert main(["train", "--data", str(tsv), "--out", str(tmp_path / "ck"), "--epochs", "9", "--resume",
                 "--threads", "1", *TINY]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert read_json(tmp_path / "ck" / "config.json")["tokenizer"] == "bpe"
    assert read_json(tmp_path / "ck" / "tgt_tokenizer.json") == before


def test_missing_or_corrupt_bpe_tokenizer_file_is_a_clear_error(trained_bpe, tmp_path, capsys):
    import shutil

    tsv, out = trained_bpe
    ck = tmp_path / "ck"
    shutil.copytree(out, ck)
    (ck / "tgt_tokenizer.json").unlink()
    assert main(["translate", "--checkpoint", str(ck), "我"]) == 2
    err = capsys.readouterr().err
    assert "tgt_tokenizer.json" in err and "missing" in err
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(tsv)]) == 2
    assert "tgt_tokenizer.json" in capsys.readouterr().err
    (ck / "tgt_tokenizer.json").write_text("{not json", encoding="utf-8")
    assert main(["translate", "--checkpoint", str(ck), "我"]) == 2
    err = capsys.readouterr().err
    assert "tgt_tokenizer.json" in err and "corrupt" in err


def test_bad_tokenizer_arguments_are_refused(tmp_path, capsys):
    from tformer.recipes.translation import Tokenizers, train_translation

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "o"), "--tokenizer", "sentencepiece"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "o"), "--tokenizer", "bpe", "--bpe-vocab-size", "0"])
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="tokenizer='char' must be one of"):
        train_translation({"train": []}, None, tokenizer="char")
    with pytest.raises(ValueError, match="bpe_vocab_size=4"):
        Tokenizers.build(load_builtin("train")[:10], "bpe", bpe_vocab_size=4)
    assert not (tmp_path / "o").exists()


def test_default_threads_follow_the_idle_cores(monkeypatch):
    import os

    import torch

    from tformer.__main__ import _busy_cores, _idle_threads

    default = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _idle_threads(busy=0.05) == min(default, 2)  # quiet machine
    assert _idle_threads(busy=1.1) == 1  # one core busy elsewhere
    assert _idle_threads(busy=7.0) == 1  # overloaded: never below 1
    monkeypatch.undo()
    busy = _busy_cores(window=0.05)
    if Path("/proc/stat").exists():
        assert 0.0 <= busy <= os.cpu_count() + 1e-9


def test_busy_cores_falls_back_to_the_load_average(monkeypatch):
    import builtins
    import os

    from tformer.__main__ import _busy_cores

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path) == "/proc/stat":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert _busy_cores(window=0.0) == 1.5
    monkeypatch.delattr(os, "getloadavg")
    assert _busy_cores(window=0.0) is None


