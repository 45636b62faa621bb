"""Issue 22: the second hostile probe's cases, each with the message a user can act on (what,
where, what to do): --out that a save could never replace, dropped pairs counted, mixed and
wrong-encoding TSV files, special files as --data, bounded sizes, translate's input, and API
misuse answered by tformer's own messages."""

from __future__ import annotations

import errno
import io
import math
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import small_transformer, tiny_gpt

import tformer.__main__ as cli
import tformer.training.checkpoint.directory as ck_directory
from tformer.__main__ import main
from tformer.data.corpus import load_builtin
from tformer.data.sources import parse_tsv_lines, read_tsv_pairs
from tformer.inference.generation import beam_search, generate, greedy_decode
from tformer.masks import causal_mask, padding_mask
from tformer.recipes.translation import (
    Settings,
    Translator,
    check_model_size,
    load_data,
    train_translation,
)
from tformer.training.checkpoint import check_committable

TINY = ["--d-model", "16", "--num-heads", "2", "--num-layers", "1", "--dim-feedforward", "32",
        "--batch-tokens", "200", "--warmup", "10", "--dropout", "0", "--quiet", "--threads", "1"]


def _tsv(path: Path, n: int = 120, attribution: bool = True) -> Path:
    rows = [f"{p.tgt}\t{p.src}" + (f"\tCC-BY #{i}" if attribution else "")
            for i, p in enumerate(load_builtin("train")[:n])]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    tsv = _tsv(root / "pairs.tsv")
    assert main(["train", "--data", str(tsv), "--out", str(root / "ck"), "--epochs", "1", *TINY]) == 0
    return tsv, root / "ck"


# ----------------------------------------------------------------- --out that a save could never replace


def test_out_that_is_the_current_directory_or_a_parent_of_it_is_refused_before_training(tmp_path, monkeypatch,
                                                                                         capsys):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("mine", encoding="utf-8")
    tsv = _tsv(tmp_path / "pairs.tsv")
    monkeypatch.chdir(work / "sub")
    for out in (".", "..", str(work), "./"):
        for extra in ([], ["--overwrite"], ["--resume"]):
            assert main(["train", "--data", str(tsv), "--out", out, "--epochs", "1", *extra, *TINY]) == 2
            line = _one_line(capsys.readouterr().err)
            assert "is the current directory or one of its parents" in line and "subdirectory" in line, line
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "sub"]
    assert list((work / "sub").iterdir()) == []
    with pytest.raises(ValueError, match="current directory"):
        train_translation({"train": []}, ".", Settings(), progress=False, log=None)


def test_a_mount_point_or_a_cross_device_rename_is_refused_before_training(tmp_path, monkeypatch, capsys):
    tsv = _tsv(tmp_path / "pairs.tsv")
    mounted = tmp_path / "mnt"
    mounted.mkdir()
    monkeypatch.setattr(ck_directory.os.path, "ismount", lambda p: Path(p) == mounted)
    assert main(["train", "--data", str(tsv), "--out", str(mounted), "--epochs", "1", *TINY]) == 2
    assert "is a mount point" in _one_line(capsys.readouterr().err)
    monkeypatch.undo()
    real_rename = os.rename

    def cross_device(src, dst, *args, **kwargs):
        if ".tmp-" in str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(ck_directory.os, "rename", cross_device)
    with pytest.raises(ValueError, match="a rename across file systems.*local, writable file system"):
        check_committable(tmp_path / "runs" / "x")
    assert main(["train", "--data", str(tsv), "--out", str(tmp_path / "elsewhere"), "--epochs", "1", *TINY]) == 2
    assert "cannot be committed" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "elsewhere").exists()


# ----------------------------------------------------------------- training data dropped without a word


def test_pairs_longer_than_max_len_are_counted_and_the_run_still_exits_0(tmp_path, capsys):
    pairs = load_builtin("train")[:150]
    long_pairs = [f"{p.tgt} {p.tgt} {p.tgt}\t{p.src}{p.src}{p.src}\tCC #{i}" for i, p in enumerate(pairs[:60])]
    rows = [f"{p.tgt}\t{p.src}\tCC #{i}" for i, p in enumerate(pairs[60:])] + long_pairs
    tsv = tmp_path / "mixed.tsv"
    tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    splits = load_data(str(tsv))
    shortest = min(len(p.src) for p in splits["test"])
    limit = 24
    assert main(["train", "--data", str(tsv), "--out", str(tmp_path / "ck"), "--epochs", "1",
                 "--max-len", str(limit), *TINY]) == 0
    out = capsys.readouterr().out
    train = splits["train"]
    dropped = sum(len(p.src) > limit - 1 or len(p.tgt.split()) + 1 > limit - 1 for p in train)
    assert dropped > 0
    assert f"train {len(train)} pairs, " in out
    counted = int(re.search(rf"train {len(train)} pairs, (\d+) longer than max_len {limit}", out).group(1))
    assert 0 < counted <= len(train) and "raise --max-len" in out
    assert shortest <= limit and " → " in out  # a sample that fits is translated


# ----------------------------------------------------------------- input files


def test_skip_bad_lines_keeps_two_column_lines_of_a_mixed_file(tmp_path):
    three = [f"S {i}.\t句{i}。\tCC #{i}" for i in range(120)]
    two = [f"T {i}.\t字{i}。" for i in range(80)]
    mixed = [line for pair in zip(three, two) for line in pair] + three[80:]
    pairs = parse_tsv_lines(mixed, "mixed.tsv", errors="skip")
    assert len(pairs) == 200 and pairs.skipped == 0
    assert {p.attribution for p in pairs if p.tgt.startswith("T ")} == {""}
    mostly_two = parse_tsv_lines(two + three[:60], "two.tsv", errors="skip")
    assert len(mostly_two) == 140 and mostly_two.skipped == 0  # the standard 3-column lines too
    strict = parse_tsv_lines(mixed, "mixed.tsv")  # no flag needed: both are the format
    assert len(strict) == 200


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("errors", ["raise", "skip"])
def test_a_utf16_or_utf32_file_is_refused_with_its_encoding_named(tmp_path, encoding, errors):
    f = tmp_path / "wide.tsv"
    f.write_bytes("".join(f"Hi {i}.\t嗨{i}。\tCC #{i}\n" for i in range(30)).encode(encoding))
    with pytest.raises(ValueError, match=r"wide\.tsv is not UTF-8 text: .*(UTF-16|UTF-32|NUL bytes).*save it as UTF-8"):
        read_tsv_pairs(f, errors=errors)


def test_utf16_data_is_one_clear_line_in_the_cli_with_or_without_skip_bad_lines(tmp_path, capsys):
    f = tmp_path / "wide.tsv"
    f.write_bytes(_tsv(tmp_path / "p.tsv").read_text(encoding="utf-8").encode("utf-16"))
    for extra in ([], ["--skip-bad-lines"]):
        assert main(["train", "--data", str(f), "--out", str(tmp_path / "ck"), *extra, *TINY]) == 2
        assert "is not UTF-8 text: it starts with the byte-order mark of UTF-16" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "ck").exists()


def test_a_directory_fifo_or_device_as_data_gets_its_own_message(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    cases = {str(tmp_path): "is a directory; give a TSV file", str(fifo): "is a FIFO (named pipe), not a regular file",
             "/dev/zero": "is a device or other special file"}
    for data, message in cases.items():
        assert main(["train", "--data", data, "--out", str(tmp_path / "ck"), *TINY]) == 2
        assert message in _one_line(capsys.readouterr().err)
        assert main(["evaluate", "--data", data, "--checkpoint", str(tmp_path / "none"), "--threads", "1"]) == 2
        capsys.readouterr()


# ----------------------------------------------------------------- sizes bounded before allocation


@pytest.mark.parametrize(("flag", "value", "limit"), [
    ("--d-model", "65536", "8192"), ("--max-len", "100000000", "16384"), ("--num-layers", "100000", "64"),
    ("--bpe-vocab-size", "1000000000", "262144"), ("--threads", "100000", None), ("--beam-size", "100000", "100"),
    ("--dim-feedforward", "10000000", "65536"), ("--batch-tokens", "1000000000", "1000000"),
])
def test_size_flags_are_bounded_with_the_limit_in_the_message(tmp_path, capsys, flag, value, limit):
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error, one line
        main(["train", "--data", "builtin", "--out", str(tmp_path / "ck"), flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"expected a positive integer up to {limit or ''}" in err and value in err, err
    assert not (tmp_path / "ck").exists()


def test_translate_and_evaluate_bound_beam_and_threads(trained, capsys):
    _, ck = trained
    for argv, message in ((["translate", "--checkpoint", str(ck), "--beam", "100000", "我"], "up to 100,"),
                          (["evaluate", "--checkpoint", str(ck), "--threads", "100000"], "cores")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in _one_line(capsys.readouterr().err)


def test_a_model_too_large_for_the_limit_or_the_memory_is_refused_before_it_is_built(monkeypatch):
    big = Settings(model=dict(d_model=4096, num_heads=16, num_encoder_layers=6, num_decoder_layers=6,
                              dim_feedforward=16384, max_len=512)).model_config(40000, 40000)
    with pytest.raises(ValueError, match=r"more than 5e\+08\); the sizes are absurd .*--d-model"):
        check_model_size(big)
    middling = Settings(model=dict(d_model=1024, num_heads=16, num_encoder_layers=8, num_decoder_layers=8,
                                   dim_feedforward=4096, max_len=512)).model_config(30000, 30000)
    import tformer.recipes.translation_data as presets

    monkeypatch.setattr(presets, "available_memory", lambda: 2 * 2**30)
    assert check_model_size(middling) < 5e8  # under the parameter limit, and its weights fit
    with pytest.raises(ValueError, match=r"needs about .* GiB to train .* more than the 2\.0 GiB"):
        check_model_size(middling, training=True)


# ----------------------------------------------------------------- translate's input


def test_translate_names_the_input_line_counting_blank_lines(trained, capsys, monkeypatch):
    _, ck = trained
    limit = Translator.from_checkpoint(ck, device="cpu").model.config.max_len
    text = "我\n\n你好\n" + "我" * (limit + 5) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8"))
    assert main(["translate", "--checkpoint", str(ck), "--threads", "1"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("tformer translate: error: line 4 of the input has") and f"max_len {limit}" in line


def test_translate_refuses_an_endless_line(trained, capsys, monkeypatch):
    _, ck = trained

    class Endless(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            buffer[:] = b"\0" * len(buffer)
            return len(buffer)

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Endless())))
    assert main(["translate", "--checkpoint", str(ck), "--threads", "1"]) == 2
    assert f"line 1 of the input is longer than {cli.MAX_LINE_BYTES} bytes" in _one_line(capsys.readouterr().err)


# ----------------------------------------------------------------- the API answers misuse itself


def test_decoding_checks_ids_devices_token_ids_and_the_model_kind():
    model = small_transformer().eval()
    src = torch.tensor([[5, 6, 7, 0]])
    for fn in (greedy_decode, beam_search):
        with pytest.raises(TypeError, match=r"src must hold token ids as torch\.long .* got dtype torch\.uint8"):
            fn(model, src.to(torch.uint8))
        with pytest.raises(TypeError, match="src must hold integer token ids"):
            fn(model, src.double())
        with pytest.raises(ValueError, match=r"src holds token id 19, outside the vocabulary 0\.\.18"):
            fn(model, torch.tensor([[5, 19]]))
        with pytest.raises(ValueError, match=r"eos_id=-1 must be a token id in \[0, 23\)"):
            fn(model, src, eos_id=-1)
        with pytest.raises(ValueError, match=r"eos_id=23 must be a token id in \[0, 23\)"):
            fn(model, src, eos_id=23)
        with pytest.raises(TypeError, match=r"decodes an encoder–decoder model .* got GPT; .*generate\(\)"):
            fn(tiny_gpt(), src)
        if torch.device("meta") != src.device:
            with pytest.raises(ValueError, match=r"src is on meta but the model is on cpu"):
                fn(model, src.to("meta"))
    for alpha in (math.nan, math.inf, -5.0):
        with pytest.raises(ValueError, match="alpha=.* must be a finite length-penalty exponent >= 0"):
            beam_search(model, src, alpha=alpha)
    with pytest.raises(ValueError, match="candidates a step"):
        beam_search(model, src, beam_size=10**7)
    with pytest.raises(TypeError, match=r"generate continues a decoder-only model .* got Transformer"):
        generate(model, src, 3)
    with pytest.raises(ValueError, match=r"eos_id=11 must be a token id in \[0, 11\)"):
        generate(tiny_gpt(), torch.tensor([[1, 2]]), 3, eos_id=11)


def test_masks_refuse_absurd_sizes_and_non_integer_lengths():
    with pytest.raises(ValueError, match=r"causal_mask\(T_q=200000, T_k=200000\) would hold 4e\+10 booleans"):
        causal_mask(200000)
    with pytest.raises(ValueError, match=r"max_len=2\.5 must be None or an int >= 0"):
        padding_mask([1, 2], max_len=2.5)
    assert padding_mask([1, 2], max_len=3).shape == (2, 1, 1, 3)


def test_translator_checks_batch_size_beam_alpha_and_device(trained):
    _, ck = trained
    with pytest.raises(ValueError, match=r"device='nonsense' is not a device name"):
        Translator.from_checkpoint(ck, device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda' but torch\.cuda\.is_available\(\) is False"):
            Translator.from_checkpoint(ck, device="cuda")
    translator = Translator.from_checkpoint(ck, device="cpu")
    with pytest.raises(ValueError, match="batch_size=-1 must be a positive integer"):
        translator.translate(["我"], batch_size=-1)
    for alpha in (math.nan, math.inf, -5.0):
        with pytest.raises(ValueError, match="alpha="):
            translator.translate(["我"], beam_size=2, alpha=alpha)
    assert len(translator.translate(["我", "你"], batch_size=1)) == 2


def test_load_smollm2_on_a_truncated_file_names_it_and_says_what_to_do(tmp_path):
    pytest.importorskip("gguf")
    from tformer.pretrained import load_smollm2, smollm2_path

    try:
        source = smollm2_path()
    except Exception as error:  # the weights package is an extra
        pytest.skip(f"SmolLM2's GGUF file is not installed: {error}")
    cut = tmp_path / "smollm2.gguf"
    with open(source, "rb") as f:
        cut.write_bytes(f.read(2_000_000))
    with pytest.raises(ValueError, match=r"smollm2\.gguf.*truncated: reinstall it"):
        load_smollm2(cut)


def test_semantic_checks_of_a_loaded_checkpoint(trained, tmp_path):
    from tformer.training.checkpoint import add_manifest, read_json, write_json

    _, ck = trained
    shutil.copytree(ck, tmp_path / "short")
    vocab = read_json(tmp_path / "short" / "tgt_vocab.json")
    key = next(k for k, v in vocab.items() if isinstance(v, list))
    vocab[key] = vocab[key][:-3]  # a target vocabulary shorter than the model's
    write_json(tmp_path / "short" / "tgt_vocab.json", vocab)
    add_manifest(tmp_path / "short")
    with pytest.raises(ValueError, match=r"tgt_vocab\.json holds \d+ tokens but the model's tgt_vocab_size is"):
        Translator.from_checkpoint(tmp_path / "short", device="cpu")


def test_the_loss_names_target_dtype_range_and_device():
    from tformer.training.objectives import LabelSmoothingLoss

    loss = LabelSmoothingLoss(0.1, ignore_index=0)
    logits = torch.randn(2, 3, 7)
    with pytest.raises(TypeError, match=r"target must hold token ids as torch\.long \(or torch\.int32\), got dtype torch\.uint8"):
        loss(logits, torch.ones(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"target id 7 is outside the vocabulary \[0, 7\)"):
        loss(logits, torch.full((2, 3), 7))
    with pytest.raises(ValueError, match="target is on meta but logits on cpu"):
        loss(logits, torch.ones(2, 3, dtype=torch.long, device="meta"))
    assert torch.isfinite(loss(logits, torch.ones(2, 3, dtype=torch.int32)))


def test_a_non_integer_seed_in_the_config_is_refused_by_evaluate(trained, tmp_path, capsys):
    from tformer.training.checkpoint import add_manifest, read_json, write_json

    _, ck = trained
    shutil.copytree(ck, tmp_path / "ck")
    cfg = read_json(tmp_path / "ck" / "config.json")
    cfg["train"]["seed"] = 1.5  # would split the data otherwise than training did
    write_json(tmp_path / "ck" / "config.json", cfg)
    add_manifest(tmp_path / "ck")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ck"), "--data", str(trained[0]), "--threads", "1"]) == 2
    assert "train.seed is 1.5, not an integer" in _one_line(capsys.readouterr().err)


def test_a_bpe_tokenizer_of_another_run_or_a_relabelled_one_is_refused(tmp_path):
    from helpers import tiny_translation_run

    from tformer.data.text import BPETokenizer
    from tformer.recipes.tokenizers import BPE_FILE, Tokenizers
    from tformer.training.checkpoint import save_checkpoint

    english = [p.tgt for p in load_builtin("train")[:300]]
    first = BPETokenizer.train(english[:150], vocab_size=120)
    other = BPETokenizer.train(english[150:], vocab_size=120)
    assert len(first.vocab) == len(other.vocab) and first.vocab.itos != other.vocab.itos
    model, _opt, _sched, _b, sv, _tv = tiny_translation_run()
    save_checkpoint(tmp_path / "ck", model, config={"tokenizer": "bpe"},
                    files={"src_vocab.json": sv, "tgt_vocab.json": first.vocab, BPE_FILE: other})
    with pytest.raises(ValueError, match="numbers its tokens otherwise than tgt_vocab.json; the files come from different runs"):
        Tokenizers.load(tmp_path / "ck", "bpe")
    save_checkpoint(tmp_path / "ok", model, config={"tokenizer": "bpe"},
                    files={"src_vocab.json": sv, "tgt_vocab.json": first.vocab, BPE_FILE: first})
    assert Tokenizers.load(tmp_path / "ok", "bpe").bpe is not None
    with pytest.raises(ValueError, match="says the English side is split by word, but the checkpoint holds a BPE"):
        Tokenizers.load(tmp_path / "ok", "word")
