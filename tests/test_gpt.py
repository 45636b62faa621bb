from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_gpt

from tformer.inference.generation import generate
from tformer.nn.gpt import GPT, GPTConfig
from tformer.training.optim import make_adamw

# ---------------------------------------------------------------- model


def test_logits_have_one_row_per_position_and_no_loss_without_targets():
    model = tiny_gpt()
    logits, loss = model(torch.randint(0, 11, (3, 7)))
    assert logits.shape == (3, 7, 11)
    assert loss is None


def test_loss_equals_cross_entropy_of_the_logits():
    model = tiny_gpt()
    idx, targets = torch.randint(0, 11, (2, 9)), torch.randint(0, 11, (2, 9))
    logits, loss = model(idx, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)))


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_changing_a_future_token_leaves_earlier_logits_unchanged(positions):
    model = tiny_gpt(positions=positions)
    idx = torch.randint(0, 11, (1, 10))
    changed = idx.clone()
    changed[0, 6] = (idx[0, 6] + 1) % 11
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_forward_with_cache_in_chunks_equals_one_full_forward():
    model = tiny_gpt()
    idx = torch.randint(0, 11, (2, 10))
    full, _ = model(idx)
    caches = model.new_caches()
    parts = [model(idx[:, :4], caches=caches)[0]]  # prompt: empty cache, causal fast path
    parts.append(model(idx[:, 4:5], caches=caches)[0])  # one token
    parts.append(model(idx[:, 5:8], caches=caches)[0])  # a chunk over a filled cache: explicit mask
    parts.append(model(idx[:, 8:], caches=caches, start=8)[0])
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_weight_tying_shares_one_tensor_and_untied_does_not():
    tied, untied = tiny_gpt(), tiny_gpt(tie_weights=False)
    assert tied.lm_head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == 11 * 16


def test_optimizer_decays_matrices_but_not_gains():
    model = tiny_gpt()
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




# ---------------------------------------------------------------- generation












# ---------------------------------------------------------------- sampling filters














# ---------------------------------------------------------------- bad input




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
    model = tiny_gpt()
    with pytest.raises(error, match=match):
        model(idx)
    with pytest.raises(error, match=match):
        generate(model, idx, 2, do_sample=True)


def test_forward_rejects_too_long_inputs_and_a_wrong_start():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="exceed block_size=12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    caches = model.new_caches()
    model(torch.zeros(1, 3, dtype=torch.long), caches=caches)
    with pytest.raises(ValueError, match="start=0 must equal the number of cached positions"):
        model(torch.zeros(1, 1, dtype=torch.long), caches=caches, start=0)
    with pytest.raises(ValueError, match="targets must have the shape"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))




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






# ---------------------------------------------------------------- benchmark pieces












# ---------------------------------------------------------------- exercise checkers














