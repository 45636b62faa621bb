"""What a learner sees from ``check`` on an unfilled stub, a wrong signature or a wrong shape, and
the checker holes of issue 12: each wrong answer below used to pass (or crash) and now fails with
a hint naming the mistake."""

from __future__ import annotations

import math

import pytest
import torch

from tformer.course.exercises import NOT_IMPLEMENTED, CheckFailed, available, check
from tformer.course.exercises import attention as ex_attention
from tformer.course.exercises import layers as ex_layers
from tformer.course.exercises import training as ex_training

# --- unfilled stubs: one friendly line, for every checker ---------------------------------------


def stub_ellipsis_body(*args, **kwargs):
    ...


def stub_not_implemented(*args, **kwargs):
    raise NotImplementedError


def stub_returns_ellipsis(*args, **kwargs):
    return ...


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize("stub", [stub_ellipsis_body, stub_not_implemented, stub_returns_ellipsis])
def test_an_unfilled_stub_gets_one_not_implemented_line_from_every_checker(name, stub, capsys):
    assert check(name, stub) is False
    out = capsys.readouterr().out
    assert out == f"… {name}: {NOT_IMPLEMENTED}\n"


def test_not_implemented_message_tells_the_learner_where_to_write():
    assert NOT_IMPLEMENTED == "not implemented yet — fill in the function above"


@pytest.mark.parametrize("name", available())
def test_no_checker_lets_a_traceback_out_on_an_answer_of_the_wrong_type(name, capsys):
    def returns_a_string(*args, **kwargs):
        return "not a tensor"

    assert check(name, returns_a_string) is False
    lines = capsys.readouterr().out.splitlines()
    assert 1 <= len(lines) <= 2
    assert lines[0].startswith(f"✗ {name}:")


# --- wrong signature and wrong shape: one line naming what to fix -------------------------------


def test_a_wrong_signature_names_the_call_and_the_parameters_to_change(capsys):
    def attention(q, k):  # forgot v and mask
        return q

    assert check("attention.scaled_dot_product", attention) is False
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "attention(tensor(4, 16), tensor(4, 16), tensor(4, 16))" in out
    assert "attention(q, k)" in out and "change its parameters" in out


def test_a_required_mask_parameter_is_reported_as_a_signature_problem(capsys):
    def attention(q, k, v, mask):  # the checker calls it without a mask first
        return q

    assert check("attention.scaled_dot_product", attention) is False
    out = capsys.readouterr().out
    assert "missing a required argument: 'mask'" in out


def test_a_wrong_shape_is_one_line_with_expected_and_actual_shapes(capsys):
    def split(x, num_heads):
        B, T, d = x.shape
        return x.view(B, T, num_heads, d // num_heads)  # transpose forgotten

    assert check("attention.multi_head_split", split) is False
    first, hint = capsys.readouterr().out.splitlines()
    assert first == "✗ attention.multi_head_split: case 1 (B=2, T=5, d_model=12, h=3): expected shape (2, 3, 5, 4), got (2, 5, 3, 4)"
    assert "transpose(1, 2)" in hint


def test_an_error_inside_the_learners_function_is_reported_as_theirs(capsys):
    def attention(q, k, v, mask=None):
        return q @ v  # (T, d_k) @ (T, d_v): shapes do not multiply

    assert check("attention.scaled_dot_product", attention) is False
    out = capsys.readouterr().out
    assert out.startswith("✗ attention.scaled_dot_product: your function raised RuntimeError:")
    assert out.count("\n") == 1


# --- issue 12 holes: attention ------------------------------------------------------------------


def _attention(fill_value: float, zero_after: bool, scale_by_values: bool = False):
    def attention(q, k, v, mask=None):
        d = v.shape[-1] if scale_by_values else q.shape[-1]
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if mask is not None:
            scores = scores.masked_fill(~mask, fill_value)
        weights = torch.softmax(scores, dim=-1)
        if mask is not None and zero_after:
            weights = weights.masked_fill(~mask, 0.0)
        return weights @ v, weights

    return attention


def test_the_fully_masked_row_version_passes():
    assert ex_attention.check_scaled_dot_product(_attention(torch.finfo(torch.float64).min, True)) == 5


def test_masking_with_minus_inf_fails_on_a_fully_masked_row_with_the_nan_hint():
    with pytest.raises(CheckFailed) as info:
        ex_attention.check_scaled_dot_product(_attention(float("-inf"), False))
    assert info.value.message.startswith("case 5 (query 2 may attend to no key")
    assert "NaN" in info.value.message
    assert "-inf" in info.value.hint and "torch.finfo" in info.value.hint


def test_a_fully_masked_row_that_averages_the_values_gets_the_zero_weights_hint():
    with pytest.raises(CheckFailed) as info:
        ex_attention.check_scaled_dot_product(_attention(torch.finfo(torch.float64).min, False))
    assert info.value.message.startswith("case 5")
    assert "must be zeros" in info.value.hint


def test_scaling_by_the_value_size_gets_the_d_v_hint():
    with pytest.raises(CheckFailed) as info:
        ex_attention.check_scaled_dot_product(
            _attention(torch.finfo(torch.float64).min, True, scale_by_values=True))
    # case 1 has d_v = d_k = 16, so the first failure is case 2 (d_k = 8, d_v = 6).
    assert info.value.message.startswith("case 2")
    assert "not by √d_v" in info.value.hint


# --- issue 12 holes: cross-attention inputs swapped ----------------------------------------------


def _decoder_layer(swap: bool):
    def decoder_layer(layer, x, memory, tgt_mask, memory_mask):
        x = layer.norm1(x + layer.self_attn(x, x, x, mask=tgt_mask))
        if swap:
            x = layer.norm2(x + layer.cross_attn(memory, x, x, mask=memory_mask))
        else:
            x = layer.norm2(x + layer.cross_attn(x, memory, memory, mask=memory_mask))
        return layer.norm3(x + layer.ffn(x))

    return decoder_layer


def test_the_decoder_layer_reference_passes():
    assert ex_layers.check_decoder_layer(_decoder_layer(swap=False)) == 3


def test_swapped_cross_attention_inputs_get_the_swap_hint_not_a_traceback(capsys):
    with pytest.raises(CheckFailed) as info:
        ex_layers.check_decoder_layer(_decoder_layer(swap=True))
    assert "encoder output as its queries" in info.value.message
    assert "cross_attn(x, memory, memory)" in info.value.hint
    assert check("layers.decoder_layer", _decoder_layer(swap=True)) is False
    out = capsys.readouterr().out
    assert "Traceback" not in out and "queries come from the decoder" in out


def test_swapped_cross_attention_without_a_mask_is_also_named():
    def swapped_no_mask(layer, x, memory, tgt_mask, memory_mask):
        x = layer.norm1(x + layer.self_attn(x, x, x, mask=tgt_mask))
        return layer.cross_attn(query=memory, key=x, value=x)  # kwargs: seen by the hook too

    with pytest.raises(CheckFailed) as info:
        ex_layers.check_decoder_layer(swapped_no_mask)
    assert "queries come from the decoder" in info.value.hint


# --- issue 12 holes: greedy decoding without the source mask -------------------------------------


def _greedy(use_source_mask: bool):
    def greedy(model, src, max_len, bos_id, eos_id):
        with torch.no_grad():
            memory = model.encode(src)
            src_mask = model.make_src_mask(src) if use_source_mask else None
            ys = torch.full((src.shape[0], 1), bos_id)
            done = torch.zeros(src.shape[0], dtype=torch.bool)
            for _ in range(max_len):
                nxt = model.decode(ys, memory, src_mask)[:, -1].argmax(-1).masked_fill(done, 0)
                ys = torch.cat([ys, nxt[:, None]], dim=1)
                done |= nxt == eos_id
                if done.all():
                    break
        return ys[:, 1:]

    return greedy


def test_greedy_with_the_source_mask_passes():
    assert ex_training.check_greedy(_greedy(use_source_mask=True)) == 3


def test_greedy_that_ignores_the_source_mask_fails_on_padded_sources_with_the_mask_hint():
    with pytest.raises(CheckFailed) as info:
        ex_training.check_greedy(_greedy(use_source_mask=False))
    assert info.value.message.startswith("case 1")
    assert "make_src_mask(src)" in info.value.hint and "padding" in info.value.hint


# --- the chapters' "your turn" cells ------------------------------------------------------------

import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _stub_cells():
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and source.startswith("# Your turn") and "check(" in source:
                yield path.stem, source, cell


STUBS = list(_stub_cells())
CALL = re.compile(r'check\("([^"]+)"')


@pytest.mark.parametrize("chapter, source, cell", STUBS,
                         ids=[f"{c}:{'+'.join(CALL.findall(s))}" for c, s, _ in STUBS])
def test_every_your_turn_cell_calls_a_checker_and_shows_not_implemented_yet(chapter, source, cell):
    names = CALL.findall(source)
    assert names and set(names) <= set(available()), names
    text = "".join("".join(o.get("text", "")) for o in cell["outputs"])
    assert text == "".join(f"… {name}: {NOT_IMPLEMENTED}\n" for name in names)
    assert cell["execution_count"] is not None  # nbval compares only executed cells


def test_chapters_9b_11b_11c_and_13_have_your_turn_cells_for_their_coding_exercises():
    called = {(chapter, name) for chapter, source, _ in STUBS for name in CALL.findall(source)}
    assert {("09b_rnn_translator", "rnn.sequential_steps"), ("09b_rnn_translator", "rnn.luong_attention"),
            ("11b_small_llm", "llm.kv_cache"), ("11b_small_llm", "llm.rms_norm"), ("11b_small_llm", "llm.rope"),
            ("11b_small_llm", "llm.repeat_kv"), ("11b_small_llm", "llm.grouped_query_attention"),
            ("11c_finetuning", "finetune.lora_forward"), ("11c_finetuning", "finetune.lora_merge"),
            ("11c_finetuning", "finetune.lora_parameter_count"),
            ("13_paper_revisited", "paper.preln_extra_parameters"),
            ("13_paper_revisited", "paper.additive_score_terms"), ("13_paper_revisited", "paper.attention_memory"),
            ("09_inference", "decode.length_penalty"), ("09_inference", "decode.beam_search")} <= called
