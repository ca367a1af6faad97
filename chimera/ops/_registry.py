"""One place that turns a schema, its kernels and its twin into a working op.

For every op: the C++ schema (from chimera._C), or the same schema defined here when
the extension is not in use; the reference twin registered as the kernel for each
device the extension does not cover; a fake kernel for torch.compile / meta tensors;
autograd. `backend()` reports what runs where.

A CUDA kernel runs only on a GPU our library holds an image for (an architecture of
the build's TORCH_CUDA_ARCH_LIST, or PTX the driver can compile). That is checked once
per device, at the first op there: without an image, one warning and the reference twin
on that device (an error with CHIMERA_REQUIRE_EXT=1). The check sits on the dispatcher's
BackendSelect key, below autograd and above the kernels, so every caller passes it
(autograd's backward, torch.compile'd code, inference mode).
"""
import threading
import warnings

import torch

from . import _extension

DEVICES = ("cpu", "cuda")
_DISPATCH_KEY = {"cpu": "CPU", "cuda": "CUDA"}
_fallback_lib = None  # torch.library.Library holding schemas/kernels defined from Python
_guard_lib = None     # torch.library.Library holding the kernel-image checks
_backends = {}        # op name -> {device: "cpp" | "cuda" | "reference"}
schemas = {}          # op name -> schema text as declared from Python (checked against C++)
_BELOW_BACKEND_SELECT = torch._C._dispatch_keyset_full_after(torch._C.DispatchKey.BackendSelect)
_image_ok = {}        # torch.device -> whether our kernels run there (probed once)
_image_lock = threading.Lock()
# cudaErrorInvalidDeviceFunction, cudaErrorUnsupportedPtxVersion, cudaErrorNoKernelImageForDevice
_NO_IMAGE_ERRORS = (98, 222, 209)


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
    if backends["cuda"] == "cuda":
        _guard_kernel_images(name, reference, "cuda")
    torch.library.register_fake(qualname)(fake)
    if backward is not None:
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    return getattr(torch.ops.chimera, name).default


def reference_vjp(fn, inputs, needs, grads):
    """Gradients of the reference twin `fn` at `inputs` for the inputs flagged in `needs`
    (None for the others), against the output gradients `grads`: for the rare gradients the
    kernels do not compute (weights, double backward), by autograd through the twin. Under
    create_graph (grad mode on in a backward) the result stays differentiable."""
    if not any(needs):
        return [None] * len(inputs)
    higher = torch.is_grad_enabled()
    with torch.enable_grad():
        args = [_vjp_input(x, need, higher) for x, need in zip(inputs, needs)]
        outs = fn(*args)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        # An output that does not depend on a wanted input (an unrequested, empty gradient) adds nothing.
        pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad and g is not None]
        wanted = [a for a, need in zip(args, needs) if need]
        if not pairs:
            return [None] * len(inputs)
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True,
                                       create_graph=higher))
    return [next(got) if need else None for need in needs]


def _vjp_input(x, need, higher):
    if not isinstance(x, torch.Tensor):
        return x
    if higher and (x.requires_grad or not need):
        return x  # keep the link to the outer graph
    return x.detach().requires_grad_(need)


def _schema_from_cpp(name):
    try:
        getattr(torch.ops.chimera, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _guard_kernel_images(name, reference, device_type):
    """Route op `name` to `reference` on the `device_type` devices our kernels have no image for."""
    global _guard_lib
    if _guard_lib is None:
        _guard_lib = torch.library.Library("chimera", "IMPL")
    op = getattr(torch.ops.chimera, name).default

    def check_image(keyset, *args, **kwargs):
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.device.type == device_type:
                if not kernel_image_ok(arg.device):
                    return reference(*args, **kwargs)
                break
        return op.redispatch(keyset & _BELOW_BACKEND_SELECT, *args, **kwargs)

    _guard_lib.impl(name, check_image, "BackendSelect", with_keyset=True)


def kernel_image_ok(device):
    """Whether our kernels can run on `device`; asked of the CUDA runtime once per device."""
    ok = _image_ok.get(device)
    if ok is None:
        device = torch.device(device)
        with _image_lock:
            ok = _image_ok.get(device)
            if ok is None:
                ok = _image_ok[device] = _check_image(device)
    return ok


def _probe(device):
    """(0, "") or (cudaError code, message) for our kernel image on `device`."""
    probe = getattr(_extension.module, "cuda_image_status", None)
    return probe(device.index) if probe is not None else (0, "")


def _describe(device):
    try:
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} ({torch.cuda.get_device_name(device)}, compute capability {major}.{minor})"
    except Exception:  # an invalid device: the probe's message says so
        return str(device)


def _check_image(device):
    code, message = _probe(device)
    if code == 0:
        return True
    archs = getattr(_extension.module, "cuda_archs", "?")
    reason = f"chimera._C's CUDA kernels cannot run on {_describe(device)}: {message} (cudaError {code})"
    if code in _NO_IMAGE_ERRORS:
        reason += f"; it was built for TORCH_CUDA_ARCH_LIST={archs}: rebuild it with this GPU's architecture in the list"
    if _extension.flag("CHIMERA_REQUIRE_EXT"):
        raise _extension.ExtensionError(f"CHIMERA_REQUIRE_EXT=1 but {reason}")
    warnings.warn(f"chimera: {reason}; using the pure-PyTorch reference kernels on {device}", RuntimeWarning,
                  stacklevel=2)
    return False


def backend(device=None):
    """Which implementation runs each op: {op: {device: "cpp" | "cuda" | "reference"}},
    or {op: impl} for one device (for a device with an index, such as "cuda:1", after
    checking that our kernels have an image for it)."""
    if device is None:
        return {op: dict(b) for op, b in _backends.items()}
    device = torch.device(device)
    if device.type not in DEVICES:  # say so, rather than a KeyError from the lookup below
        raise ValueError(f"backend: no entry for device type {device.type!r}; "
                         f"the device types are {', '.join(DEVICES)}")
    if device.type == "cuda" and device.index is not None and not kernel_image_ok(device):
        return {op: "reference" for op in _backends}
    return {op: b[device.type] for op, b in _backends.items()}
