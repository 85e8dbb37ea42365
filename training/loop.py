"""The loop every training stage shares: data order, steps, logging, validation, checkpoints, resume.

A stage (training/teacher.py, ...) builds its networks and optimisers and knows how to take one
step on a batch; this file does the rest, once. Everything random in a step draws from
`run.generator`, whose state is checkpointed with the weights and optimisers, and the data order
is a function of (seed, epoch), so `--resume` continues the exact run that was interrupted.
Multi-process (torchrun) splits each epoch's batches over ranks; rank 0 logs and saves.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from ddpo_ros.loading import resolve_device

from . import checkpoints


class EpochSampler(Sampler):
    """Batches of one epoch: a permutation drawn from (seed, epoch), this rank's share, from `start`."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                 start: int = 0):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch)).tolist()
        per_rank = n // (batch_size * world)  # equal batch counts on every rank (DDP needs it)
        self.batches = [order[(b * world + rank) * batch_size:(b * world + rank + 1) * batch_size]
                        for b in range(per_rank)][start:]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class Run:
    """What a stage needs from the loop: device, generator, process group, logging."""

    out: Path
    device: torch.device
    generator: torch.Generator            # this rank's randomness (noise, t)
    shared_generator: torch.Generator     # decisions every rank must make alike (e.g. CFG dropout)
    rank: int = 0
    world: int = 1
    writer: object = None
    grad_clip: float = 0.0
    scalars: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """A trainable module as the step should call it: DDP-wrapped when several processes train."""
        if self.world == 1:
            return module
        if self.device.type == "cuda":  # the reference converts MinkowskiBatchNorm to its sync version
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(module)

    def optimise(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, params) -> float:
        """zero_grad, backward, clip the global norm (train.grad_clip), step; returns the norm before clipping."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in params if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else math.inf)
        optimizer.step()
        return float(norm)


def setup(cfg, out: Path) -> Run:
    """Process group (torchrun sets WORLD_SIZE), device, seeds and the TensorBoard writer."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    try:
        device = resolve_device(cfg.train.device)  # training never falls back: a CPU run would take days
    except ValueError as err:
        raise ValueError(f"train.device: {err}") from None
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(cfg.train.seed)  # entry point: initial weights are the same on every rank
    generator = torch.Generator().manual_seed(cfg.train.seed + 7919 * (rank + 1))
    shared = torch.Generator().manual_seed(cfg.train.seed)
    writer = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            print("tensorboard not installed (pip install -e .[train]): no TensorBoard scalars", file=sys.stderr)
    return Run(out, device, generator, shared, rank, world, writer, cfg.train.grad_clip)


@dataclass
class Stage:
    """A training stage as the loop drives it."""

    models: dict[str, nn.Module]                         # role -> module: saved and restored
    optimizers: dict[str, torch.optim.Optimizer]
    step: Callable[[dict], dict[str, float]]             # one batch -> scalars to log
    validate: Callable[[int], dict[str, float]] | None = None
    train_set: object = None


def _log(run: Run, scalars: dict, step: int) -> None:
    if run.writer is not None:
        for k, v in scalars.items():
            run.writer.add_scalar(k, v, step)


def train(cfg, stage: Stage, run: Run, *, resume: bool = False) -> int:
    """Run `stage` to the end of cfg.train.epochs (or max_steps); returns the last step."""
    t = cfg.train
    progress = {"step": 0, "epoch": 0, "batch": 0}
    if resume:
        path = checkpoints.latest(run.out)
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {run.out / 'checkpoints'}")
        progress = checkpoints.load(path, stage.models, stage.optimizers)
        run.generator.set_state(torch.tensor(progress["generator"], dtype=torch.uint8))
        run.shared_generator.set_state(torch.tensor(progress["shared_generator"], dtype=torch.uint8))
        print(f"resumed from {path} (step {progress['step']})", file=sys.stderr)
    step, total = progress["step"], _total_steps(cfg, stage)
    bar = tqdm(total=total, initial=step, desc=cfg.stage, unit="step", file=sys.stderr, disable=not run.main)
    started, seen, done = time.perf_counter(), 0, False
    for epoch in range(progress["epoch"], t.epochs):
        start = progress["batch"] if epoch == progress["epoch"] else 0
        lr = t.lr * t.lr_decay ** (epoch // t.lr_decay_every) if t.lr_decay_every else t.lr
        for opt in stage.optimizers.values():  # a function of the epoch: nothing to restore on resume
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        stage.train_set.set_epoch(epoch)
        sampler = EpochSampler(len(stage.train_set), t.batch_size, t.seed, epoch, run.rank, run.world, start)
        loader = DataLoader(stage.train_set, batch_sampler=sampler, num_workers=cfg.data.num_workers)
        for b, batch in enumerate(loader, start=start):
            scalars = stage.step(batch)  # the stage sets train/eval modes: frozen networks stay in eval
            step, seen = step + 1, seen + t.batch_size * run.world
            bar.update(1)
            if step % t.log_every == 0 or step == total:
                scalars["lr"] = next(iter(stage.optimizers.values())).param_groups[0]["lr"]
                scalars["samples_per_s"] = seen / (time.perf_counter() - started)
                _log(run, scalars, step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(scalars.items())[:3]})
            last_of_epoch = b + 1 == start + len(sampler)
            if stage.validate is not None and run.main and (
                    (t.val_every and step % t.val_every == 0) or (not t.val_every and last_of_epoch)):
                _log(run, stage.validate(step), step)
            done = (bool(t.max_steps) and step >= t.max_steps) or _out_of_time(run, t, started)
            if run.main and (step % t.checkpoint_every == 0 or done or (last_of_epoch and epoch + 1 == t.epochs)):
                position = {"epoch": epoch + 1, "batch": 0} if last_of_epoch else {"epoch": epoch, "batch": b + 1}
                checkpoints.save(run.out, step, stage.models, stage.optimizers,
                                 inference_config(cfg, refiner="refiner" in stage.models),
                                 {"step": step, **position, "generator": run.generator.get_state().tolist(),
                                  "shared_generator": run.shared_generator.get_state().tolist()})
            if done:
                break
        if done:
            break
    bar.close()
    if run.main and checkpoints.latest(run.out) is not None:  # the run's result, where configs expect it
        checkpoints.publish_weights(run.out)
    return step


def _out_of_time(run: Run, t, started: float) -> bool:
    """train.max_minutes spent (a wall-time budget); rank 0's clock decides for every rank."""
    if not t.max_minutes:
        return False
    over = torch.tensor(float(time.perf_counter() - started > 60 * t.max_minutes))
    if run.world > 1:  # every rank must stop at the same step, or DDP's next all-reduce hangs
        over = over.to(run.device)
        dist.broadcast(over, src=0)
    return bool(over.item())


def _total_steps(cfg, stage: Stage) -> int:
    per_epoch = len(stage.train_set) // (cfg.train.batch_size * int(os.environ.get("WORLD_SIZE", "1")))
    total = per_epoch * cfg.train.epochs
    return min(total, cfg.train.max_steps) if cfg.train.max_steps else total


def inference_config(cfg, refiner: bool = True):
    """The ddpo_ros Config stored with the weights, so the Completer can use them as they are."""
    from dataclasses import replace

    from ddpo_ros.config import Config

    completion = cfg.completion if refiner else replace(cfg.completion, refine=False)
    return Config(model=cfg.model, diffusion=cfg.diffusion, completion=completion)
