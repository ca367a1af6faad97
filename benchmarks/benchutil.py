"""Helpers shared by the benchmarks."""
import os
import subprocess
import sys
import textwrap

FULL = os.environ.get("CHIMERA_BENCH_FULL", "") == "1"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

_PEAK = """
import sys
sys.path[:0] = [{here!r}, {root!r}]
import torch
torch.set_num_threads({threads})
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024
{setup}
with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current resident size
    f.write("5")
base = status("VmRSS")
{work}
print("PEAK_MIB", status("VmHWM") - base)
"""


def peak_rss_delta_mb(setup, work):
    """Peak resident memory that `work` adds above the memory after `setup`, in MiB,
    measured in a fresh process (both are Python source; `setup` builds the inputs and
    should warm up kernels and allocators on a tiny call). The peak is reset after the
    set-up through /proc/self/clear_refs, so set-up temporaries do not hide the work;
    VmHWM, not ru_maxrss, which would carry the parent's peak across exec."""
    code = _PEAK.format(here=HERE, root=ROOT, threads=os.cpu_count() or 1,
                        setup=textwrap.dedent(setup).strip(), work=textwrap.dedent(work).strip())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.split("PEAK_MIB")[-1].split()[0])


def cuda(obj):
    """A GPU benchmark: selected by `pytest -m cuda` (make test-cuda), skipped without a GPU."""
    import pytest
    import torch
    obj = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(obj)
    return pytest.mark.cuda(obj)


def on_cuda(fn):
    """`fn` timed to completion on the GPU (kernels are asynchronous)."""
    import torch

    def run(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out
    return run
