"""The two savings in a CPU training step: dropout's cheaper mask (tformer.nn.dropout) and the fused
Adam kernel (tformer.training.optim.make_optimizer)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tformer.nn.dropout import Dropout, dropout, keep_mask, level
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.training.optim import can_fuse, make_adamw, make_optimizer

N = 1_000_000


def kept_share(p: float) -> float:
    """The probability :func:`keep_mask` keeps an element: 1 − p rounded to 1/65,536."""
    return 1 - level(p) / 65536


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_the_mask_keeps_the_right_share(p):
    torch.manual_seed(0)
    mask = keep_mask((N,), p)
    assert mask.dtype == torch.bool and mask.shape == (N,)
    sigma = (p * (1 - p) / N) ** 0.5
    assert abs(mask.float().mean().item() - kept_share(p)) < 5 * sigma


def test_each_of_the_four_16_bit_lanes_of_a_64_bit_draw_is_unbiased():
    # random_() without the full range draws 63 bits, which would make one lane in four keep more
    torch.manual_seed(1)
    lanes = keep_mask((N, 4), 0.1).float().mean(0)
    sigma = (0.1 * 0.9 / N) ** 0.5
    for lane in lanes.tolist():
        assert abs(lane - kept_share(0.1)) < 5 * sigma


def test_neighbouring_elements_are_independent():
    torch.manual_seed(2)
    m = keep_mask((N,), 0.5).float()
    both = (m[:-1] * m[1:]).mean().item()  # P(keep, keep) = 0.25 for independent neighbours
    assert abs(both - 0.25) < 5 * (0.25 * 0.75 / N) ** 0.5


def test_p_moves_in_steps_of_one_65536th():
    assert level(0.1) == 6554 and kept_share(0.1) == pytest.approx(0.8999939, abs=1e-7)
    torch.manual_seed(3)
    assert keep_mask((1000,), 0.0).all()
    assert not keep_mask((1000,), 1.0).any()
    # p within 1/131,072 of 1 rounds to 65,536 of 65,536 values: nothing kept (no int16 lies above 32767)
    assert level(1.0 - 0.4 / 65536) == 65536 and not keep_mask((1000,), 1.0 - 0.4 / 65536).any()
    assert level(1.0 - 1 / 65536) == 65535 and keep_mask((200_000,), 1.0 - 1 / 65536).sum() < 20


def test_kept_elements_are_scaled_and_dropped_ones_are_zero():
    torch.manual_seed(4)
    x = torch.randn(3, 5, 7)  # 105 elements: not a multiple of 4
    torch.manual_seed(5)
    y = dropout(x, 0.25)
    torch.manual_seed(5)
    mask = keep_mask(x.shape, 0.25)
    assert level(0.25) == 16384  # exact: the survivors are scaled by exactly 1 / 0.75
    assert torch.equal(y, torch.where(mask, x * (65536 / 49152), torch.zeros_like(x)))
    assert 0 < mask.sum() < mask.numel()


def test_the_gradient_passes_the_kept_elements_only_scaled_like_f_dropout():
    x = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(6)
    y = dropout(x, 0.2)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad, kept.float() / kept_share(0.2))


def test_the_expected_value_is_unchanged():
    torch.manual_seed(7)
    y = dropout(torch.ones(N), 0.1)
    assert abs(y.mean().item() - 1.0) < 5 * (0.1 * 0.9 / N) ** 0.5 / 0.9  # unbiased


def test_the_same_seed_gives_the_same_mask_and_another_seed_another():
    x = torch.ones(4096)
    torch.manual_seed(8)
    a = dropout(x, 0.3)
    torch.manual_seed(8)
    b = dropout(x, 0.3)
    torch.manual_seed(9)
    c = dropout(x, 0.3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, dropout(x, 0.3))  # the generator moves on


def test_no_dropout_out_of_training_at_zero_and_all_dropped_at_one():
    x = torch.randn(10, 10)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_bfloat16_stays_bfloat16():
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    torch.manual_seed(10)
    y = dropout(x, 0.1)
    assert y.dtype == torch.bfloat16 and ((y == 0) | (y == x * (1 / kept_share(0.1)))).all()


@pytest.mark.parametrize("p, error", [(1.5, ValueError), (-0.1, ValueError), ("0.1", TypeError)])
def test_bad_p_is_named(p, error):
    with pytest.raises(error, match="p"):
        dropout(torch.ones(3), p)


def test_the_module_is_a_torch_dropout_without_parameters():
    m = Dropout(0.1)
    assert isinstance(m, nn.Dropout) and repr(m) == repr(nn.Dropout(0.1))
    assert m.state_dict() == {}
    x = torch.ones(1000)
    assert torch.equal(m.eval()(x), x)
    torch.manual_seed(11)
    y = m.train()(x)
    assert y.unique().tolist() == [0.0, pytest.approx(1 / 0.9, rel=1e-4)]
    inplace = Dropout(0.5, inplace=True).train()
    z = torch.ones(100)
    inplace(z)
    assert (z == 0).any()  # the in-place variant is F.dropout's, on the tensor itself


def test_the_transformer_uses_it_everywhere_it_drops():
    model = Transformer(TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, num_heads=2,
                                          num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32))
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(type(m) is Dropout for m in drops)


def test_make_optimizer_is_fused_on_the_cpu_and_steps_like_the_loop():
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    twin = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    twin.load_state_dict(model.state_dict())
    start = model[0].weight.detach().clone()
    fused = make_optimizer(model, lr=1e-2)
    loop = torch.optim.Adam(twin.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-9)
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    for _ in range(5):
        x = torch.randn(32, 8)
        for m, opt in ((model, fused), (twin, loop)):
            opt.zero_grad()
            F.mse_loss(m(x), torch.zeros(32, 4)).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (model[0].weight - start).abs().max() > 1e-3  # the steps moved the weights


def test_can_fuse_only_cpu_and_cuda_tensors():
    assert can_fuse([torch.zeros(2), torch.zeros(3)])
    assert not can_fuse([torch.zeros(2), torch.zeros(2, device="meta")])
    assert make_adamw(nn.Linear(2, 2)).defaults["fused"] is True


def test_the_step_benchmark_swaps_only_the_dropout_modules():
    from tformer.benchmarks.step import with_torch_dropout

    model = Transformer(TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, num_heads=2,
                                          num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32))
    ref = with_torch_dropout(model)
    drops = [m for m in ref.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(type(m) is nn.Dropout for m in drops)
    assert [m.p for m in drops] == [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert all(type(m) is Dropout for m in model.modules() if isinstance(m, nn.Dropout))  # a copy
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_the_step_benchmark_reports_every_variant_against_the_reference():
    from tformer.benchmarks import step

    result = step.run(quick=True)
    rows = {row["variant"]: row for row in result["table"]}
    assert list(rows) == list(step.VARIANTS)
    assert rows[step.REFERENCE]["speed-up (quartiles)"] == "1 (reference)"
    m = result["metrics"]
    assert m["reference_speedup"] == 1.0
    for key in ("dropout", "fused_adam", "both"):
        assert m[f"{key}_speedup_q1"] <= m[f"{key}_speedup"] <= m[f"{key}_speedup_q3"]
        assert m[f"{key}_ms_per_step"] > 0
    assert f"{m['both_speedup']:.2f}×" in result["summary"]


def test_a_race_takes_turns_in_an_order_that_reverses_every_round():
    from tformer.benchmarks.race import race

    seen = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def train(self, steps):
            seen.append((self.name, steps))

    runs = {n: Fake(n) for n in "abc"}
    assert race(runs, 5, 2) is runs
    assert seen == [(n, 5) for n in "abccbaabc"]  # round 0 (warm-up), then 2 counted rounds
