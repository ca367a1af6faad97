"""Benchmarks run with `make bench` (pytest --benchmark-only) and, in CI, once each
with --benchmark-disable so they cannot rot. A plain `pytest` skips them.

CHIMERA_BENCH_FULL=1 selects the issues' full shapes; the default is a small shape.
"""
import pytest


def pytest_collection_modifyitems(config, items):
    opt = config.option
    if getattr(opt, "benchmark_only", False) or getattr(opt, "benchmark_disable", False):
        return
    skip = pytest.mark.skip(reason="benchmarks run with `make bench` (or --benchmark-disable)")
    for item in items:
        if "benchmarks" in str(item.fspath):
            item.add_marker(skip)
