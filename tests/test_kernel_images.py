"""The once-per-device kernel-image check of chimera/ops/_registry.py.

A CUDA build installs it for CUDA devices; here it is installed for the CPU with a
stand-in probe, so the routing it does (our kernel, or the reference twin with one
warning) runs on any machine. Each case runs in a subprocess: the check is a dispatcher
registration that would outlive the test.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testutil import EXT_DISABLED

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, os, warnings
import torch
import chimera.ops as ops
from chimera.ops import _registry, reference

frames = torch.randn(2, 6, 32, dtype=torch.float64, requires_grad=True)
window = torch.hann_window(32, dtype=torch.float64)
expected = reference.overlap_add(frames.detach(), window, 8, True, None)
probes, reference_calls = [], []

def counted_reference(*args):
    reference_calls.append(1)
    return reference.overlap_add(*args)

_registry._describe = str
_registry._guard_kernel_images("overlap_add", counted_reference, "cpu")

def case(code, require=False):
    del probes[:], reference_calls[:]
    _registry._image_ok.clear()
    _registry._probe = lambda device: (probes.append(str(device)) or
                                       (code, "" if code == 0 else "no kernel image is available for execution"))
    os.environ.pop("CHIMERA_REQUIRE_EXT", None)
    if require:
        os.environ["CHIMERA_REQUIRE_EXT"] = "1"
    out = {}
    frames.grad = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            y = ops.overlap_add(frames, window, 8)
            y.sum().backward()                    # autograd's forward call went through the check
            with torch.inference_mode():
                z = ops.overlap_add(frames.detach(), window, 8)
            out["matches_reference"] = bool(torch.allclose(y, expected) and torch.allclose(z, expected))
            out["has_grad"] = frames.grad is not None
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
    out["probes"] = list(probes)
    out["reference_calls"] = len(reference_calls)
    out["warnings"] = [str(w.message) for w in caught if "CUDA kernels cannot run" in str(w.message)]
    return out

print(json.dumps({"image": case(0), "no_image": case(209), "required": case(209, require=True)}))
'''

pytestmark = pytest.mark.skipif(EXT_DISABLED, reason="extension disabled: no kernel to route around")


@pytest.fixture(scope="module")
def cases():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_")}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_device_with_an_image_runs_our_kernel(cases):
    out = cases["image"]
    assert out["probes"] == ["cpu"]             # asked once, for three calls
    assert out["reference_calls"] == 0 and out["warnings"] == []
    assert out["matches_reference"] and out["has_grad"]


def test_device_without_an_image_runs_the_reference_with_one_warning(cases):
    out = cases["no_image"]                     # 209: cudaErrorNoKernelImageForDevice
    assert out["probes"] == ["cpu"]
    assert out["reference_calls"] == 2          # the autograd call and the inference-mode call
    assert len(out["warnings"]) == 1
    (warning,) = out["warnings"]
    assert "no kernel image is available" in warning and "TORCH_CUDA_ARCH_LIST" in warning and "reference" in warning
    assert out["matches_reference"] and out["has_grad"]


def test_required_extension_makes_a_missing_image_an_error(cases):
    out = cases["required"]
    assert out["error"].startswith("ExtensionError: CHIMERA_REQUIRE_EXT=1 but chimera._C's CUDA kernels cannot run")
    assert out["reference_calls"] == 0
