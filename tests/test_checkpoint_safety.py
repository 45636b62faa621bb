"""A checkpoint directory that nothing can lose (issue 14): saved as a whole, checked on load,
locked while written; a training loop that stops on divergence and saves on Ctrl-C."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import tiny_translation_run

from tformer.data.sources import parse_tsv_lines, read_tsv_pairs
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.recipes.translation import _load
from tformer.training.checkpoint import (
    CheckpointLocked,
    add_manifest,
    load_checkpoint,
    lock_directory,
    read_config,
    read_json,
    recover,
    save_checkpoint,
)
from tformer.training.loop import TrainingInterrupted, TrainState, fit, train_epoch
from tformer.training.objectives import LabelSmoothingLoss

REPO = Path(__file__).resolve().parents[1]


def _saved(directory, step: int = 2):
    model, opt, sched, batches, sv, tv = tiny_translation_run()
    state = TrainState()
    train_epoch(model, batches(0)[:2], LabelSmoothingLoss(), opt, sched, state=state, progress=False)
    state.step = step
    save_checkpoint(directory, model, opt, sched, state, files={"src_vocab.json": sv, "tgt_vocab.json": tv})
    return model


def _fresh(directory):
    return Transformer(TransformerConfig.from_dict(read_config(directory)["model"]))


def _siblings(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory.parent) if n.startswith(f".{directory.name}."))


# ----------------------------------------------------------------- a kill between any two file operations

KILL_SCRIPT = textwrap.dedent(r'''
    import json, os, shutil, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from helpers import tiny_translation_run
    import tformer.training.checkpoint as ck
    from tformer.nn.transformer import Transformer, TransformerConfig
    from tformer.training.loop import TrainState

    root = sys.argv[1]
    ckdir = os.path.join(root, "ck")
    model, opt, sched, batches, sv, tv = tiny_translation_run()
    files = {"src_vocab.json": sv, "tgt_vocab.json": tv}

    def save(step):  # the weights say which save they come from: every one equals the step
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(step)
        ck.save_checkpoint(ckdir, model, opt, sched, TrainState(step=step), files=files)

    # every file operation a save performs goes through one of these names (the os and shutil
    # functions everywhere; the package's own helpers in each of its modules that calls them)
    import tformer.training.checkpoint.directory as ck_directory
    import tformer.training.checkpoint.files as ck_files
    import tformer.training.checkpoint.resume as ck_resume
    names = [(ck.os, "mkdir"), (ck.os, "rename"), (ck.os, "replace"), (ck.os, "chmod"), (ck.os, "link"),
             (ck.shutil, "rmtree")]
    for module in (ck, ck_files, ck_directory, ck_resume):
        names += [(module, n) for n in ("_fsync", "save_model", "save_file") if hasattr(module, n)]
        names.append((module, "open"))
    real = {(m, n): open if n == "open" else getattr(m, n) for m, n in names}
    count = [0]
    kill_at = [None, None]

    def wrap(key):
        def op(*args, **kwargs):
            if kill_at[0] == count[0]:
                os.kill(os.getpid(), kill_at[1])
            count[0] += 1
            return real[key](*args, **kwargs)
        return op

    def install():
        for m, n in names:
            setattr(m, n, wrap((m, n)))

    def uninstall():
        for m, n in names:
            setattr(m, n, real[(m, n)])

    save(1)
    install()
    save(2)  # counts the operations of one save over an existing checkpoint
    uninstall()
    total = count[0]
    results = []
    for sig in (signal.SIGKILL, signal.SIGINT):
        for k in range(total + 1):  # before operation k; k == total is after the last one
            shutil.rmtree(ckdir)
            save(1)
            pid = os.fork()
            if pid == 0:
                count[0], kill_at[:] = 0, [k, sig]
                install()
                try:
                    save(2)
                    if k == total:
                        os.kill(os.getpid(), sig)
                except KeyboardInterrupt:
                    os._exit(130)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            try:
                cfg = ck.read_config(ckdir)
                fresh = Transformer(TransformerConfig.from_dict(cfg["model"]))
                state = ck.load_checkpoint(ckdir, fresh).state
                values = {float(p.detach().float().mean()) for p in fresh.parameters()}
                error = None
            except Exception as e:
                state, values, error = None, set(), f"{type(e).__name__}: {e}"
            left = sorted(n for n in os.listdir(root) if n.startswith(".ck."))
            results.append({"signal": int(sig), "gap": k, "status": status,
                            "step": state.step if state else None, "weights": sorted(values),
                            "error": error, "leftovers": left})
    print(json.dumps({"operations": total, "results": results}))
''')


def test_a_kill_or_ctrl_c_between_any_two_file_operations_of_a_save_leaves_a_loadable_checkpoint(tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT, encoding="utf-8")
    root = tmp_path / "runs"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), str(root), str(REPO / "tests")], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["operations"] >= 15  # mkdir, 6 files written and flushed, 2 renames, rmtree, ...
    results = report["results"]
    assert len(results) == 2 * (report["operations"] + 1)
    for r in results:
        where = f"signal {r['signal']} before operation {r['gap']}"
        assert r["error"] is None, where + ": " + r["error"]
        assert r["step"] in (1, 2), where
        assert r["weights"] == [float(r["step"])], where  # the weights of that very save, not a mix
        assert r["leftovers"] == [], where  # the reader cleaned what the killed writer left
    kills = [r for r in results if r["signal"] == signal.SIGKILL]
    assert kills[0]["step"] == 1 and kills[-1]["step"] == 2
    assert {r["step"] for r in kills} == {1, 2}
    interrupts = [r for r in results if r["signal"] == signal.SIGINT]
    assert all(r["status"] != 0 for r in interrupts[:-1])  # Ctrl-C did reach the save each time


# ----------------------------------------------------------------- the directory as a whole


def test_a_save_replaces_the_directory_and_keeps_files_that_are_not_the_checkpoints(tmp_path):
    ck = tmp_path / "run"
    _saved(ck, step=1)
    (ck / "notes.txt").write_text("my notes", encoding="utf-8")
    (ck / ".model.safetensors.x1y2.tmp").write_bytes(b"half")  # what an older version's killed write left
    _saved(ck, step=7)
    assert (ck / "notes.txt").read_text(encoding="utf-8") == "my notes"
    assert not (ck / ".model.safetensors.x1y2.tmp").exists()
    assert read_json(ck / "state.json")["step"] == 7
    assert set(read_json(ck / "state.json")["files"]) == {
        "config.json", "model.safetensors", "optimizer.safetensors", "src_vocab.json", "tgt_vocab.json"}
    assert _siblings(ck) == []  # no temporary or old directory remains


def test_a_directory_that_holds_something_else_is_never_replaced(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(FileExistsError, match="holds no checkpoint"):
        _saved(tmp_path / "photos")
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    with pytest.raises(FileExistsError, match="is a file"):
        _saved(tmp_path / "afile")
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"\xff\xd8"


def test_recover_puts_back_the_old_checkpoint_a_killed_save_had_moved_aside(tmp_path):
    ck = tmp_path / "run"
    _saved(ck, step=3)
    dead = 2**22 + 12345  # above Linux's default pid_max, so no process has it
    os.rename(ck, tmp_path / f".run.old-{dead}-00ff")
    (tmp_path / f".run.tmp-{dead}-abcd").mkdir()
    (tmp_path / f".run.tmp-{dead}-abcd" / "model.safetensors").write_bytes(b"half")
    assert load_checkpoint(ck, _fresh(ck)).state.step == 3  # the reader recovers by itself
    assert _siblings(ck) == []
    assert recover(ck) == ck


def test_a_flipped_byte_is_named_and_the_file_refused(tmp_path):
    _saved(tmp_path / "run")
    path = tmp_path / "run" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside a tensor: safetensors alone would load it without a word
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors is damaged: its sha256 differs"):
        load_checkpoint(tmp_path / "run", _fresh(tmp_path / "run"))
    vocab = tmp_path / "run" / "tgt_vocab.json"
    path.write_bytes(bytes(data[:-5]) + bytes([data[-5] ^ 0x01]) + bytes(data[-4:]))  # repaired
    vocab.write_text(vocab.read_text(encoding="utf-8").replace("<unk>", "<UNK>"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tgt_vocab\.json is damaged"):
        load_checkpoint(tmp_path / "run", _fresh(tmp_path / "run"))


def test_an_edited_state_json_is_detected(tmp_path):
    _saved(tmp_path / "run")
    path = tmp_path / "run" / "state.json"
    state = read_json(path)
    state["train"]["epoch"] = 5
    path.write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(ValueError, match=r"state\.json is damaged"):
        load_checkpoint(tmp_path / "run", _fresh(tmp_path / "run"))


def test_nan_or_inf_weights_are_refused_on_load(tmp_path):
    model, opt, sched, _, sv, tv = tiny_translation_run()
    with torch.no_grad():
        model.encoder.layers[0].ffn.linear1.weight[0, 0] = math.nan
    save_checkpoint(tmp_path / "run", model, opt, sched, TrainState())
    with pytest.raises(ValueError, match=r"NaN or Inf values in encoder\.layers\.0\.ffn\.linear1\.weight"):
        load_checkpoint(tmp_path / "run", _fresh(tmp_path / "run"))


@pytest.mark.parametrize(("model_entry", "message"), [
    (None, "'model' must be a JSON object"),
    ("d_model=32", "'model' must be a JSON object"),
    ({"d_model": 2**40}, r"d_model=1099511627776 is out of range"),
    ({"d_model": [32]}, "d_model must be a number, a string or a bool"),
    ({"dropout": math.inf}, "dropout=inf must be a finite number"),
])
def test_config_json_is_checked_before_anything_is_built(tmp_path, model_entry, message):
    _saved(tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    cfg = read_json(path)
    cfg["model"] = model_entry if not isinstance(model_entry, dict) else {**cfg["model"], **model_entry}
    path.write_text(json.dumps(cfg), encoding="utf-8")
    add_manifest(tmp_path / "run")  # a manifest rewritten to match: the schema alone must catch it
    with pytest.raises(ValueError, match=message):
        read_config(tmp_path / "run")


def test_a_missing_field_or_an_absurd_size_is_refused_before_allocation(tmp_path):
    _saved(tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    cfg = read_json(path)
    good = dict(cfg["model"])
    del cfg["model"]["d_model"]  # would silently become TransformerConfig's default of 512
    path.write_text(json.dumps(cfg), encoding="utf-8")
    add_manifest(tmp_path / "run")  # re-signed: the checks of the config itself must catch it
    with pytest.raises(ValueError, match=r"fields \['d_model'\] are missing"):
        _load(tmp_path / "run")
    cfg["model"] = {**good, "d_model": 65536, "num_heads": 1, "dim_feedforward": 10**6}
    path.write_text(json.dumps(cfg), encoding="utf-8")
    add_manifest(tmp_path / "run")
    with pytest.raises(ValueError, match="the sizes are absurd"):
        _load(tmp_path / "run")  # a 1e11-parameter model would take minutes and 400 GB to allocate


# ----------------------------------------------------------------- one writer at a time

LOCK_SCRIPT = textwrap.dedent('''
    import sys
    from tformer.training.checkpoint import CheckpointLocked, lock_directory
    try:
        with lock_directory(sys.argv[1]):
            print("locked")
    except CheckpointLocked as error:
        print(error)
''')


def test_a_second_writer_fails_at_once_naming_the_first_ones_pid(tmp_path):
    with lock_directory(tmp_path / "run"), lock_directory(tmp_path / "run"):  # re-entrant in one process
        done = subprocess.run([sys.executable, "-c", LOCK_SCRIPT, str(tmp_path / "run")], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert f"is being written by another process (pid {os.getpid()})" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-c", LOCK_SCRIPT, str(tmp_path / "run")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.strip() == "locked"
    assert issubclass(CheckpointLocked, RuntimeError)


# ----------------------------------------------------------------- the loop: divergence, Ctrl-C, finished


def _fit(model, opt, sched, batches, **kw):
    return fit(model, batches, None, epochs=kw.pop("epochs", 1), loss_fn=LabelSmoothingLoss(), optimizer=opt,
               scheduler=sched, progress=False, log=None, **kw)


def test_a_loss_that_grows_tenfold_stops_the_run_before_the_step():
    model, opt, _, batches, *_ = tiny_translation_run()
    for group in opt.param_groups:
        group["lr"] = 1e4  # far too high: the loss shoots up within a few steps
    with pytest.raises(FloatingPointError, match="diverged|became (nan|inf)"):
        _fit(model, opt, None, batches, epochs=50, clip_norm=None)


def test_a_nan_loss_stops_the_run_with_the_step():
    model, opt, sched, batches, *_ = tiny_translation_run()
    with torch.no_grad():
        model.generator.bias[0] = math.nan
    with pytest.raises(FloatingPointError, match="the training loss became nan at step 1"):
        _fit(model, opt, sched, batches)


class _CtrlCAt:
    """Batches that press Ctrl-C (send SIGINT to this process) while batch ``at`` is drawn."""

    def __init__(self, batches, at):
        self.batches, self.at = batches, at

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        if i == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.batches[i]


def test_ctrl_c_stops_at_a_step_boundary_saves_and_raises():
    model, opt, sched, batches, *_ = tiny_translation_run()
    saved = []
    with pytest.raises(TrainingInterrupted) as info:
        _fit(model, opt, sched, lambda epoch: _CtrlCAt(batches(epoch), 3), epochs=2,
             on_checkpoint=lambda st: saved.append((st.step, st.batch_in_epoch, st.finished)))
    assert info.value.state.step == 3 and saved == [(3, 3, False)]
    assert isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_finished_is_recorded_only_when_the_last_epoch_is_done():
    model, opt, sched, batches, *_ = tiny_translation_run()
    state = _fit(model, opt, sched, batches, epochs=1)
    assert state.finished and state.epoch == 1
    # resumed with more epochs and a limit that stops it early: no longer finished
    state = _fit(model, opt, sched, batches, epochs=3, state=state, max_steps=state.step + 2)
    assert not state.finished and state.epoch == 1 and state.batch_in_epoch == 2


# ----------------------------------------------------------------- input files


def test_the_column_count_is_the_majority_not_the_first_line(tmp_path):
    good = [f"Sentence {i}.\t句子{i}。\tCC-BY #{i}" for i in range(20)]
    with pytest.warns(UserWarning, match="skipped 1 malformed line"):
        pairs = parse_tsv_lines(["a\tb\tc\td"] + good, "x.tsv", errors="skip")
    assert len(pairs) == 20 and pairs.skipped_by_reason == {"wrong column count": 1}
    with pytest.raises(ValueError, match=r"x\.tsv, line 1: expected 3 tab-separated columns, got 4"):
        parse_tsv_lines(["a\tb\tc\td"] + good, "x.tsv")
    with pytest.warns(UserWarning):
        header = parse_tsv_lines(["English\tChinese"] + good, "x.tsv", errors="skip")
    assert len(header) == 20 and header.skipped == 1
    with pytest.warns(UserWarning, match="20 wrong column count"):
        wide = parse_tsv_lines(["a\tb\tc\td"] + good, "x.tsv", errors="skip", columns=4)
    assert len(wide) == 1 and wide.skipped == 20
    with pytest.raises(ValueError, match="columns=1 must be an int >= 2"):
        parse_tsv_lines(good, "x.tsv", columns=1)


def test_a_byte_that_is_not_utf8_is_named_by_file_line_and_offset_or_skipped(tmp_path):
    f = tmp_path / "latin1.tsv"
    lines = ["Hi.\t嗨。\tA\n".encode(), b"Caf\xe9.\t" + "咖啡。\tB\n".encode(), b"Go.\t\tC\n",
             "Run.\t跑。\tD\n".encode()]
    f.write_bytes(b"".join(lines))
    offset = len(lines[0]) + 3  # "Caf" then the byte 0xe9
    with pytest.raises(ValueError, match=rf"latin1\.tsv, line 2: byte 0xe9 at byte {offset} of the file"):
        read_tsv_pairs(f)
    with pytest.warns(UserWarning, match=r"skipped 2 malformed line\(s\).*1 empty side, 1 not UTF-8"):
        pairs = read_tsv_pairs(f, errors="skip")
    assert [p.src for p in pairs] == ["嗨。", "跑。"]
    assert pairs.skipped_by_reason == {"not UTF-8": 1, "empty side": 1}
