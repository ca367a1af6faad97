"""Helpers shared by the benchmarks."""
import os
import subprocess
import sys
import textwrap

FULL = os.environ.get("CHIMERA_BENCH_FULL", "") == "1"


def peak_rss_delta_mb(setup, work):
    """Peak resident memory added by `work` after `setup`, in MiB, in a fresh process.

    Both are Python source; `setup` builds the inputs (its memory is the baseline)."""
    # VmHWM (the peak RSS of this process image): ru_maxrss would carry the parent's
    # peak across exec and hide small deltas.
    code = "\n".join([
        "import torch",
        f"torch.set_num_threads({os.cpu_count() or 1})",
        "def hwm():",
        "    for line in open('/proc/self/status'):",
        "        if line.startswith('VmHWM:'):",
        "            return int(line.split()[1])",
        textwrap.dedent(setup).strip(),
        "before = hwm()",
        textwrap.dedent(work).strip(),
        "print((hwm() - before) / 1024)",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])
