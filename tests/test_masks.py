"""tformer.masks: causal and padding masks, True = may attend."""

from __future__ import annotations

import pytest
import torch

from tformer.masks import causal_mask, padding_mask


def test_causal_mask_is_lower_triangular():
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(3), expected)


def test_padding_mask_from_ids_and_from_lengths_agree():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    from_ids = padding_mask(ids, pad_id=0)
    from_lengths = padding_mask([3, 2], max_len=4)
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)[:, None, None, :]
    assert from_ids.shape == (2, 1, 1, 4)
    assert torch.equal(from_ids, expected) and torch.equal(from_lengths, expected)


def test_mask_helpers_reject_empty_sizes_float_ids_and_bad_lengths():
    with pytest.raises(ValueError, match="T_q=0 must be a positive integer"):
        causal_mask(0)
    with pytest.raises(TypeError, match="integer token ids"):
        padding_mask(torch.ones(2, 3))
    with pytest.raises(ValueError, match="max_len=2 is shorter"):
        padding_mask([3, 1], max_len=2)
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        padding_mask([3, -1])


def test_offset_causal_mask_lets_new_queries_see_the_cache_and_their_past():
    # 2 cached positions, 3 new queries at positions 2, 3, 4: query i sees keys 0..2+i
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(3, offset=2), expected)
    assert torch.equal(causal_mask(3, 5, offset=2), expected)
    assert torch.equal(causal_mask(4), causal_mask(4, 4, 0))
    assert torch.equal(causal_mask(1, offset=6), torch.ones(1, 7, dtype=torch.bool))  # one new token


def test_causal_mask_returns_a_fresh_tensor_each_call():
    a = causal_mask(3)
    a[0, 2] = True
    assert not causal_mask(3)[0, 2]


def test_offset_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="offset=-1 must be an int >= 0"):
        causal_mask(2, offset=-1)
    with pytest.raises(ValueError, match="offset=True"):
        causal_mask(2, offset=True)
