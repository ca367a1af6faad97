"""Where each process trains: the device, mixed precision, and DistributedDataParallel when
started by torchrun (``WORLD_SIZE`` > 1; gloo on CPU, NCCL on CUDA) with its sums across ranks."""
from __future__ import annotations

import os
import re
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .errors import TrainError

#: The devices a run may name (``train.device``, ``--device``).
DEVICES = r"auto|cpu|cuda(:\d+)?"


def choose_device(device_arg: str, world: int = 1, local_rank: int = 0, cuda_count: int | None = None) -> str:
    """The device of this process for ``train.device``/``--device`` (``cuda_count``: the CUDA
    devices there are, default this machine's). Under torchrun (``world`` > 1) "auto" and "cuda"
    mean the GPU of this process's ``LOCAL_RANK``, and "cuda:N" is refused: every rank would take
    GPU N (NCCL refuses two ranks on one device); CUDA_VISIBLE_DEVICES chooses the GPUs there."""
    # --device as train.device: torch also takes "mps", "meta", ... (a traceback later on)
    if not isinstance(device_arg, str) or not re.fullmatch(DEVICES, device_arg):
        raise TrainError(f"device {device_arg!r}: not a device (auto, cpu, cuda or cuda:N)")
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    want = device_arg
    if want == "auto":
        want = "cuda" if cuda_count else "cpu"
    if want.startswith("cuda") and not cuda_count:
        raise TrainError(f"device {device_arg!r}: CUDA is not available")
    if world > 1 and ":" in want:
        raise TrainError(f"device {device_arg!r}: with {world} processes (torchrun) each uses the GPU of its "
                         "LOCAL_RANK: use --device cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
    if world > 1 and want == "cuda":
        want = f"cuda:{local_rank}"
    if want.startswith("cuda") and int(want.partition(":")[2] or 0) >= cuda_count:
        raise TrainError(f"device {device_arg!r}: this machine has {cuda_count} CUDA device(s)"
                         + (f", too few for local rank {local_rank}" if world > 1 else ""))
    return want


def _env_int(name: str, default: int, low: int, high: int | None = None) -> int:
    """The integer in environment variable ``name`` (``default`` when unset), in [low, high)."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value >= high):
        bound = f">= {low}" + ("" if high is None else f" and < WORLD_SIZE ({high})")
        raise TrainError(f"environment variable {name}={text!r}: must be an integer {bound} "
                         "(torchrun sets it; unset it for a single process)")
    return value


def ranks_from_env() -> tuple[int, int, int]:
    """``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (torchrun's; 1, 0, 0 when unset), checked: a
    value that is no integer, or no rank of the world, was a traceback (or a silent wrong run)."""
    world = _env_int("WORLD_SIZE", 1, 1)
    return world, _env_int("RANK", 0, 0, world), _env_int("LOCAL_RANK", 0, 0, world)


class Dist:
    """This process's rank and device; every method is a no-op in a single process."""

    def __init__(self, device_arg: str):
        self.world, self.rank, self.local_rank = ranks_from_env()
        self.device = torch.device(choose_device(device_arg, self.world, self.local_rank))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.enabled = self.world > 1
        if self.enabled:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` under DDP, which averages the gradients over the ranks in the backward."""
        if not self.enabled:
            return module
        # Some stages leave a head unused (DC only, WA only), hence find_unused_parameters.
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       find_unused_parameters=True)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def amp_dtype(device: torch.device, amp: str):
    """The autocast dtype for ``train.amp`` on ``device``; None: full precision."""
    if device.type != "cuda" or amp == "off":
        if amp in ("bf16", "fp16") and device.type != "cuda":
            warnings.warn(f"train.amp={amp!r} ignored: mixed precision is used on CUDA only", stacklevel=3)
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16
