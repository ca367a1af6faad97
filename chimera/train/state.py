"""What a checkpoint holds besides the weights: the run's position, the optimiser, scheduler and
gradient scaler, and every random number generator, so that a resumed run continues bit-exactly.

The ``training_state`` dict of ``last.pt``/``best.pt`` (keys :data:`STATE_KEYS`) is a file format:
checkpoints written by earlier versions must keep resuming, so keys are only ever added.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

import numpy as np
import torch

STATE_KEYS = ("stage", "epoch", "batch", "global_step", "optimizer", "scheduler", "scaler", "rng", "accum",
              "best", "seed", "world_size", "config_json", "ranks")


@dataclass
class Progress:
    """Where a run stands: the next batch to train (stage, epoch, batch within the epoch), the
    optimiser steps taken, the best validation SI-SDRi so far, and the epoch's running loss."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float = -math.inf
    loss_sum: float = 0.0  # sum over the epoch's items so far of their training loss
    count: int = 0  # ... and how many items

    @classmethod
    def of(cls, state: dict) -> Progress:
        """The position recorded in a checkpoint's training state."""
        return cls(state["stage"], state["epoch"], state["batch"], state["global_step"], state["best"],
                   state["accum"]["loss_sum"], state["accum"]["count"])

    def next_epoch(self, epochs_in_stage: int) -> None:
        """Move to the start of the next epoch (of the next stage after the stage's last)."""
        self.epoch += 1
        if self.epoch == epochs_in_stage:
            self.stage, self.epoch = self.stage + 1, 0
        self.batch, self.loss_sum, self.count = 0, 0.0, 0


def training_state(progress: Progress, optimizer, scheduler, scaler, *, seed: int, world_size: int,
                   config: dict, fresh: bool = False, ranks: list | None = None) -> dict:
    """The ``training_state`` of a checkpoint at ``progress``. ``fresh``: the position is the
    start of a stage, which begins with a new optimiser, scheduler and scaler (none is saved).
    ``ranks``: under DDP every rank's :func:`rank_part`, in rank order (each rank draws its own
    dropout masks and sums its own items' loss); ``rng`` and ``accum`` are the saving process's."""
    return {
        "stage": progress.stage, "epoch": progress.epoch, "batch": progress.batch, "global_step": progress.step,
        "optimizer": {} if fresh else optimizer.state_dict(),
        "scheduler": None if fresh or scheduler is None else scheduler.state_dict(),
        "scaler": None if fresh or not scaler.is_enabled() else scaler.state_dict(),
        **rank_part(progress),
        "best": progress.best, "seed": seed, "world_size": world_size, "config_json": json.dumps(config),
        "ranks": list(ranks or []),
    }


def rank_part(progress: Progress) -> dict:
    """What differs between DDP ranks: the generators and the epoch's running loss."""
    return {"rng": rng_state(), "accum": {"loss_sum": progress.loss_sum, "count": progress.count}}


def rng_state() -> dict:
    """Every generator a training step may draw from: torch (CPU and CUDA), NumPy, Python.
    CUDA's only once this process uses CUDA (reading them started it: a CPU run on a GPU
    machine took GPU memory at its first checkpoint); until then they are as seeded."""
    np_state = np.random.get_state()
    cuda = torch.cuda.is_initialized()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else [],
        "cuda_device": torch.cuda.current_device() if cuda else -1,  # the one this process draws from
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        # The devices this machine has: a run saved with more GPUs visible resumes with fewer
        # (set_rng_state_all raised an IndexError).
        for i, s in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
        # This process's device continues the saving process's own (saved on device k, resumed
        # on device 0: device 0 got the saver's unused copy of it, as seeded).
        own = state.get("cuda_device", -1)
        if 0 <= own < len(cuda) and torch.cuda.is_initialized():
            torch.cuda.set_rng_state(cuda[own], torch.cuda.current_device())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of DDP rank ``rank``'s own draws (dropout) from optimiser step ``step`` on: one
    per (seed, rank, step), none of them a run's seed (as seed + rank would be)."""
    return int(np.random.SeedSequence([seed, rank, step, 0xD15EED]).generate_state(1, np.uint64)[0])
