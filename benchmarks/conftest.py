"""Benchmarks run with `make bench` (pytest --benchmark-only) and, in CI, once each
with --benchmark-disable so they cannot rot. A plain `pytest` skips them.

CHIMERA_BENCH_FULL=1 selects the issues' full shapes; the default is a small shape.
"""
import os
import subprocess
import sys
import textwrap

import pytest

FULL = os.environ.get("CHIMERA_BENCH_FULL", "") == "1"


def pytest_collection_modifyitems(config, items):
    opt = config.option
    if getattr(opt, "benchmark_only", False) or getattr(opt, "benchmark_disable", False):
        return
    skip = pytest.mark.skip(reason="benchmarks run with `make bench` (or --benchmark-disable)")
    for item in items:
        if "benchmarks" in str(item.fspath):
            item.add_marker(skip)


def peak_rss_delta_mb(setup, work):
    """Peak resident memory added by `work` after `setup`, in MiB, in a fresh process.

    Both are Python source; `setup` builds the inputs (its memory is the baseline)."""
    code = textwrap.dedent(f"""
        import resource, torch
        torch.set_num_threads({os.cpu_count() or 1})
        {textwrap.indent(textwrap.dedent(setup), ' ' * 8).strip()}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        {textwrap.indent(textwrap.dedent(work), ' ' * 8).strip()}
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])
