"""The command line: python -m tformer {train,translate,evaluate,compare,bench}, and its error messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tformer.__main__ import main
from tformer.data.corpus import load_builtin
from tformer.data.text import BPETokenizer
from tformer.metrics import bleu

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


def test_evaluate_outputs_writes_one_json_object_per_sentence_that_compare_reads(trained, tmp_path, capsys):
    tsv, out = trained
    greedy, beam = tmp_path / "greedy.jsonl", tmp_path / "beam.jsonl"
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(tsv), "--beam", "1",
                 "--outputs", str(greedy)]) == 0
    text = capsys.readouterr().out
    rows = [json.loads(line) for line in greedy.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 20 and all(set(r) == {"src", "ref", "hyp"} for r in rows)
    assert all(isinstance(r[k], str) for r in rows for k in r) and any("\u4e00" <= c for c in rows[0]["src"])
    score = float(re.search(r"BLEU = ([\d.]+)", text).group(1))
    assert score == round(bleu([r["hyp"] for r in rows], [r["ref"] for r in rows]), 2)
    assert f"translations: {greedy} (20 lines)" in text
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(tsv), "--beam", "3",
                 "--outputs", str(beam)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beam.jsonl", "greedy.jsonl"]  # no temp files
    capsys.readouterr()
    assert main(["compare", str(beam), str(greedy), "--resamples", "200"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"A - B = [+-]\d+\.\d\d BLEU, 95% interval \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", text)
    assert "200 resamples of the 20 sentences, seed 0" in text
    assert "the interval excludes 0" in text or "the interval includes 0" in text


def test_evaluate_outputs_into_a_missing_directory_fails_before_translating(trained, tmp_path, capsys):
    tsv, out = trained
    target = tmp_path / "no" / "such" / "dir" / "out.jsonl"
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(tsv), "--outputs", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tformer evaluate: error: --outputs") and "does not exist" in err
    assert err.count("\n") == 1
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(tsv), "--outputs", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def _outputs_file(path, hyps, refs=None, srcs=None):
    refs = refs or [p.tgt for p in load_builtin("train")[: len(hyps)]]
    srcs = srcs or [p.src for p in load_builtin("train")[: len(hyps)]]
    path.write_text("".join(json.dumps({"src": s, "ref": r, "hyp": h}, ensure_ascii=False) + "\n"
                            for s, r, h in zip(srcs, refs, hyps)), encoding="utf-8")
    return path


def test_compare_says_whether_the_interval_excludes_zero(tmp_path, capsys):
    refs = [p.tgt for p in load_builtin("train")[:60]]
    bad = [" ".join(r.split()[:-1]) or r for r in refs]  # every sentence loses its last word
    good, worse = _outputs_file(tmp_path / "good.jsonl", refs), _outputs_file(tmp_path / "bad.jsonl", bad)
    assert main(["compare", str(good), str(worse), "--resamples", "300", "--seed", "4"]) == 0
    text = capsys.readouterr().out
    assert f"A: BLEU = 100.00 ({good})" in text and f"B: BLEU = {bleu(bad, refs):.2f} ({worse})" in text
    assert "seed 4" in text and "A scores higher on 100.0% of the resamples" in text
    assert "the interval excludes 0: A is better" in text
    assert main(["compare", str(worse), str(good), "--resamples", "300"]) == 0
    assert "the interval excludes 0: B is better" in capsys.readouterr().out
    assert main(["compare", str(good), str(good)]) == 0
    text = capsys.readouterr().out
    assert "A - B = +0.00 BLEU, 95% interval [+0.00, +0.00]" in text
    assert "1000 resamples" in text and "the interval includes 0" in text


def test_compare_refuses_files_of_other_sentences_naming_the_first_differing_line(tmp_path, capsys):
    pairs = load_builtin("train")[:5]
    hyps, refs, srcs = [p.tgt for p in pairs], [p.tgt for p in pairs], [p.src for p in pairs]
    a = _outputs_file(tmp_path / "a.jsonl", hyps)
    cases = {
        "short": (_outputs_file(tmp_path / "short.jsonl", hyps[:4]), "has 5 lines and"),
        "src": (_outputs_file(tmp_path / "src.jsonl", hyps, srcs=srcs[:2] + ["别的"] + srcs[3:]),
                "line 3 differs: src"),
        "ref": (_outputs_file(tmp_path / "ref.jsonl", hyps, refs=refs[:3] + ["Other."] + refs[4:]),
                "line 4 differs: ref"),
    }
    for name, (other, message) in cases.items():
        assert main(["compare", str(a), str(other)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("tformer compare: error:") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ('{"src": "我", "ref": "I"}\n', "line 1 has no 'hyp'"),
    ('{"src": "我", "ref": "I", "hyp": "I"}\n{"src": "我", "ref": "I", "hyp": 3}\n',
     "line 2 has a non-string 'hyp'"),
    ('{"src": "我", "ref": "I", "hyp": "I"}\nnot json\n', "line 2 is not JSON"),
    ('["我", "I", "I"]\n', "line 1 is not a JSON object"),
])
def test_compare_refuses_a_malformed_file_naming_the_line(tmp_path, capsys, content, message):
    good = _outputs_file(tmp_path / "good.jsonl", ["I"], refs=["I"], srcs=["我"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content, encoding="utf-8")
    assert main(["compare", str(bad), str(good)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tformer compare: error: {bad}: {message}") and err.count("\n") == 1, err


def test_compare_refuses_missing_files_and_bad_flags(tmp_path, capsys):
    good = _outputs_file(tmp_path / "good.jsonl", ["I"], refs=["I"], srcs=["我"])
    assert main(["compare", str(good), str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err
    (tmp_path / "latin1.jsonl").write_bytes(b'{"src": "\xe9"}\n')
    assert main(["compare", str(tmp_path / "latin1.jsonl"), str(good)]) == 2
    assert "not UTF-8 text (byte 0xe9" in capsys.readouterr().err
    for args, message in (([str(good), str(good), "--resamples", "0"], "--resamples"),
                          ([str(good), str(good), "--seed", "-1"], "--seed"),
                          ([str(good)], "the following arguments are required")):
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", *args])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


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


@pytest.mark.parametrize("command", ["train", "translate", "evaluate", "compare"])
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


