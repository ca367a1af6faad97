"""Fused kernels as torch ops (``torch.ops.chimera.*``), with pure-PyTorch twins in
``chimera.ops.reference``. Each op works under autograd, torch.compile and on meta
tensors; ``backend()`` says which implementation runs on each device and
``cpu_capability()`` which instruction-set path the CPU kernels take (``chimera.ops.isa``)."""
from ._extension import info as extension_info
from ._registry import backend
from .affinity import affinity_stats, affinity_stats_backward
from .codebook import codebook_lookup
from .isa import cpu_capability, set_cpu_capability, supported_cpu_capabilities, use_cpu_capability
from .overlap_add import overlap_add, overlap_add_backward

# Ops first, then the functions that describe or steer them (not ops: no reference twin).
OPS = ["affinity_stats", "affinity_stats_backward", "codebook_lookup", "overlap_add", "overlap_add_backward"]
CONTROLS = ["backend", "cpu_capability", "extension_info", "set_cpu_capability", "supported_cpu_capabilities",
            "use_cpu_capability"]
__all__ = OPS + CONTROLS
