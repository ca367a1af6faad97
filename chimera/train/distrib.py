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


class Dist:
    """This process's rank and device; every method is a no-op in a single process."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        # --device as train.device: torch also takes "mps", "meta", ... (a traceback later on)
        if not isinstance(device_arg, str) or not re.fullmatch(DEVICES, device_arg):
            raise TrainError(f"device {device_arg!r}: not a device (auto, cpu, cuda or cuda:N)")
        want = device_arg
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda") and not torch.cuda.is_available():
            raise TrainError(f"device {device_arg!r}: CUDA is not available")
        if self.world > 1 and want == "cuda":
            want = f"cuda:{self.local_rank}"
        self.device = torch.device(want)
        if self.device.type == "cuda" and (self.device.index or 0) >= torch.cuda.device_count():
            raise TrainError(f"device {device_arg!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
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
