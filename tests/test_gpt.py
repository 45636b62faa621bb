from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tformer.benchmarks import gpt as gpt_bench
from tformer.benchmarks import kv_cache as kv_bench
from tformer.course.exercises import CheckFailed, check
from tformer.course.exercises.gpt import CHECKS
from tformer.data.batches import random_windows
from tformer.data.sources import course_text, load_text, tiny_shakespeare
from tformer.data.text import CharTokenizer
from tformer.inference.generation import generate, sample, top_k_filter, top_p_filter
from tformer.nn.gpt import GPT, GPTConfig
from tformer.recipes.language_model import evaluate_loss
from tformer.training.optim import make_adamw, warmup_cosine_lr

NEG_INF = float("-inf")


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    kw = dict(vocab_size=11, block_size=12, num_layers=2, num_heads=2, d_model=16)
    kw.update(overrides)
    return GPT(GPTConfig(**kw)).eval()


# ---------------------------------------------------------------- model


def test_logits_have_one_row_per_position_and_no_loss_without_targets():
    model = tiny()
    logits, loss = model(torch.randint(0, 11, (3, 7)))
    assert logits.shape == (3, 7, 11)
    assert loss is None


def test_loss_equals_cross_entropy_of_the_logits():
    model = tiny()
    idx, targets = torch.randint(0, 11, (2, 9)), torch.randint(0, 11, (2, 9))
    logits, loss = model(idx, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)))


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_changing_a_future_token_leaves_earlier_logits_unchanged(positions):
    model = tiny(positions=positions)
    idx = torch.randint(0, 11, (1, 10))
    changed = idx.clone()
    changed[0, 6] = (idx[0, 6] + 1) % 11
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_forward_with_cache_in_chunks_equals_one_full_forward():
    model = tiny()
    idx = torch.randint(0, 11, (2, 10))
    full, _ = model(idx)
    caches = model.new_caches()
    parts = [model(idx[:, :4], caches=caches)[0]]  # prompt: empty cache, causal fast path
    parts.append(model(idx[:, 4:5], caches=caches)[0])  # one token
    parts.append(model(idx[:, 5:8], caches=caches)[0])  # a chunk over a filled cache: explicit mask
    parts.append(model(idx[:, 8:], caches=caches, start=8)[0])
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_weight_tying_shares_one_tensor_and_untied_does_not():
    tied, untied = tiny(), tiny(tie_weights=False)
    assert tied.lm_head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == 11 * 16


def test_optimizer_decays_matrices_but_not_gains():
    model = tiny()
    decay, no_decay = make_adamw(model, weight_decay=0.1).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_residual_projections_get_the_smaller_gpt2_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, num_layers=8, d_model=256, num_heads=4))
    std = model.blocks[0].attn.w_o.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].attn.w_q.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_tiny_model_overfits_a_tiny_text():
    tok = CharTokenizer.from_text("hello world! ")
    ids = tok.encode("hello world! " * 4)
    torch.manual_seed(0)
    model = GPT(GPTConfig(tok.vocab_size, block_size=16, num_layers=1, num_heads=2, d_model=32))
    opt = make_adamw(model, lr=1e-2, weight_decay=0.0)
    x, y = ids[None, :16], ids[None, 1:17]
    model.train()
    for _ in range(120):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    out = generate(model, tok.encode("hel")[None], 10, do_sample=False)
    assert tok.decode(out[0]) == "hello world! "


# ---------------------------------------------------------------- generation


def test_greedy_generation_is_identical_with_and_without_the_cache_even_past_block_size():
    model = tiny()
    prompt = torch.randint(0, 11, (2, 5))
    # 5 + 20 > block_size = 12: the window slides, so both paths must crop the same way
    a = generate(model, prompt, 20, do_sample=False, use_cache=True)
    b = generate(model, prompt, 20, do_sample=False, use_cache=False)
    assert a.shape == (2, 25)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :5], prompt)


def test_sampled_generation_is_identical_with_and_without_the_cache_for_the_same_seed():
    model = tiny()
    prompt = torch.randint(0, 11, (3, 4))
    kw = dict(temperature=0.8, top_k=6, top_p=0.9)
    a = generate(model, prompt, 15, do_sample=True, generator=torch.Generator().manual_seed(1), **kw)
    b = generate(model, prompt, 15, do_sample=True, use_cache=False, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b)


def test_top_k_1_sampling_equals_greedy_decoding():
    model = tiny()
    prompt = torch.randint(0, 11, (2, 3))
    sampled = generate(model, prompt, 8, do_sample=True, top_k=1)
    assert torch.equal(sampled, generate(model, prompt, 8, do_sample=False))


def test_prompt_longer_than_block_size_uses_its_last_block_size_tokens():
    model = tiny()
    prompt = torch.randint(0, 11, (1, 30))
    for use_cache in (True, False):
        out = generate(model, prompt, 4, do_sample=False, use_cache=use_cache)
        cropped = generate(model, prompt[:, -12:], 4, do_sample=False, use_cache=use_cache)
        assert torch.equal(out[:, :30], prompt)
        assert torch.equal(out[:, 30:], cropped[:, 12:])


def test_generate_restores_training_mode_and_zero_tokens_returns_prompt():
    model = tiny().train()
    prompt = torch.randint(0, 11, (1, 3))
    assert torch.equal(generate(model, prompt, 0, do_sample=True), prompt)
    generate(model, prompt, 2, do_sample=True)
    assert model.training


# ---------------------------------------------------------------- sampling filters


def test_top_k_filter_keeps_the_k_largest_logits():
    logits = torch.tensor([[1.0, 4.0, 2.0, 3.0], [0.0, -1.0, 5.0, 2.0]])
    expected = torch.tensor([[NEG_INF, 4.0, NEG_INF, 3.0], [NEG_INF, NEG_INF, 5.0, 2.0]])
    assert torch.equal(top_k_filter(logits, 2), expected)
    assert torch.equal(top_k_filter(logits, 10), logits)  # k larger than V keeps all


def test_top_k_filter_keeps_ties_with_the_kth_value():
    assert torch.equal(
        top_k_filter(torch.tensor([3.0, 1.0, 3.0, 2.0]), 1), torch.tensor([3.0, NEG_INF, 3.0, NEG_INF])
    )


@pytest.mark.parametrize(
    "p, kept", [(0.3, [0]), (0.7, [0, 1]), (0.85, [0, 1, 2]), (0.99, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])]
)
def test_top_p_filter_keeps_the_smallest_set_reaching_p(p, kept):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    order = torch.tensor([2, 0, 3, 1])  # shuffle so that vocabulary order != rank order
    logits = probs.log()[order]
    out = top_p_filter(logits, p)
    kept_ids = [j for j in range(4) if order[j].item() in kept]
    assert torch.isfinite(out).nonzero().flatten().tolist() == kept_ids
    torch.testing.assert_close(out[kept_ids], logits[kept_ids])


def test_top_p_filter_always_keeps_the_most_likely_token():
    out = top_p_filter(torch.tensor([[2.0, 0.0, 0.0]]), 0.01)
    assert torch.isfinite(out).tolist() == [[True, False, False]]


def test_sample_frequencies_follow_the_temperature_scaled_softmax():
    logits = torch.tensor([1.0, 0.5, 0.0, -1.0])
    draws = sample(logits.expand(20000, 4), temperature=0.5, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.softmax(logits / 0.5, dim=-1), atol=0.015, rtol=0)


def test_sample_is_reproducible_and_respects_top_k():
    logits = torch.randn(5, 20)
    a = sample(logits, top_k=3, generator=torch.Generator().manual_seed(7))
    b = sample(logits, top_k=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (5,)
    top3 = logits.topk(3).indices
    assert all(a[i] in top3[i] for i in range(5))
    assert sample(torch.tensor([0.0, 9.0, 0.0]), top_k=1).item() == 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens=-1"),
        (dict(temperature=0.0), ValueError, "temperature=0.0"),
        (dict(temperature=-1.0), ValueError, "temperature=-1.0"),
        (dict(top_k=0), ValueError, "top_k=0"),
        (dict(top_k=2.5), TypeError, "top_k must be an int"),
        (dict(top_p=0.0), ValueError, r"top_p=0.0 must lie in \(0, 1\]"),
        (dict(top_p=1.5), ValueError, r"top_p=1.5 must lie in \(0, 1\]"),
    ],
)
def test_generate_rejects_bad_sampling_arguments(kwargs, error, match):
    model = tiny()
    args = dict(max_new_tokens=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        generate(model, torch.zeros(1, 2, dtype=torch.long), do_sample=True, **args)


@pytest.mark.parametrize(
    "idx, error, match",
    [
        (torch.zeros(1, 3), TypeError, "integer token ids"),
        (torch.zeros(3, dtype=torch.long), ValueError, r"shape \(B, T\)"),
        (torch.zeros(1, 0, dtype=torch.long), ValueError, r"shape \(B, T\)"),
        (torch.tensor([[1, 11]]), ValueError, "token id 11, outside the vocabulary 0..10"),
        (torch.tensor([[-1, 2]]), ValueError, "token id -1"),
        ([[1, 2]], TypeError, "must be a torch.Tensor"),
    ],
)
def test_bad_prompts_are_rejected_by_forward_and_generate(idx, error, match):
    model = tiny()
    with pytest.raises(error, match=match):
        model(idx)
    with pytest.raises(error, match=match):
        generate(model, idx, 2, do_sample=True)


def test_forward_rejects_too_long_inputs_and_a_wrong_start():
    model = tiny()
    with pytest.raises(ValueError, match="exceed block_size=12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    caches = model.new_caches()
    model(torch.zeros(1, 3, dtype=torch.long), caches=caches)
    with pytest.raises(ValueError, match="start=0 must equal the number of cached positions"):
        model(torch.zeros(1, 1, dtype=torch.long), caches=caches, start=0)
    with pytest.raises(ValueError, match="targets must have the shape"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))


def test_sample_rejects_bad_logits():
    with pytest.raises(TypeError, match="floating-point"):
        sample(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"shape \(B, V\)"):
        sample(torch.zeros(2, 3, 4))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_model=30, num_heads=4), "d_model=30 must be divisible by num_heads=4"),
        (dict(vocab_size=0), "vocab_size=0"),
        (dict(positions="rotary"), "positions='rotary'"),
        (dict(activation="tanh"), "activation='tanh'"),
        (dict(dropout=1.0), r"dropout=1.0 must lie in \[0, 1\)"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    base = dict(vocab_size=10, block_size=8)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GPTConfig(**base)


def test_config_round_trips_through_json_and_fills_dim_feedforward():
    config = GPTConfig(vocab_size=10, block_size=8, d_model=32, num_heads=2, positions="sinusoidal")
    assert config.dim_feedforward == 128
    assert GPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(TypeError, match="unknown GPTConfig fields"):
        GPTConfig.from_dict({**config.to_dict(), "n_embd": 3})
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT(config.to_dict())


# ---------------------------------------------------------------- text helpers


def test_char_tokenizer_round_trips_and_names_unknown_characters():
    tok = CharTokenizer.from_text("abba cd\n")
    assert tok.vocab_size == 6
    assert tok.decode(tok.encode("a cab\n")) == "a cab\n"
    with pytest.raises(ValueError, match=r"\['z'\]"):
        tok.encode("zab")
    with pytest.raises(ValueError, match="ids must lie in 0..5"):
        tok.decode([6])


def test_load_text_and_course_text_read_from_disk(tmp_path):
    with pytest.raises(FileNotFoundError, match="no text file"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="no book"):
        course_text(tmp_path)
    (tmp_path / "book").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n", encoding="utf-8")
    nb = {"cells": [{"cell_type": "markdown", "source": ["# Ch", "\n注意"]},
                    {"cell_type": "code", "source": ["x = 1"]}]}
    (tmp_path / "notebooks" / "01.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    assert course_text(tmp_path) == "# Intro\n\n\n# Ch\n注意"


# ---------------------------------------------------------------- benchmark pieces


def test_schedule_warms_up_then_follows_a_cosine_to_min_lr():
    lr = lambda it: warmup_cosine_lr(it, 1e-3, 1e-4, 100, 2000)  # noqa: E731
    assert lr(0) == pytest.approx(1e-3 / 101)
    assert lr(99) == pytest.approx(1e-3 * 100 / 101)
    assert lr(100) == pytest.approx(1e-3)
    assert lr(1050) == pytest.approx(0.55e-3)
    assert lr(2000) == pytest.approx(1e-4)


def test_random_windows_pairs_each_input_with_the_next_token():
    ids = torch.arange(100)
    x, y = random_windows(ids, 8, 5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous stretches of the text
    with pytest.raises(ValueError, match="longer than block_size=8"):
        random_windows(torch.arange(8), 8, 2)


def test_evaluation_covers_every_token_once():
    model = tiny(block_size=4)
    ids = torch.randint(0, 11, (11,))  # windows 0..3, 4..7, and the short tail 8..9
    expected = []
    for a, b in ((0, 4), (4, 8), (8, 10)):
        logits, _ = model(ids[None, a:b])
        expected.append(F.cross_entropy(logits[0], ids[a + 1 : b + 1], reduction="sum"))
    got = evaluate_loss(model, ids, batch_size=1)
    assert got == pytest.approx((sum(expected) / 10).item(), rel=1e-5)


def test_benchmark_reads_the_shipped_tiny_shakespeare_when_no_data_file_is_given(monkeypatch):
    text = tiny_shakespeare()
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    calls = []

    def small_shakespeare():  # the real text is 1 MB; a slice keeps the quick run quick
        calls.append(True)
        return text[:3000]

    monkeypatch.setattr(gpt_bench, "tiny_shakespeare", small_shakespeare)
    result = gpt_bench.run(quick=True)
    assert calls == [True]
    assert result["metrics"]["iterations"] == 20
    assert math.isfinite(result["metrics"]["val_loss"])


def test_benchmark_runs_quick_on_a_small_data_file_and_names_a_missing_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="no text file at .*none.txt"):
        gpt_bench.run(quick=True, data=tmp_path / "none.txt")
    path = tmp_path / "t.txt"
    path.write_text("to be or not to be, that is the question.\n" * 60, encoding="utf-8")
    result = gpt_bench.run(quick=True, data=path)
    json.dumps(result)
    assert result["metrics"]["iterations"] == 20
    assert math.isfinite(result["metrics"]["val_loss"])


# ---------------------------------------------------------------- exercise checkers


def reader_temperature(logits, t):
    return torch.softmax(logits / t, dim=-1)


def reader_top_k(logits, k):
    kth = torch.sort(logits, dim=-1, descending=True).values[..., k - 1 : k]
    return torch.where(logits >= kth, logits, torch.full_like(logits, NEG_INF))


def reader_top_p(logits, p):
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


@pytest.mark.parametrize(
    "name, fn",
    [("gpt.temperature", reader_temperature), ("gpt.top_k_filter", reader_top_k),
     ("gpt.top_p_filter", reader_top_p)],
)
def test_checkers_accept_a_readers_correct_solution(name, fn, capsys):
    assert check(name, fn)
    assert "all 3 cases pass" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, wrong, hint",
    [
        ("gpt.temperature", lambda x, t: torch.softmax(x * t, -1), "do not multiply"),
        ("gpt.temperature", lambda x, t: torch.softmax(x, -1) / t, "not the probabilities after"),
        ("gpt.top_k_filter", lambda x, k: x.masked_fill(x < x.topk(k).values[..., -1:], 0.0), "not 0"),
        ("gpt.top_k_filter", lambda x, k: x.masked_fill(x <= x.topk(k).values[..., -1:], NEG_INF),
         "strictly above"),
        ("gpt.top_k_filter", lambda x, k: x.masked_fill(x < x.topk(k + 1).values[..., -1:], NEG_INF),
         "k + 1"),
        ("gpt.top_p_filter", lambda x, p: top_p_keep_crossing_bug(x, p), "crosses p"),
        ("gpt.top_p_filter", lambda x, p: x, "sort the probabilities"),
    ],
)
def test_checkers_name_the_typical_mistake(name, wrong, hint):
    with pytest.raises(CheckFailed) as failure:
        CHECKS[name](wrong)
    assert hint in failure.value.hint
    assert failure.value.message.startswith("case ")


def top_p_keep_crossing_bug(logits, p):
    probs, order = torch.softmax(logits, -1).sort(-1, descending=True)
    drop_sorted = probs.cumsum(-1) > p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), NEG_INF)


def test_kv_cache_benchmark_quick_run_reports_identical_tokens():
    result = kv_bench.run(quick=True)
    json.dumps(result)
    assert result["metrics"]["identical_tokens"] is True
    assert result["metrics"]["new_tokens"] == 32 and result["metrics"]["speedup"] > 0
