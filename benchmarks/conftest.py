"""Benchmarks run with `make bench` (pytest --benchmark-only) and, in CI, once each
with --benchmark-disable so they cannot rot. A plain `pytest` skips them.

CHIMERA_BENCH_FULL=1 selects the issues' full shapes; the default is a small shape.
"""
import os

import pytest
import torch

from benchutil import FULL, cpu_model


def pytest_collection_modifyitems(config, items):
    opt = config.option
    if getattr(opt, "benchmark_only", False) or getattr(opt, "benchmark_disable", False):
        return
    skip = pytest.mark.skip(reason="benchmarks run with `make bench` (or --benchmark-disable)")
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        # the items in this folder: a checkout under a path with "benchmarks" in it skipped every test
        if os.path.commonpath([here, os.path.abspath(str(item.fspath))]) == here:
            item.add_marker(skip)


def pytest_benchmark_update_machine_info(config, machine_info):
    """What a speed-up depends on besides the code: the CPU, the instruction-set paths of
    our kernels and of ATen, the thread count, the shapes."""
    from chimera import ops
    machine_info["cpu_model"] = cpu_model()
    machine_info["chimera_cpu_capability"] = ops.cpu_capability()
    machine_info["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["bench_shapes"] = "full" if FULL else "default"
