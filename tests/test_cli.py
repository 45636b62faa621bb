"""The command line: python -m tformer {train,translate,evaluate,bench}, and its error messages."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tformer import data
from tformer.__main__ import main

TINY = ["--d-model", "32", "--num-heads", "2", "--num-layers", "1", "--dim-feedforward", "64",
        "--batch-tokens", "200", "--warmup", "50", "--lr-factor", "1", "--dropout", "0", "--quiet"]


def _tatoeba_file(path, n: int = 400, bad_line: bool = False):
    """A Tatoeba-format file (English<TAB>Chinese<TAB>attribution, BOM, blank lines) from the corpus."""
    pairs = data.load_builtin("train")[:n]
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
