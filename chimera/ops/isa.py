"""Which instruction-set path the CPU kernels take (csrc/cpu/isa.h).

Every hot loop of the CPU kernels is compiled for baseline x86-64, AVX2 + FMA and
AVX-512 (on aarch64 and other targets: portable code only) and chosen at run time: the
best the CPU supports, or ``CHIMERA_CPU_CAPABILITY=default|avx2|avx512`` (read once when
the extension loads, like ATen's ``ATEN_CPU_CAPABILITY``), or :func:`set_cpu_capability`.
Without the extension the references run and the capability is ``None``.
"""
import contextlib

from . import _extension

CAPABILITIES = ("default", "avx2", "avx512")


def cpu_capability():
    """The path the CPU kernels take now, or None when the references run."""
    return None if _extension.module is None else _extension.module.cpu_capability()


def supported_cpu_capabilities():
    """The paths this build has and this CPU runs, baseline first (empty without the extension)."""
    return () if _extension.module is None else tuple(_extension.module.supported_cpu_capabilities())


def set_cpu_capability(name):
    """Choose the CPU kernels' path for the whole process (ValueError for an unknown name,
    RuntimeError for a path this CPU or build cannot run)."""
    if _extension.module is None:
        raise RuntimeError(f"chimera._C is not in use ({_extension.unavailable_reason}): no CPU kernel paths")
    _extension.module.set_cpu_capability(name)


@contextlib.contextmanager
def use_cpu_capability(name):
    """Run a block on one CPU path, then restore the previous one."""
    previous = cpu_capability()
    set_cpu_capability(name)
    try:
        yield
    finally:
        set_cpu_capability(previous)
