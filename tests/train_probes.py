"""Test-side probes of the trainer, for tests/test_train.py: in the test process, and in the
processes it starts (``python tests/train_probes.py [--slow S] [--count FILE] [--sgd FILE] --
train ...`` runs ``chimera train ...`` with the probes in place). The trainer carries no test hook.

- ``--slow S``: reading a training item takes S more seconds (so a test can kill a run mid-epoch);
- ``--count FILE``: FILE receives the number of training items read (an independent step count);
- ``--sgd FILE``: plain SGD replaces Adam, and the gradients of the first step, as the optimiser
  sees them (after DDP's reduction), go to FILE.<rank>;
- ``--nan-rank R``: the training loss is NaN on rank R (DDP) from its second step on;
- ``--rng FILE``: the generators' state as the first training forward starts go to FILE.<rank>;
- ``--stop-at N``: every rank raises KeyboardInterrupt as it starts optimiser step N + 1;
- ``--pg FILE``: FILE.<rank> receives whether the process group is still up once the command returns.
"""
import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

from chimera.cli import main as chimera_main
from chimera.train import data as train_data
from chimera.train import solver
from chimera.train.state import rng_state


def slow_and_counted(delay: float, counter: list):
    """Wrap the "demo" data set: every training item read takes ``delay`` s more and is counted."""
    base = train_data.DATASETS["demo"]

    class Probed(base):
        def __getitem__(self, i):
            if self.train:
                counter[0] += 1
                time.sleep(delay)
            return super().__getitem__(i)

    return Probed


class RecordingSGD(torch.optim.SGD):
    """SGD (its update is proportional to the gradient, so a sum over ranks instead of the mean
    shows in the weights, unlike with Adam) that saves the gradients of its first step."""

    def __init__(self, params, lr, path):
        super().__init__(params, lr=lr)
        self.path, self.steps = path, 0

    def step(self, closure=None):
        if self.steps == 0 and self.path is not None:
            grads = [None if p.grad is None else p.grad.detach().clone()
                     for group in self.param_groups for p in group["params"]]
            torch.save(grads, f"{self.path}.{os.environ.get('RANK', '0')}")
        self.steps += 1
        return super().step(closure)


def sgd_optimizer(path):
    """A stand-in for :func:`chimera.train.solver.make_optimizer`: RecordingSGD, constant rate."""
    def make(model, stage, tcfg, steps_per_epoch):
        return RecordingSGD(model.parameters(), float(stage["lr"]), path), None, "constant"
    return make


def nan_on_rank(rank: int):
    """Wrap the trainer's loss module: NaN on `rank` from the second call in training on."""
    base = solver._LossModule.forward
    calls = [0]

    def forward(self, mixture, sources):
        loss = base(self, mixture, sources)
        if self.training and int(os.environ.get("RANK", "0")) == rank:
            calls[0] += 1
            if calls[0] >= 2:
                return loss * float("nan")
        return loss

    solver._LossModule.forward = forward


def record_rng(path):
    """Wrap the trainer's loss module: the generators' state at the first training forward goes to path.<rank>."""
    base = solver._LossModule.forward
    done = [False]

    def forward(self, mixture, sources):
        if self.training and not done[0]:
            done[0] = True
            torch.save(rng_state(), f"{path}.{os.environ.get('RANK', '0')}")
        return base(self, mixture, sources)

    solver._LossModule.forward = forward


def stop_at(step: int):
    """Wrap Trainer._step: KeyboardInterrupt (on every rank alike) before optimiser step ``step`` + 1."""
    base = solver.Trainer._step

    def _step(self, model, run, progress, batch, b):
        if progress.step == step:
            raise KeyboardInterrupt
        return base(self, model, run, progress, batch, b)

    solver.Trainer._step = _step


def main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--slow", type=float, default=0.0)
    p.add_argument("--count")
    p.add_argument("--sgd")
    p.add_argument("--nan-rank", type=int)
    p.add_argument("--rng")
    p.add_argument("--stop-at", type=int)
    p.add_argument("--pg")
    p.add_argument("chimera_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    counter = [0]
    train_data.DATASETS["demo"] = slow_and_counted(args.slow, counter)
    if args.sgd:
        solver.make_optimizer = sgd_optimizer(args.sgd)
    if args.nan_rank is not None:
        nan_on_rank(args.nan_rank)
    if args.rng:
        record_rng(args.rng)
    if args.stop_at is not None:
        stop_at(args.stop_at)
    rest = args.chimera_args[1:] if args.chimera_args[:1] == ["--"] else args.chimera_args
    rc = chimera_main(rest)
    if args.count:
        with open(args.count, "w") as f:
            f.write(str(counter[0]))
    if args.pg:
        with open(f"{args.pg}.{os.environ.get('RANK', '0')}", "w") as f:
            f.write(str(dist.is_initialized()))
        # a rank that exits non-zero first makes torchrun kill the others, perhaps before they
        # write theirs: wait (a while at most) for every rank's file, without a process group
        world = int(os.environ.get("WORLD_SIZE", "1"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(os.path.exists(f"{args.pg}.{k}") for k in range(world)):
            time.sleep(0.05)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
