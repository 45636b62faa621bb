"""The recurrent encoder–decoders (GRU, with and without additive attention): equations by hand,
padding, step-by-step decoding, bad arguments, and the generic generation and training code."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import padded_src

from tformer.data.corpus import load_builtin
from tformer.data.text import Vocab, tokenize_en, tokenize_zh
from tformer.inference.generation import beam_search, greedy_decode, reorder_caches
from tformer.nn.rnn import AdditiveAttention, RecurrentState, RNNConfig, RNNSeq2Seq, final_states
from tformer.recipes.translation import Tokenizers, Translator
from tformer.training.loop import fit
from tformer.training.objectives import LabelSmoothingLoss
from tformer.training.optim import make_optimizer, noam_scheduler

KINDS = ("none", "additive")


def small_rnn(attention: str = "additive", V: int = 23, seed: int = 0) -> RNNSeq2Seq:
    """An untrained GRU seq2seq (19 source ids, ``V`` target ids) whose output bias is spread."""
    torch.manual_seed(seed)
    model = RNNSeq2Seq(RNNConfig(19, V, attention=attention, embed_dim=12, hidden_size=16, max_len=32))
    with torch.no_grad():
        model.generator.bias.normal_(0, 2.0)
    return model.eval()


def gru_by_hand(gru: torch.nn.GRU, x: torch.Tensor, h: torch.Tensor, suffix: str = "_l0") -> torch.Tensor:
    """The GRU equations of torch.nn.GRU's documentation, one step at a time → states (T, H)."""
    W_ih, W_hh = getattr(gru, "weight_ih" + suffix), getattr(gru, "weight_hh" + suffix)
    b_ih, b_hh = getattr(gru, "bias_ih" + suffix), getattr(gru, "bias_hh" + suffix)
    H = h.shape[-1]
    out = []
    for x_t in x:
        gi, gh = W_ih @ x_t + b_ih, W_hh @ h + b_hh
        r = torch.sigmoid(gi[:H] + gh[:H])  # reset gate
        z = torch.sigmoid(gi[H:2 * H] + gh[H:2 * H])  # update gate
        n = torch.tanh(gi[2 * H:] + r * gh[2 * H:])  # candidate state
        h = (1 - z) * n + z * h
        out.append(h)
    return torch.stack(out)


# --------------------------------------------------------------------------- the equations


@torch.no_grad()
def test_encoder_states_equal_the_gru_equations_stepped_by_hand_in_both_directions():
    model = small_rnn()
    src = torch.tensor([[5, 9, 3, 17, 4, 0, 0]])  # 5 real tokens, then padding
    memory = model.encode(src)  # (1, 7, 32)
    x = model.encoder.embed(src[0, :5])  # (5, 12), dropout is off in eval mode
    gru, H = model.encoder.rnn, 16
    forward = gru_by_hand(gru, x, torch.zeros(H))
    backward = gru_by_hand(gru, x.flip(0), torch.zeros(H), "_l0_reverse").flip(0)
    torch.testing.assert_close(memory[0, :5, :H], forward)
    torch.testing.assert_close(memory[0, :5, H:], backward)
    assert torch.equal(memory[0, 5:], torch.zeros(2, 2 * H))  # padding is never read, stays zero


@torch.no_grad()
def test_decoder_gru_equals_the_equations_stepped_by_hand():
    gru = small_rnn("none").decoder.rnn
    x, h0 = torch.randn(6, gru.input_size), torch.randn(gru.hidden_size)
    out, h_n = gru(x[None], h0[None, None])
    by_hand = gru_by_hand(gru, x, h0)
    torch.testing.assert_close(out[0], by_hand)
    torch.testing.assert_close(h_n[0, 0], by_hand[-1])


@torch.no_grad()
def test_summary_is_the_encoders_final_state_in_each_direction():
    model = small_rnn("none")
    src = padded_src()
    lengths = (src != 0).sum(-1)
    memory = model.encode(src)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        model.encoder.embed(src), lengths, batch_first=True, enforce_sorted=False)
    _, h_n = model.encoder.rnn(packed)  # (2, B, H): last forward state, last backward state
    torch.testing.assert_close(final_states(memory, lengths), torch.cat([h_n[0], h_n[1]], dim=-1))


@torch.no_grad()
def test_additive_attention_weights_equal_a_hand_computed_example():
    att = AdditiveAttention(query_dim=1, key_dim=1, attn_dim=1)
    att.w_query.weight.fill_(2.0)  # W
    att.w_key.weight.fill_(1.0)  # U
    att.w_key.bias.fill_(0.0)
    att.v.weight.fill_(3.0)  # v
    h = torch.tensor([[[0.0], [1.0], [-1.0], [5.0]]])  # (1, S=4, 1)
    s = torch.tensor([[0.25]])  # W s = 0.5
    mask = torch.tensor([[True, True, True, False]])  # the last key is padding
    context, weights = att(s, att.project_keys(h), h, mask)
    e = [3 * math.tanh(0.5 + hj) for hj in (0.0, 1.0, -1.0)]  # e_j = v tanh(W s + U h_j)
    alpha = [math.exp(v) / sum(math.exp(u) for u in e) for v in e]
    torch.testing.assert_close(weights, torch.tensor([alpha + [0.0]]))
    torch.testing.assert_close(context, torch.tensor([[alpha[1] - alpha[2]]]))  # Σ α_j h_j


@torch.no_grad()
def test_fully_masked_attention_row_gives_zero_weights_not_nan():
    att = AdditiveAttention(3, 4, 5)
    h = torch.randn(2, 6, 4)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    context, weights = att(torch.randn(2, 3), att.project_keys(h), h, mask)
    assert torch.equal(weights, torch.zeros(2, 6)) and torch.equal(context, torch.zeros(2, 4))


# --------------------------------------------------------------------------- padding and decoding


@pytest.mark.parametrize("attention", KINDS)
@torch.no_grad()
def test_padding_does_not_change_the_outputs(attention):
    model = small_rnn(attention)
    src = padded_src()  # rows 1 and 3 are padded
    tgt = torch.randint(3, 23, (4, 5), generator=torch.Generator().manual_seed(2))
    batch = model(src, tgt)
    for i in range(4):
        n = int((src[i] != 0).sum())
        alone = model(src[i : i + 1, :n], tgt[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    # and what sits at the padded positions is never read
    other = src.clone()
    other[src == 0] = 7
    torch.testing.assert_close(model(other, tgt, src_mask=model.make_src_mask(src)), batch)


@pytest.mark.parametrize("attention", KINDS)
@torch.no_grad()
def test_step_by_step_decoding_equals_the_teacher_forced_pass(attention):
    model = small_rnn(attention)
    src = padded_src()
    tgt = torch.randint(3, 23, (4, 6), generator=torch.Generator().manual_seed(3))
    src_mask = model.make_src_mask(src)
    full = model(src, tgt)  # (4, 6, 23)
    memory = model.encode(src, src_mask)
    caches = model.new_caches()
    steps = [model.decode(tgt[:, :2], memory, src_mask, caches=caches, start=0)]  # a prefix of 2, then 1 by 1
    for t in range(2, 6):
        steps.append(model.decode(tgt[:, t : t + 1], memory, src_mask, caches=caches, start=t))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert len(caches[0][0]) == 6


@torch.no_grad()
def test_attention_weights_are_kept_per_step_and_sum_to_one_over_real_tokens():
    model = small_rnn("additive")
    model.keep_weights = True
    src = padded_src()
    model(src, torch.randint(3, 23, (4, 5)))
    w = model.attn_weights  # (B, T, S)
    assert w.shape == (4, 5, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 5))
    assert torch.equal(w[3, :, 2:], torch.zeros(5, 5))  # row 3 has 2 real tokens


@pytest.mark.parametrize("attention", KINDS)
def test_teacher_forced_pass_backpropagates_into_every_parameter(attention):
    model = small_rnn(attention).train()
    model(padded_src(), torch.randint(3, 23, (4, 5))).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("attention", KINDS)
def test_greedy_decode_runs_through_the_generic_loop_with_and_without_cache(attention):
    model, src = small_rnn(attention), padded_src()
    for eos in (2, 5, 7):
        cached = greedy_decode(model, src, max_len=12, eos_id=eos)
        uncached = greedy_decode(model, src, max_len=12, eos_id=eos, use_cache=False)
        assert torch.equal(cached, uncached)
        for row in cached.tolist():  # padding after <eos>
            if eos in row:
                assert set(row[row.index(eos) + 1 :]) <= {0}


@torch.no_grad()
def test_greedy_decode_picks_the_argmax_of_the_teacher_forced_logits():
    model, src = small_rnn("additive"), padded_src()
    out = greedy_decode(model, src, max_len=8, eos_id=99 % 23, bos_id=1)
    ys = torch.cat([torch.ones(4, 1, dtype=torch.long), out], dim=1)
    logits = model(src, ys[:, :-1])
    assert torch.equal(logits.argmax(-1), out)


@pytest.mark.parametrize("attention", KINDS)
def test_beam_search_reorders_the_recurrent_state(attention):
    model, src = small_rnn(attention), padded_src()
    # beam 1 is greedy, except that beam search makes a hypothesis still open at the cap end with <eos>
    one, greedy = beam_search(model, src, beam_size=1, max_len=10, eos_id=5), greedy_decode(model, src, max_len=10, eos_id=5)
    assert one.shape == greedy.shape and torch.equal(one[:, :-1], greedy[:, :-1])
    out = beam_search(model, src, beam_size=4, max_len=10, eos_id=5)
    assert out.shape[0] == 4
    for i in range(4):  # each sentence decodes the same alone (padding and beam rows kept apart)
        n = int((src[i] != 0).sum())
        alone = beam_search(model, src[i : i + 1, :n], beam_size=4, max_len=10, eos_id=5)
        assert alone[0].tolist() == out[i, : alone.shape[1]].tolist()
        assert set(out[i, alone.shape[1]:].tolist()) <= {0}


@pytest.mark.parametrize("attention", KINDS)
@torch.no_grad()
def test_reordered_caches_continue_the_reordered_hypotheses(attention):
    # as in beam search: four hypotheses of one sentence, then a reordering of them
    model = small_rnn(attention)
    src = padded_src()[1:2].repeat(4, 1)  # one padded sentence, four beams
    src_mask = model.make_src_mask(src)
    tgt = torch.randint(3, 23, (4, 4), generator=torch.Generator().manual_seed(4))
    memory = model.encode(src, src_mask)
    caches = model.new_caches()
    model.decode(tgt[:, :3], memory, src_mask, caches=caches, start=0)
    rows = torch.tensor([2, 0, 0, 3])
    reorder_caches(caches, rows)
    step = model.decode(tgt[:, 3:], memory, src_mask, caches=caches, start=3)  # (4, 1, V)
    expected = model(src, torch.cat([tgt[rows, :3], tgt[:, 3:]], dim=1))[:, -1:]
    torch.testing.assert_close(step, expected, atol=1e-5, rtol=1e-5)


def test_translator_translates_with_a_recurrent_model():
    pairs = load_builtin("train")[:20]
    tok = Tokenizers("word", Vocab.build([tokenize_zh(p.src) for p in pairs]),
                     Vocab.build([tokenize_en(p.tgt) for p in pairs]))
    torch.manual_seed(0)
    model = RNNSeq2Seq(RNNConfig(len(tok.src_vocab), len(tok.tgt_vocab), hidden_size=16, embed_dim=8))
    translator = Translator(model, tok, device="cpu")
    greedy = translator.translate([p.src for p in pairs[:3]], max_len=5)
    beam = translator.translate([p.src for p in pairs[:3]], beam_size=3, max_len=5)
    assert len(greedy) == len(beam) == 3 and all(isinstance(s, str) for s in greedy + beam)


# --------------------------------------------------------------------------- training


def test_the_generic_training_loop_teaches_it_to_copy_short_sequences():
    torch.manual_seed(0)
    model = RNNSeq2Seq(RNNConfig(12, 12, attention="additive", embed_dim=16, hidden_size=32, dropout=0.0))
    g = torch.Generator().manual_seed(0)

    class CopyBatch:  # the loop reads .inputs, .target, .n_tokens and .to(device)
        def __init__(self):
            self.src = torch.randint(3, 12, (32, 5), generator=g)
            self.inputs = (self.src, torch.cat([torch.ones(32, 1, dtype=torch.long), self.src[:, :-1]], 1))
            self.target, self.n_tokens = self.src, self.src.numel()

        def to(self, device):
            return self

    batches = [CopyBatch() for _ in range(30)]
    loss_fn = LabelSmoothingLoss(0.0, ignore_index=0)
    optimizer = make_optimizer(model)
    state = fit(model, batches, batches[:4], epochs=4, loss_fn=loss_fn, optimizer=optimizer,
                scheduler=noam_scheduler(optimizer, 32, 20, 1.0), progress=False, log=None)
    assert state.history["valid_loss"][-1] < 0.5 * math.log(12)  # far below guessing among 9 ids
    assert state.history["valid_loss"][-1] < state.history["valid_loss"][0]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("overrides", "error", "words"), [
    (dict(hidden_size=0), ValueError, "hidden_size=0"),
    (dict(embed_dim=2.5), TypeError, "embed_dim"),
    (dict(attention="dot"), ValueError, "attention='dot'"),
    (dict(dropout=1.0), ValueError, "dropout=1.0"),
    (dict(tie_output=1), TypeError, "tie_output"),
    (dict(pad_id=30), ValueError, "pad_id=30"),
    (dict(max_len=-1), ValueError, "max_len=-1"),
])
def test_bad_config_values_raise_errors_naming_them(overrides, error, words):
    with pytest.raises(error, match=words):
        RNNConfig(19, 23, **overrides)


def test_config_round_trips_through_a_dict_and_rejects_unknown_fields():
    cfg = RNNConfig(19, 23, attention="none", hidden_size=8)
    assert RNNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="num_heads"):
        RNNConfig.from_dict({**cfg.to_dict(), "num_heads": 4})
    with pytest.raises(TypeError, match="RNNConfig"):
        RNNSeq2Seq(cfg.to_dict())


def test_bad_inputs_raise_errors_naming_the_argument():
    model = small_rnn()
    src, tgt = padded_src(), torch.randint(3, 23, (4, 5))
    with pytest.raises(TypeError, match="src"):
        model(src.float(), tgt)
    with pytest.raises(ValueError, match="src holds token id 19"):
        model(torch.full((2, 3), 19), tgt[:2])
    with pytest.raises(ValueError, match="same batch size"):
        model(src, tgt[:3])
    with pytest.raises(TypeError, match="src_mask must have dtype torch.bool"):
        model(src, tgt, src_mask=(src != 0).long())
    with pytest.raises(ValueError, match="prefix"):
        model(src, tgt, src_mask=torch.tensor([True, False, True, True, True, True, True]))
    with pytest.raises(ValueError, match="row 1 has no real token"):
        model(torch.tensor([[4, 5], [0, 0]]), tgt[:2])
    memory = model.encode(src)
    with pytest.raises(ValueError, match="memory must have shape"):
        model.decode(tgt, memory[..., :8])
    caches = model.new_caches()
    model.decode(tgt[:, :1], memory, caches=caches, start=0)
    with pytest.raises(ValueError, match="start=0 must equal"):
        model.decode(tgt[:, 1:2], memory, caches=caches, start=0)
    with pytest.raises(ValueError, match="caches must be"):
        model.decode(tgt, memory, caches=[])
    with pytest.raises(ValueError, match="start=3 needs caches"):
        model.decode(tgt, memory, start=3)


def test_recurrent_state_is_a_growing_cache_that_reorders_its_rows():
    state = RecurrentState()
    assert not state.static and len(state) == 0
    state.h = torch.arange(6.0).view(3, 2)
    state.reorder(torch.tensor([2, 2, 0]))
    assert state.h.tolist() == [[4.0, 5.0], [4.0, 5.0], [0.0, 1.0]]
