"""Helpers shared by the test modules (conftest.py holds only fixtures and hooks)."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from chimera.ops._extension import flag

# The loader's own reading of the variable ("1", "true", "yes", "on"), so that a test skips
# exactly when the extension is off.
EXT_DISABLED = flag("CHIMERA_DISABLE_EXT")
TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def cuda(obj):
    """Mark a CUDA test: selected by `pytest -m cuda` (make test-cuda), skipped without a GPU."""
    obj = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(obj)
    return pytest.mark.cuda(obj)


def run_isolated(module, function, *args, timeout=600):
    """Call tests/<module>.py's `function(*args)` in a fresh interpreter, so that a kernel
    that kills its process (SIGFPE, SIGSEGV, abort) fails the calling test, naming the
    signal, instead of ending the whole run. An exception in the child fails it too."""
    code = f"import sys; sys.path.insert(0, {TESTS!r}); import {module}; {module}.{function}(*{args!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if out.returncode < 0:
        pytest.fail(f"{module}.{function}{args!r} killed its process with {signal.Signals(-out.returncode).name}:\n"
                    f"{out.stderr[-4000:]}")
    if out.returncode != 0:
        pytest.fail(f"{module}.{function}{args!r} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return out.stdout
