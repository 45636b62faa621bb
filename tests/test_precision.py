"""Mixed precision decided once (tformer.runtime.resolve_precision) and given by the one training
loop to every recipe: bfloat16 autocast where asked, float32 loss, optimizer state and checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny_translation_run
from safetensors import safe_open

import tformer.runtime as runtime
from tformer.__main__ import main
from tformer.data.corpus import builtin_splits
from tformer.data.text import CharTokenizer
from tformer.nn.attention import scaled_dot_product_attention
from tformer.recipes.language_model import CharLMSettings, new_char_gpt, train_char_lm
from tformer.recipes.translation import Settings, train_translation
from tformer.runtime import resolve_precision
from tformer.training.loop import TrainState, evaluate, train_epoch
from tformer.training.objectives import LabelSmoothingLoss


@pytest.fixture
def hardware(monkeypatch):
    """``hardware(native=..., speedup=...)`` pretends this CPU has (or lacks) native bfloat16 and
    that a bfloat16 matrix product measures ``speedup`` times as fast."""

    def set_(native: bool, speedup: float = 3.0) -> None:
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
        monkeypatch.setattr(runtime, "bf16_speedup", lambda device_type="cpu", *a, **k: speedup)

    return set_


# --------------------------------------------------------------------------- the rule


def test_float32_is_float32_whatever_the_hardware(hardware):
    for native in (True, False):
        hardware(native)
        assert resolve_precision("float32", "cpu") == torch.float32


def test_auto_picks_bf16_only_where_the_cpu_has_it_and_it_measures_faster(hardware):
    hardware(native=True, speedup=3.0)
    assert resolve_precision("auto", "cpu") == torch.bfloat16
    hardware(native=True, speedup=runtime.AUTO_MIN_SPEEDUP - 0.1)  # supported but not faster enough
    assert resolve_precision("auto", "cpu") == torch.float32
    hardware(native=False, speedup=3.0)  # emulated bfloat16: never
    assert resolve_precision("auto", "cpu") == torch.float32


def test_bf16_without_native_support_is_an_error_that_says_so(hardware):
    hardware(native=True)
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    hardware(native=False)
    with pytest.raises(ValueError, match=r"precision='bf16' but this CPU has neither AVX512-BF16 nor AMX"):
        resolve_precision("bf16", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_bf16_on_a_cuda_device_that_is_not_there_is_an_error():
    with pytest.raises(ValueError, match=r"no bfloat16 support on cuda"):
        resolve_precision("bf16", "cuda")
    assert resolve_precision("auto", "cuda") == torch.float32


def test_bad_precisions_are_rejected_with_the_choices():
    for bad in ("fp16", "bfloat16", "", None, 16):
        with pytest.raises(ValueError, match=r"must be one of 'auto', 'float32', 'bf16'"):
            resolve_precision(bad, "cpu")
    with pytest.raises(ValueError, match=r"precision='half' must be one of auto, float32, bf16"):
        Settings(precision="half")
    with pytest.raises(ValueError, match=r"precision='fp16' must be one of"):
        CharLMSettings(precision="fp16")
    with pytest.raises(ValueError, match=r"torch.float32, torch.bfloat16 or torch.float16"):
        train_epoch(*_tiny_setup()[:4], precision=torch.int8, progress=False)


def test_the_cpu_check_reads_proc_cpuinfo_when_torch_cannot_tell(monkeypatch):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert runtime.cpu_has_native_bf16()
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx2", "amx_tile", "amx_bf16"})
    assert runtime.cpu_has_native_bf16()
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert not runtime.cpu_has_native_bf16()


def test_the_measured_speedup_is_a_positive_ratio():
    assert runtime.bf16_speedup("cpu") > 0
    assert runtime.bf16_speedup("mps") == 1.0


# --------------------------------------------------------------------------- the loop


def _tiny_setup(seed: int = 0):
    model, opt, sched, batches, _, _ = tiny_translation_run(seed)
    return model, batches(0)[:4], LabelSmoothingLoss(0.1, ignore_index=0), opt


def test_a_bf16_step_gives_a_finite_loss_close_to_float32_and_keeps_float32_state():
    losses = {}
    for precision in ("float32", torch.bfloat16):
        model, batches, loss_fn, opt = _tiny_setup()
        torch.manual_seed(1)  # the same dropout masks in both runs
        state = TrainState()
        train_epoch(model, batches, loss_fn, opt, precision=precision, state=state, progress=False)
        losses[str(precision)] = state.history["step_loss"]
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
        moments = [t for s in opt.state.values() for t in s.values() if t.is_floating_point()]
        assert moments and all(t.dtype == torch.float32 for t in moments)
        assert evaluate(model, batches, loss_fn, precision=precision) > 0
    f32, bf16 = losses["float32"], losses["torch.bfloat16"]
    assert all(torch.isfinite(torch.tensor(bf16)))
    # bfloat16 keeps 8 significant bits: the losses agree to about 1%, never exactly
    torch.testing.assert_close(torch.tensor(bf16), torch.tensor(f32), rtol=0.02, atol=0.0)
    assert bf16 != f32


def test_under_bf16_the_loss_and_the_softmax_statistics_are_float32():
    model, batches, loss_fn, _ = _tiny_setup()
    batch = batches[0]
    with runtime.autocast_context("cpu", torch.bfloat16):
        logits = model(*batch.inputs)
        loss = loss_fn(logits, batch.target)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    q = 3 * torch.randn(2, 5, 8)
    with runtime.autocast_context("cpu", torch.bfloat16):
        _, weights = scaled_dot_product_attention(q, q, q)
        scores = q @ q.transpose(-2, -1) / 8**0.5  # bfloat16, as inside
    # PyTorch's softmax on bfloat16 computes its max and sum in float32 and rounds only the result
    # (the fused kernel of training does the same): exactly a float32 softmax, then rounded
    assert scores.dtype == weights.dtype == torch.bfloat16
    assert torch.equal(weights, torch.softmax(scores.float(), dim=-1).bfloat16())


@pytest.mark.parametrize("precision", ["float32", torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_inf_loss_stops_the_run_before_the_step_in_either_precision(precision, bad):
    model, batches, loss_fn, opt = _tiny_setup()

    def poisoned(logits, target):
        return loss_fn(logits, target) * bad

    before = copy.deepcopy(model.state_dict())
    with pytest.raises(FloatingPointError, match=rf"the training loss became {bad} at step 1"):
        train_epoch(model, batches, poisoned, opt, precision=precision, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no step taken


# --------------------------------------------------------------------------- the recipes and the CLI


def test_the_translation_recipe_trains_in_bf16_and_saves_float32_checkpoints(hardware, tmp_path):
    hardware(native=True)
    splits = builtin_splits()
    splits = {"train": splits["train"][:64], "valid": splits["valid"][:8]}
    s = Settings(model=dict(d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                            dim_feedforward=32), epochs=1, batch_tokens=300, precision="bf16")
    _, state = train_translation(splits, tmp_path, s, max_steps=3, device="cpu", progress=False, log=None)
    assert state.step == 3 and all(torch.isfinite(torch.tensor(state.history["step_loss"])))
    files = list(tmp_path.glob("*.safetensors"))
    assert files
    for path in files:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                assert not t.is_floating_point() or t.dtype == torch.float32, (path.name, key, t.dtype)


def test_the_translation_recipe_refuses_bf16_where_the_cpu_has_none_before_any_work(hardware, tmp_path):
    hardware(native=False)
    with pytest.raises(ValueError, match="precision='bf16' but this CPU has neither"):
        train_translation({"train": []}, tmp_path / "run", Settings(precision="bf16"), device="cpu")
    assert not (tmp_path / "run").exists()


def test_the_char_lm_recipe_passes_its_precision_to_the_loop(hardware, monkeypatch):
    import tformer.recipes.language_model as lm

    seen = []

    def spy(*args, precision="float32", **kwargs):
        seen.append(precision)

    monkeypatch.setattr(lm, "train_epoch", spy)
    tok = CharTokenizer.from_text("abcdefgh")
    model = new_char_gpt(tok, block_size=8, num_layers=1, num_heads=2, d_model=16)
    ids = tok.encode("abcdefgh" * 10)
    train_char_lm(model, ids, CharLMSettings(block_size=8, steps=2, precision="auto"))
    train_char_lm(model, ids, CharLMSettings(block_size=8, steps=2))
    assert seen == ["auto", "float32"]


def test_the_cli_takes_precision_and_rejects_bf16_without_hardware(hardware, tmp_path, capsys):
    hardware(native=False)
    code = main(["train", "--data", "builtin", "--out", str(tmp_path / "o"), "--precision", "bf16",
                 "--quiet"])
    assert code == 2
    assert "precision='bf16' but this CPU has neither AVX512-BF16 nor AMX" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["train", "--out", str(tmp_path / "p"), "--precision", "fp16"])
    assert stop.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_under_cpu_autocast_the_fused_attention_kernel_runs_in_float32():
    # PyTorch's bfloat16 flash-attention backward on the CPU is several times slower than float32;
    # the products around it (projections, FFN) stay bfloat16
    from tformer.nn.attention import fused_attention

    q, k, v = (torch.randn(2, 2, 5, 8).bfloat16().requires_grad_() for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    with runtime.autocast_context("cpu", torch.bfloat16):
        out = fused_attention(q, k, v, mask)
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert out.dtype == torch.float32 and torch.equal(out, want)
    out.sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()
    plain = fused_attention(q.detach(), k.detach(), v.detach(), mask)  # no autocast: the inputs' dtype
    assert plain.dtype == torch.bfloat16
