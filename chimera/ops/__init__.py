"""Fused kernels as torch ops (``torch.ops.chimera.*``), with pure-PyTorch twins in
``chimera.ops.reference``. Each op works under autograd, torch.compile and on meta
tensors; ``backend()`` says which implementation runs on each device."""
from ._extension import info as extension_info
from ._registry import backend
from .affinity import affinity_stats, affinity_stats_backward
from .codebook import codebook_lookup
from .overlap_add import overlap_add, overlap_add_backward

__all__ = [
    "affinity_stats", "affinity_stats_backward", "backend", "codebook_lookup", "extension_info",
    "overlap_add", "overlap_add_backward",
]
