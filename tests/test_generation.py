"""Greedy decoding, beam search, cross-attention maps, the Translator and BLEU."""

from __future__ import annotations

import pytest
import torch
from helpers import NEG_INF, padded_src, small_transformer, tiny_gpt

from tformer.inference.generation import (
    beam_search,
    generate,
    greedy_decode,
    length_penalty,
    sample,
    top_k_filter,
    top_p_filter,
)


def _finished(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


def test_greedy_with_kv_cache_equals_greedy_without_cache():
    model, src = small_transformer(), padded_src()
    for eos in (2, 5, 7):
        a = greedy_decode(model, src, max_len=12, eos_id=eos)
        b = greedy_decode(model, src, max_len=12, eos_id=eos, use_cache=False)
        assert torch.equal(a, b)


def test_greedy_pads_after_eos_and_strips_bos():
    model, src = small_transformer(), padded_src()
    out = greedy_decode(model, src, max_len=15, eos_id=5)
    for row in out.tolist():
        if 5 in row:
            assert all(t == 0 for t in row[row.index(5) + 1 :])
    # the first generated token is the argmax after <bos>, never <bos> itself
    memory = model.encode(src)
    first = model.decode(torch.full((4, 1), 1), memory, model.make_src_mask(src))[:, -1].argmax(-1)
    assert torch.equal(out[:, 0], first)


def test_beam_size_one_is_greedy_decoding():
    model, src = small_transformer(), padded_src()
    for eos, alpha in ((2, 0.6), (5, 0.0), (6, 1.0)):
        g = greedy_decode(model, src, max_len=10, eos_id=eos)
        b = beam_search(model, src, beam_size=1, max_len=10, eos_id=eos, alpha=alpha)
        assert torch.equal(g, b)


def _logprob(model, src, seq, eos):
    """Sum of log p(y_t | y_<t, x) of ``seq`` (list of ids, no <bos>) under teacher forcing."""
    tgt_in = torch.tensor([[1] + seq[:-1]])
    logp = torch.log_softmax(model(src[None], tgt_in).float(), dim=-1)[0]
    return sum(logp[t, y].item() for t, y in enumerate(seq))




def test_beam_search_scores_at_least_as_well_as_greedy_here():
    model, src = small_transformer(seed=4), padded_src(2)
    g = greedy_decode(model, src, max_len=8, eos_id=3)
    b = beam_search(model, src, beam_size=4, max_len=8, eos_id=3, alpha=0.0)
    for i in range(src.shape[0]):
        sg = _logprob(model, src[i], _finished(g[i].tolist(), 3), 3)
        sb = _logprob(model, src[i], _finished(b[i].tolist(), 3), 3)
        assert sb >= sg - 1e-4


def test_length_penalty_values_by_hand():
    lp = length_penalty(torch.tensor([1, 7]), 0.6)
    torch.testing.assert_close(lp, torch.tensor([1.0, 2.0**0.6]))
    assert length_penalty(torch.tensor([9]), 0.0).item() == 1.0


def test_decoding_rejects_bad_arguments():
    model, src = small_transformer(max_len=16), padded_src()
    with pytest.raises(ValueError, match="max_len=40 exceeds"):
        greedy_decode(model, src, max_len=40)
    with pytest.raises(TypeError, match="integer token ids"):
        greedy_decode(model, src.float())
    with pytest.raises(ValueError, match="beam_size=0"):
        beam_search(model, src, beam_size=0)




# ----------------------------------------------------------------------------- Translator










# ----------------------------------------------------------------------------- BLEU






def test_greedy_generation_is_identical_with_and_without_the_cache_even_past_block_size():
    model = tiny_gpt()
    prompt = torch.randint(0, 11, (2, 5))
    # 5 + 20 > block_size = 12: the window slides, so both paths must crop the same way
    a = generate(model, prompt, 20, do_sample=False, use_cache=True)
    b = generate(model, prompt, 20, do_sample=False, use_cache=False)
    assert a.shape == (2, 25)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :5], prompt)


def test_sampled_generation_is_identical_with_and_without_the_cache_for_the_same_seed():
    model = tiny_gpt()
    prompt = torch.randint(0, 11, (3, 4))
    kw = dict(temperature=0.8, top_k=6, top_p=0.9)
    a = generate(model, prompt, 15, do_sample=True, generator=torch.Generator().manual_seed(1), **kw)
    b = generate(model, prompt, 15, do_sample=True, use_cache=False, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b)


def test_top_k_1_sampling_equals_greedy_decoding():
    model = tiny_gpt()
    prompt = torch.randint(0, 11, (2, 3))
    sampled = generate(model, prompt, 8, do_sample=True, top_k=1)
    assert torch.equal(sampled, generate(model, prompt, 8, do_sample=False))


def test_prompt_longer_than_block_size_uses_its_last_block_size_tokens():
    model = tiny_gpt()
    prompt = torch.randint(0, 11, (1, 30))
    for use_cache in (True, False):
        out = generate(model, prompt, 4, do_sample=False, use_cache=use_cache)
        cropped = generate(model, prompt[:, -12:], 4, do_sample=False, use_cache=use_cache)
        assert torch.equal(out[:, :30], prompt)
        assert torch.equal(out[:, 30:], cropped[:, 12:])


def test_generate_restores_training_mode_and_zero_tokens_returns_prompt():
    model = tiny_gpt().train()
    prompt = torch.randint(0, 11, (1, 3))
    assert torch.equal(generate(model, prompt, 0, do_sample=True), prompt)
    generate(model, prompt, 2, do_sample=True)
    assert model.training


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
    model = tiny_gpt()
    args = dict(max_new_tokens=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        generate(model, torch.zeros(1, 2, dtype=torch.long), do_sample=True, **args)


def test_sample_rejects_bad_logits():
    with pytest.raises(TypeError, match="floating-point"):
        sample(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"shape \(B, V\)"):
        sample(torch.zeros(2, 3, 4))
