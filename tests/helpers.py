"""Small models, data and markers shared by several test files (importable: tests/ is on sys.path)."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tformer.data.batches import make_batches
from tformer.data.corpus import load_builtin
from tformer.data.text import Vocab, tokenize_en, tokenize_zh
from tformer.nn.gpt import GPT, GPTConfig
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.training.optim import make_optimizer, noam_scheduler

NEG_INF = float("-inf")
HAS_GLOO = dist.is_available() and dist.is_gloo_available()
needs_gloo = pytest.mark.skipif(not HAS_GLOO, reason="torch.distributed with the gloo backend is not available")
cpu_only = pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="an accelerator is present"
)


def tiny_gpt(**overrides) -> GPT:
    """A seeded 2-layer GPT over 11 token ids with a 12-token context, in eval mode."""
    torch.manual_seed(0)
    kw = dict(vocab_size=11, block_size=12, num_layers=2, num_heads=2, d_model=16)
    kw.update(overrides)
    return GPT(GPTConfig(**kw)).eval()


def small_transformer(V: int = 23, seed: int = 0, max_len: int = 32) -> Transformer:
    """An untrained encoder–decoder whose output bias is spread, so decoding is not trivial."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(19, V, d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                            dim_feedforward=64, dropout=0.1, max_len=max_len)
    model = Transformer(cfg)
    with torch.no_grad():
        model.generator.bias.normal_(0, 2.0)
    return model.eval()


def padded_src(seed: int = 1) -> torch.Tensor:
    """Source ids (4, 7) with two padded rows."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 19, (4, 7), generator=g)
    src[1, 5:] = 0
    src[3, 2:] = 0
    return src


def tiny_translation_run(seed: int = 0, n: int = 48):
    """A 1-layer Transformer on ``n`` built-in pairs with its optimizer, schedule and batches per epoch."""
    pairs = load_builtin("train")[:n]
    sv = Vocab.build([tokenize_zh(p.src) for p in pairs])
    tv = Vocab.build([tokenize_en(p.tgt) for p in pairs])
    torch.manual_seed(seed)
    cfg = TransformerConfig(len(sv), len(tv), d_model=16, num_heads=2, num_encoder_layers=1,
                            num_decoder_layers=1, dim_feedforward=32, dropout=0.1, max_len=64)
    model = Transformer(cfg)
    opt = make_optimizer(model)
    sched = noam_scheduler(opt, 16, warmup=4, factor=1.0)

    def batches(epoch: int):
        return make_batches(pairs, sv, tv, tokenize_zh, tokenize_en, batch_size=8, shuffle=True, seed=epoch)

    return model, opt, sched, batches, sv, tv


def chromium() -> str:
    """Path of Debian's headless Chromium, or skip the test saying how to install it."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed: run `bash scripts/install_chromium.sh` (Debian's chromium)")


class StepTable(nn.Module):
    """Quacks like a :class:`tformer.nn.transformer.Transformer` for decoding: after the token at
    position t the log-probabilities are ``logp[t, token]``. ``tables`` is one ``{prev: {tok: p}}``
    per position (the last one repeats); everything not listed gets 1e-9."""

    def __init__(self, tables: list[dict[int, dict[int, float]]] | torch.Tensor, V: int = 6,
                 max_len: int = 16, pad_id: int = 0, bos_id: int = 1):
        super().__init__()
        self.config = type("Config", (), {"max_len": max_len, "tgt_vocab_size": V, "pad_id": pad_id})()
        self.pad_id, self.bos_id = pad_id, bos_id
        if isinstance(tables, torch.Tensor):  # (positions, V, V) probabilities
            probs = tables.double()
        else:
            probs = torch.full((len(tables), V, V), 1e-9, dtype=torch.float64)
            for t, table in enumerate(tables):
                for prev, row in table.items():
                    for tok, p in row.items():
                        probs[t, prev, tok] = p
        probs = probs.div(probs.sum(-1, keepdim=True))
        self.register_buffer("logp", probs.log())
        self._exact = probs.log().tolist()  # plain floats for logprob

    def table(self, t: int) -> torch.Tensor:
        return self.logp[min(t, self.logp.shape[0] - 1)]

    def make_src_mask(self, src):
        return (src != self.pad_id)[:, None, None, :]

    def encode(self, src, src_mask):
        return torch.zeros(src.shape[0], src.shape[1], 1)

    def new_caches(self):
        return []

    def decode(self, ids, memory, src_mask, caches=None, start=0):
        rows = [self.table(start + i)[ids[:, i]] for i in range(ids.shape[1])]
        return torch.stack(rows, dim=1).float()  # (N, T, V)

    def logprob(self, seq: tuple[int, ...]) -> float:
        """Exact log P(seq) in float64 (seq without <bos>)."""
        prev, total = self.bos_id, 0.0
        for t, tok in enumerate(seq):
            total += self._exact[min(t, len(self._exact) - 1)][prev][tok]
            prev = tok
        return total
