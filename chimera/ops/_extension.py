"""Loading of the compiled extension ``chimera._C``.

- absent (never built): one warning, the pure-PyTorch references run instead;
- present but broken (e.g. built against another torch): a warning naming the cause,
  or an error with CHIMERA_REQUIRE_EXT=1;
- CHIMERA_DISABLE_EXT=1 forces the references (tests and benchmarks use it).
"""
import importlib
import os
import warnings

import torch


class ExtensionError(ImportError):
    pass


def flag(name):
    """Whether environment variable `name` is on: 1, true, yes or on (any case). tests/testutil.py reads
    CHIMERA_DISABLE_EXT with it too."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _load():
    """Return (module or None, reason it is not used or None)."""
    if flag("CHIMERA_DISABLE_EXT"):
        if flag("CHIMERA_REQUIRE_EXT"):
            raise ExtensionError("CHIMERA_REQUIRE_EXT=1 and CHIMERA_DISABLE_EXT=1 contradict each other")
        return None, "disabled by CHIMERA_DISABLE_EXT=1"
    try:
        module = importlib.import_module("chimera._C")
    except ModuleNotFoundError as exc:
        if exc.name != "chimera._C":  # a dependency of the extension is missing: that is breakage
            return _broken(f"chimera._C failed to import: {exc}")
        reason = "chimera._C is not built (pip install --no-build-isolation -e .)"
        if flag("CHIMERA_REQUIRE_EXT"):
            raise ExtensionError(f"CHIMERA_REQUIRE_EXT=1 but {reason}") from exc
        warnings.warn(f"chimera: {reason}; using the pure-PyTorch reference kernels", RuntimeWarning, stacklevel=3)
        return None, reason
    except ImportError as exc:
        return _broken(f"chimera._C failed to load ({exc}); rebuild it against torch {torch.__version__}")
    built = getattr(module, "torch_version", "?")
    if built.split("+")[0] != torch.__version__.split("+")[0]:
        # It loaded, so its kernels are registered and used; the mismatch is still said.
        message = f"chimera._C was built against torch {built} but torch {torch.__version__} is installed; rebuild it"
        if flag("CHIMERA_REQUIRE_EXT"):
            raise ExtensionError(message)
        warnings.warn(f"chimera: {message}", RuntimeWarning, stacklevel=3)
    return module, None


def _broken(reason):
    if flag("CHIMERA_REQUIRE_EXT"):
        raise ExtensionError(reason)
    warnings.warn(f"chimera: {reason}; using the pure-PyTorch reference kernels", RuntimeWarning, stacklevel=4)
    return None, reason


module, unavailable_reason = _load()


def info():
    """Build facts for `chimera info`."""
    if module is None:
        return {"loaded": False, "reason": unavailable_reason}
    return {
        "loaded": True,
        "path": module.__file__,
        "built_against_torch": module.torch_version,
        "with_cuda": bool(module.with_cuda),
    }
