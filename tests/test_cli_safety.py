"""The command line as a hostile tester uses it (issue 14): nothing overwritten by surprise, one writer
per directory, Ctrl-C saves, resume says what it does, honest inputs and outputs, one line per failure."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tformer.__main__ import main
from tformer.data.corpus import load_builtin
from tformer.training.checkpoint import add_manifest, read_json

REPO = Path(__file__).resolve().parents[1]
TINY = ["--d-model", "32", "--num-heads", "2", "--num-layers", "1", "--dim-feedforward", "64",
        "--batch-tokens", "200", "--warmup", "50", "--lr-factor", "1", "--dropout", "0", "--quiet",
        "--threads", "1"]


def _tsv(path: Path, n: int = 200, first: str | None = None) -> Path:
    """A Tatoeba-format file (English<TAB>Chinese<TAB>attribution) of built-in pairs."""
    lines = [f"{p.tgt}\t{p.src}\tCC-BY 2.0 (France) #{i}" for i, p in enumerate(load_builtin("train")[:n])]
    path.write_text("\n".join(([first] if first else []) + lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-epoch run on a TSV file; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("safety")
    tsv = _tsv(root / "pairs.tsv")
    assert main(["train", "--data", str(tsv), "--out", str(root / "ck"), "--epochs", "2", *TINY]) == 0
    return tsv, root / "ck"


def _copy(run, tmp_path) -> Path:
    shutil.copytree(run[1], tmp_path / "ck")
    return tmp_path / "ck"


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------- nothing overwritten by surprise


def test_train_into_a_non_empty_out_is_refused_unless_resume_or_overwrite(run, tmp_path, capsys):
    tsv, _ = run
    ck = _copy(run, tmp_path)
    before = (ck / "model.safetensors").read_bytes()
    assert main(["train", "--data", str(tsv), "--out", str(ck), "--epochs", "1", *TINY]) == 2
    assert "is not empty; add --resume" in _one_line(capsys.readouterr().err)
    assert (ck / "model.safetensors").read_bytes() == before
    assert main(["train", "--data", str(tsv), "--out", str(ck), "--resume", "--overwrite", *TINY]) == 2
    assert "contradict" in _one_line(capsys.readouterr().err)
    assert main(["train", "--data", str(tsv), "--out", str(ck), "--epochs", "1", "--overwrite", *TINY]) == 0
    assert read_json(ck / "state.json")["train"]["epoch"] == 1  # a new one-epoch run replaced it
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work", encoding="utf-8")
    assert main(["train", "--data", str(tsv), "--out", str(other), "--overwrite", *TINY]) == 2
    assert "no tformer checkpoint" in _one_line(capsys.readouterr().err)
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]


def test_resume_without_state_json_refuses_instead_of_restarting_over_the_weights(run, tmp_path, capsys):
    tsv, _ = run
    ck = _copy(run, tmp_path)
    (ck / "state.json").unlink()
    before = (ck / "model.safetensors").read_bytes()
    assert main(["train", "--data", str(tsv), "--out", str(ck), "--resume", "--epochs", "3", *TINY]) == 2
    assert "state.json is missing" in _one_line(capsys.readouterr().err)
    assert (ck / "model.safetensors").read_bytes() == before


def test_out_is_checked_before_any_data_is_read(tmp_path, capsys):
    missing_data = str(tmp_path / "no-such.tsv")
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    cases = {str(tmp_path / "afile"): "exists and is not a directory", "": "--out is empty",
             "/proc/tformer-test-out": "cannot"}
    for out, message in cases.items():
        assert main(["train", "--data", missing_data, "--out", out, *TINY]) == 2
        assert message in _one_line(capsys.readouterr().err), out
    assert not Path("/proc/tformer-test-out").exists()


def test_a_second_writer_fails_at_once_with_the_first_ones_pid(run, tmp_path, capsys):
    tsv, _ = run
    with open(tmp_path / ".ck.lock", "w") as held:  # what a running 'tformer train' holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        t0 = time.perf_counter()
        assert main(["train", "--data", str(tsv), "--out", str(tmp_path / "ck"), *TINY]) == 1
        assert time.perf_counter() - t0 < 5
    assert "another process (pid 4242)" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "ck").exists()


# ----------------------------------------------------------------- resume says what it does


def test_resume_lists_every_flag_that_contradicts_the_checkpoint(run, tmp_path, capsys):
    tsv, _ = run
    ck = _copy(run, tmp_path)
    flags = [a if a != "32" else "64" for a in TINY] + ["--lr-factor", "2", "--tokenizer", "bpe"]
    assert main(["train", "--data", str(tsv), "--out", str(ck), "--resume", "--epochs", "3", *flags]) == 2
    line = _one_line(capsys.readouterr().err)
    for part in ("--d-model 64 (checkpoint: 32)", "--lr-factor 2.0 (checkpoint: 1.0)",
                 "--tokenizer bpe (checkpoint: word)"):
        assert part in line, line


def test_resume_notes_a_changed_epoch_count_and_never_redoes_a_finished_run(run, tmp_path, capsys):
    tsv, _ = run
    ck = _copy(run, tmp_path)
    state = (ck / "state.json").read_bytes()
    assert main(["train", "--data", str(tsv), "--out", str(ck), "--resume", "--epochs", "2", *TINY]) == 0
    assert "already trained 2 epochs; nothing to do" in capsys.readouterr().out
    assert (ck / "state.json").read_bytes() == state
    assert main(["train", "--data", str(tsv), "--out", str(ck), "--resume", "--epochs", "3", *TINY]) == 0
    out = capsys.readouterr().out
    assert "note: --epochs 3 (the run was started with 2)" in out and "finished after" in out
    saved = read_json(ck / "state.json")["train"]
    assert saved["epoch"] == 3 and saved["finished"] is True


def test_resume_on_another_corpus_is_an_error(run, tmp_path, capsys):
    tsv, _ = run
    ck = _copy(run, tmp_path)
    assert main(["train", "--data", "builtin", "--out", str(ck), "--resume", "--epochs", "3", *TINY]) == 2
    assert "holds other training sentences" in _one_line(capsys.readouterr().err)
    shorter = _tsv(tmp_path / "shorter.tsv", n=150)
    assert main(["train", "--data", str(shorter), "--out", str(ck), "--resume", "--epochs", "3", *TINY]) == 2
    assert "holds other training sentences" in _one_line(capsys.readouterr().err)


# ----------------------------------------------------------------- Ctrl-C

CTRL_C = """
import sys
from tformer.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_sigterm_and_sighup_save_the_current_step_print_how_to_resume_and_exit_128_plus_signal(
        run, tmp_path, signum):
    tsv, _ = run
    out = tmp_path / "ck"
    cmd = [sys.executable, "-c", CTRL_C, "train", "--data", str(tsv), "--out", str(out), "--epochs", "500",
           "--no-time-limit", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while not (out / "state.json").exists() and time.monotonic() < deadline:  # the first epoch is saved
        time.sleep(0.2)
    time.sleep(0.5)  # now in the middle of a later epoch
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr  # 130, 143, 129: what a shell reports for each
    line = _one_line(stderr)
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    assert line.startswith(f"tformer train: {how}; saved step") and line.endswith("--resume")
    saved = read_json(out / "state.json")
    step = int(re.search(r"saved step (\d+)", line).group(1))
    assert saved["step"] == step and saved["train"]["finished"] is False
    assert saved["train"]["epoch"] < 500
    if signum != signal.SIGINT:
        return  # the same save as Ctrl-C's, which the SIGINT case resumes below
    # the saved run resumes and finishes
    epochs = saved["train"]["epoch"] + 1
    assert main(["train", "--data", str(tsv), "--out", str(out), "--resume", "--epochs", str(epochs),
                 *TINY]) == 0
    assert read_json(out / "state.json")["train"]["finished"] is True


# ----------------------------------------------------------------- input files


def test_a_wide_first_line_or_a_header_no_longer_decides_the_column_count(tmp_path, capsys):
    for first in ("one\ttwo\tthree\tfour", "English\tChinese"):
        tsv = _tsv(tmp_path / "data.tsv", n=100, first=first)
        shutil.rmtree(tmp_path / "ck", ignore_errors=True)
        assert main(["train", "--data", str(tsv), "--out", str(tmp_path / "ck"), "--epochs", "1",
                     "--skip-bad-lines", *TINY]) == 0
        out = capsys.readouterr().out
        assert "skipped 1 malformed line(s)" in out and "(1 wrong column count)" in out
        assert "train 90, valid 5, test 5" in out  # every good line kept


def test_a_byte_that_is_not_utf8_is_named_or_skipped(tmp_path, capsys):
    tsv = _tsv(tmp_path / "data.tsv", n=100)
    data = tsv.read_bytes().split(b"\n")
    data[6] = b"Caf\xba\t" + data[6].split(b"\t", 1)[1]
    tsv.write_bytes(b"\n".join(data))
    assert main(["train", "--data", str(tsv), "--out", str(tmp_path / "ck"), *TINY]) == 2
    assert "data.tsv, line 7: byte 0xba at byte" in _one_line(capsys.readouterr().err)
    assert main(["train", "--data", str(tsv), "--out", str(tmp_path / "ck"), "--epochs", "1",
                 "--skip-bad-lines", *TINY]) == 0
    assert "skipped 1 malformed line(s)" in capsys.readouterr().out


def test_evaluate_refuses_bad_lines_unless_told_to_skip_and_says_how_many_it_scored(run, tmp_path, capsys):
    tsv, ck = run
    bad = tmp_path / "bad.tsv"
    bad.write_text(tsv.read_text(encoding="utf-8") + "just one column\n", encoding="utf-8")
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(bad)]) == 2
    assert "line 201" in _one_line(capsys.readouterr().err)
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(bad), "--skip-bad-lines"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 malformed line(s)" in out and re.search(r"BLEU = [\d.]+ \(test split of .*, 10 sentences", out)


# ----------------------------------------------------------------- honest outputs


def test_translate_keeps_blank_stdin_lines_and_warns_on_unknown_input(run, monkeypatch, capsys):
    _, ck = run
    monkeypatch.setattr(sys, "stdin", io.StringIO("我买了书\n\n   \n我\n"))
    assert main(["translate", "--checkpoint", str(ck), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.split("\n")
    assert len(lines) == 5 and lines[1] == "" and lines[2] == "" and lines[0] and lines[3] and lines[4] == ""
    assert captured.err == ""
    assert main(["translate", "--checkpoint", str(ck), "--threads", "1", "龘龘龘", "鑫鑫"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().split("\n")) == 2
    assert "warning: 5 of the 5 input characters are unknown" in _one_line(captured.err)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_clip_norm_must_be_positive(tmp_path, capsys, value):
    assert main(["train", "--out", str(tmp_path / "ck"), "--clip-norm", value, *TINY]) == 2
    assert f"clip_norm={float(value)!r} must be a positive float" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "ck").exists()


def test_a_min_freq_that_empties_the_vocabulary_warns(run, tmp_path, capsys):
    tsv, _ = run
    assert main(["train", "--data", str(tsv), "--out", str(tmp_path / "ck"), "--epochs", "1", "--min-freq",
                 "1000", *TINY]) == 0
    err = capsys.readouterr().err
    assert "warning: min_freq=1000 leaves the Chinese vocabulary with only the 4 special tokens" in err
    assert "Traceback" not in err


def test_a_diverging_run_stops_with_one_line_and_keeps_no_bad_weights(run, tmp_path, capsys):
    tsv, _ = run
    assert main(["train", "--data", str(tsv), "--out", str(tmp_path / "ck"), "--epochs", "3", *TINY,
                 "--lr-factor", "1e6"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert re.search(r"the training loss (grew from .* the run diverged|became (nan|inf))", line), line
    if (tmp_path / "ck").exists():  # diverged after the first save: that save is kept, and it is finite
        assert "keeps the last checkpoint saved before it" in line
        assert main(["translate", "--checkpoint", str(tmp_path / "ck"), "我"]) == 0
    else:
        assert "nothing was saved" in line


# ----------------------------------------------------------------- corrupt checkpoints: one line each


def _edit_config(ck: Path, change) -> None:
    cfg = read_json(ck / "config.json")
    change(cfg)
    (ck / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    add_manifest(ck)  # a manifest rewritten to match the edit: the schema alone has to catch it


@pytest.mark.parametrize(("damage", "message"), [
    (lambda c: c.update(model=None), "'model' must be a JSON object"),
    (lambda c: c.update(model="big"), "'model' must be a JSON object"),
    (lambda c: c["model"].pop("d_model"), r"fields \['d_model'\] are missing"),
    (lambda c: c["model"].update(d_model=10**7, num_heads=1), "the sizes are absurd"),
    (lambda c: c["model"].update(num_heads="4"), "num_heads"),
])
def test_a_damaged_config_is_one_clear_line(run, tmp_path, capsys, damage, message):
    ck = _copy(run, tmp_path)
    _edit_config(ck, damage)
    assert main(["translate", "--checkpoint", str(ck), "我"]) == 2
    assert re.search(message, _one_line(capsys.readouterr().err))


def test_flipped_bytes_and_nan_weights_are_refused_by_translate(run, tmp_path, capsys):
    ck = _copy(run, tmp_path)
    path = ck / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    assert main(["translate", "--checkpoint", str(ck), "我"]) == 2
    assert "model.safetensors is damaged" in _one_line(capsys.readouterr().err)
    # NaN weights written with a matching checksum (as a diverged run's save would be)
    from safetensors.torch import load_file, save_file

    shutil.copy(run[1] / "model.safetensors", path)
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name][0] = float("nan")
    save_file(tensors, path, {"step": str(read_json(ck / "state.json")["step"])})
    add_manifest(ck)  # a manifest that matches the NaN file: the finiteness check alone catches it
    assert main(["translate", "--checkpoint", str(ck), "我"]) == 2
    assert f"holds NaN or Inf values in {name}" in _one_line(capsys.readouterr().err)
    assert torch.isnan(load_file(path)[name]).any()
