"""One place that turns a schema, its kernels and its twin into a working op.

For every op: the C++ schema (from chimera._C), or the same schema defined here when
the extension is not in use; the reference twin registered as the kernel for each
device the extension does not cover; a fake kernel for torch.compile / meta tensors;
autograd. `backend()` reports what runs where.
"""
import torch

from . import _extension

DEVICES = ("cpu", "cuda")
_DISPATCH_KEY = {"cpu": "CPU", "cuda": "CUDA"}
_fallback_lib = None  # torch.library.Library holding schemas/kernels defined from Python
_backends = {}        # op name -> {device: "cpp" | "cuda" | "reference"}
schemas = {}          # op name -> schema text as declared from Python (checked against C++)


def _library():
    global _fallback_lib
    if _fallback_lib is None:
        # FRAGMENT: the namespace may already exist from the C++ library.
        _fallback_lib = torch.library.Library("chimera", "FRAGMENT")
    return _fallback_lib


def define(name, schema, reference, fake, backward=None, setup_context=None):
    """Make `torch.ops.chimera.<name>` usable on every device. `schema` is the text
    after the op name, identical to the one in csrc/ops.cpp (a test checks this)."""
    qualname = f"chimera::{name}"
    schemas[name] = schema
    from_cpp = _extension.module is not None and _schema_from_cpp(name)
    if not from_cpp:
        _library().define(name + schema)
    backends = {}
    for device in DEVICES:
        key = _DISPATCH_KEY[device]
        if from_cpp and torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key):
            backends[device] = "cpp" if device == "cpu" else "cuda"
        else:
            _library().impl(name, reference, key)
            backends[device] = "reference"
    _backends[name] = backends
    torch.library.register_fake(qualname)(fake)
    if backward is not None:
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    return getattr(torch.ops.chimera, name).default


def _schema_from_cpp(name):
    try:
        getattr(torch.ops.chimera, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def backend(device=None):
    """Which implementation runs each op: {op: {device: "cpp" | "cuda" | "reference"}},
    or {op: impl} for one device."""
    if device is None:
        return {op: dict(b) for op, b in _backends.items()}
    device = torch.device(device).type
    return {op: b[device] for op, b in _backends.items()}
