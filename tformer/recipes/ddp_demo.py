"""Data-parallel training of a tiny Transformer on the built-in corpus, one process per device.

Launch it with torchrun (``python -m torch.distributed.run`` is the same program)::

    torchrun --standalone --nproc_per_node=2 -m tformer.recipes.ddp_demo --steps 20 --out runs/ddp

Every step takes the next ``global_batch`` sentence pairs of the built-in corpus; process ``rank`` trains on its
:func:`tformer.training.distributed.shard` of them (``global_batch / world_size`` pairs) with
:func:`tformer.training.loop.train_epoch` on a model wrapped in ``DistributedDataParallel``. The loss is
:class:`tformer.training.objectives.GlobalMeanLoss`, so the gradients, and hence the whole loss curve,
are those of one process that trains on the full global batch (up to float rounding). Rank 0
writes ``DIR/loss.json`` with the loss per target token of every step, over all processes.

Dropout is 0 and the weights are float64 by default so that runs can be compared number for
number: the processes add up their numbers in a different order than one process does, and in
float32 that rounding (about 1e-7) is amplified by Adam, which divides each gradient coordinate
by its own running size, until the curves differ in the third digit after a dozen steps. One
process changes the same way when only its thread count changes; in float64 the rounding stays
around 1e-16 and the curves agree to the precision of the float32 loss (about 1e-7).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

import tformer._checks as _checks
from tformer.data.corpus import generate_pairs
from tformer.nn.transformer import Transformer, TransformerConfig
from tformer.recipes.translation import Tokenizers
from tformer.runtime import all_reduce
from tformer.training import distributed
from tformer.training.distributed import DistInfo
from tformer.training.loop import TrainState, train_epoch
from tformer.training.objectives import GlobalMeanLoss, LabelSmoothingLoss
from tformer.training.optim import make_optimizer, noam_scheduler

# TransformerConfig fields (all but the vocabularies) of the tiny model every process trains.
TINY_MODEL = dict(d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                  dim_feedforward=64, dropout=0.0, max_len=64)


@dataclass
class RunConfig:
    """The sizes of a run; the same config on 1 or W processes gives the same loss curve."""

    steps: int = 20
    global_batch: int = 16  # sentence pairs per step, over all processes
    model: dict = field(default_factory=lambda: dict(TINY_MODEL))  # TransformerConfig fields
    warmup: int = 10
    factor: float = 1.0
    seed: int = 0
    naive_mean: bool = False  # True: each process averages over its own tokens (inexact; for the chapter)
    dtype: str = "float64"  # of the weights and the arithmetic; see the module docstring

    def __post_init__(self) -> None:
        for name in ("steps", "global_batch", "warmup"):
            _checks.positive_int(name, getattr(self, name))
        if not isinstance(self.model, dict):
            raise TypeError(f"model must be a dict of TransformerConfig fields, got {type(self.model).__name__}")
        self.model = {**TINY_MODEL, **self.model}
        self.model_config(8, 8)  # checks the sizes, once, in TransformerConfig
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype={self.dtype!r} must be 'float64' or 'float32'")

    def model_config(self, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0) -> TransformerConfig:
        return TransformerConfig(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                                 pad_id=pad_id, **self.model)


def _build(cfg: RunConfig, rank: int, world_size: int):
    """This process's batches (one per step) and the model, identical on every process."""
    if cfg.global_batch % world_size:
        raise ValueError(
            f"global_batch={cfg.global_batch} must be divisible by the number of processes "
            f"({world_size}) so that every process gets the same number of pairs"
        )
    # the built-in corpus's own generator: the same pairs in every process, without building
    # the whole 30k-pair training split (which takes seconds) just to use a few hundred pairs
    pairs = generate_pairs(cfg.steps * cfg.global_batch, seed=cfg.seed)
    tok = Tokenizers.build(pairs, "word")
    batches = []
    for step in range(cfg.steps):
        chunk = pairs[step * cfg.global_batch : (step + 1) * cfg.global_batch]
        mine = distributed.shard(chunk, rank, world_size)  # global_batch / world_size pairs
        batches += tok.batches(mine, batch_size=len(mine), shuffle=False)  # one batch
    assert len(batches) == cfg.steps
    torch.manual_seed(cfg.seed)  # the same initial weights everywhere (DDP also copies rank 0's)
    pad_id = tok.tgt_vocab.pad_id
    model = Transformer(cfg.model_config(len(tok.src_vocab), len(tok.tgt_vocab), pad_id))
    return batches, model.to(getattr(torch, cfg.dtype)), pad_id


def train_curve(cfg: RunConfig, info: DistInfo | None = None, progress: bool = False) -> dict:
    """Train ``cfg.steps`` steps; return the loss curve and the token counts of every process.

    ``info`` comes from :func:`tformer.training.distributed.init_distributed` (all processes call this
    together); None trains in this single process without any process group.

    Returns:
        A dict: ``"loss"`` is the global mean loss per target token at each step, ``"tokens"``
        the n_tokens of every process at each step (one list per rank), ``"world_size"`` W and
        ``"config"`` the run's settings.
    """
    rank, world, device = (0, 1, torch.device("cpu")) if info is None else (info.rank, info.world_size, info.device)
    batches, model, pad_id = _build(cfg, rank, world)
    model = distributed.wrap_ddp(model, info) if info is not None else model
    if cfg.naive_mean:
        loss_fn = LabelSmoothingLoss(0.1, ignore_index=pad_id, reduction="mean")  # S_r / n_r
    else:
        loss_fn = GlobalMeanLoss(LabelSmoothingLoss(0.1, ignore_index=pad_id, reduction="sum"), pad_id)
    optimizer = make_optimizer(model)
    scheduler = noam_scheduler(optimizer, cfg.model["d_model"], cfg.warmup, cfg.factor)
    state = TrainState()
    train_epoch(model, batches, loss_fn, optimizer, scheduler, device=device, state=state,
                progress=progress and rank == 0, desc=f"rank {rank}")
    # Recover this process's summed loss S_r at each step from what train_epoch recorded, then
    # add over processes: the global mean is Σ_r S_r / N whichever loss was minimised.
    values = torch.tensor(state.history["step_loss"], dtype=torch.float64)
    n_local = torch.tensor([int(b.n_tokens) for b in batches], dtype=torch.float64)
    n_global = all_reduce(n_local)
    s_local = values * n_local if cfg.naive_mean else values * n_global / world
    loss = (all_reduce(s_local) / n_global).tolist()
    tokens = [n_local.long().tolist()]
    if info is not None and world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, tokens[0])
        tokens = gathered
    return {"loss": loss, "tokens": tokens, "world_size": world, "config": dataclasses.asdict(cfg)}


# What a gloo process can print when it is torn down while its peer still uses the connection: the
# work is done and saved, only the exit fails. launch() runs again on this failure and no other.
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def launch_command(nproc: int, out: str | os.PathLike, *args: str) -> list[str]:
    """The torchrun command that runs this demo on ``nproc`` processes of this machine, writing
    ``out/loss.json`` (``args``: more options of :func:`main`, such as ``"--steps", "20"``)."""
    nproc = _checks.positive_int("nproc", nproc)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "tformer.recipes.ddp_demo", *args, "--out", str(out)]


def launch(nproc: int, out: str | os.PathLike, *args: str, timeout: float | None = None,
           retries: int = 1) -> subprocess.CompletedProcess:
    """Run :func:`launch_command` and return the finished process (its output captured as text).

    A launch whose only fault is gloo's teardown abort (:data:`GLOO_TEARDOWN_ABORT`) is run again,
    at most ``retries`` times; any other failure, or the abort once more, raises ``RuntimeError``
    with the end of the processes' error output."""
    retries = _checks.int_at_least("retries", retries, 0)
    cmd = launch_command(nproc, out, *args)
    for _ in range(retries + 1):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode == 0 or GLOO_TEARDOWN_ABORT not in done.stderr:
            break
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited with code {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="torchrun --standalone --nproc_per_node=2 -m tformer.recipes.ddp_demo",
        description="Train a tiny Transformer with DistributedDataParallel; write DIR/loss.json.",
    )
    parser.add_argument("--out", required=True, help="directory for loss.json (written by rank 0)")
    parser.add_argument("--steps", type=int, default=RunConfig.steps)
    parser.add_argument("--global-batch", type=int, default=RunConfig.global_batch,
                        help="sentence pairs per step over all processes (divisible by their number)")
    parser.add_argument("--d-model", type=int, default=TINY_MODEL["d_model"])
    parser.add_argument("--seed", type=int, default=RunConfig.seed)
    parser.add_argument("--naive-mean", action="store_true",
                        help="average the loss over each process's own tokens (the inexact way)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default=RunConfig.dtype,
                        help="float64 (default) keeps rounding far below the 1e-5 comparison tolerance")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                        help="default: nccl with CUDA, else gloo")
    args = parser.parse_args(argv)
    try:
        cfg = RunConfig(steps=args.steps, global_batch=args.global_batch, model={"d_model": args.d_model},
                        seed=args.seed, naive_mean=args.naive_mean, dtype=args.dtype)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    try:
        info = distributed.init_distributed(args.backend)
    except RuntimeError as error:
        print(f"tformer.recipes.ddp_demo: {error}", file=sys.stderr)
        return 2
    try:
        result = train_curve(cfg, info)
        if info.is_main:
            os.makedirs(args.out, exist_ok=True)
            path = os.path.join(args.out, "loss.json")
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1)
            os.replace(path + ".tmp", path)
            print(f"{info.world_size} process(es), {cfg.steps} steps: final loss {result['loss'][-1]:.4f} -> {path}")
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
