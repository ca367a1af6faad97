"""Helpers shared by the benchmarks.

Speed-up convention (what `make bench-check` gates on, see check_floors.py): the benchmark of
our implementation times itself against its in-run baseline with `paired_speedup` and
stores the result with `record_speedup`:
    extra_info["speedup"]     median over adjacent (ours, baseline) pairs of baseline / ours
    extra_info["baseline"]    what it was compared with ("torch.istft", "plain PyTorch", ...)
    extra_info["ours_s"], extra_info["baseline_s"]   the two medians, in seconds
Floors for these speed-ups are in benchmarks/floors.toml. Each such benchmark first checks
with `assert_same` that ours computes what the baseline computes (also under
--benchmark-disable, as CI runs them).
"""
import functools
import os
import statistics
import subprocess
import sys
import textwrap
import time

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
    import torch
    # the timed benchmarks' thread count (not os.cpu_count(), which counts the host's CPUs in a
    # container, or logical ones): a kernel's per-thread buffers are part of its peak
    code = _PEAK.format(here=HERE, root=ROOT, threads=torch.get_num_threads(),
                        setup=textwrap.dedent(setup).strip(), work=textwrap.dedent(work).strip())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.split("PEAK_MIB")[-1].split()[0])


def assert_same(ours, baseline, tol):
    """Check that ours computes what its baseline computes, before a speed-up over it means
    anything: each tensor of `ours` within `tol` times the largest magnitude of the
    baseline's (float rounding differs between the two)."""
    import torch
    pairs = zip(ours, baseline, strict=True) if isinstance(ours, (tuple, list)) else [(ours, baseline)]
    for mine, theirs in pairs:
        torch.testing.assert_close(mine, theirs, rtol=0, atol=tol * theirs.abs().max().item())


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


def paired_speedup(ours, baseline, rounds=5):
    """(speed-up, ours median s, baseline median s) of two callables timed in adjacent
    pairs, alternately ours-first and baseline-first, after one warm-up call of each. The
    speed-up is the median of the pairs' ratios: a drift of a shared machine (other jobs,
    clock, caches) hits both members of a pair alike, and a spike spoils one pair only."""
    ours(), baseline()
    pairs = []
    for i in range(rounds):
        times = {}
        for fn in ((ours, baseline) if i % 2 == 0 else (baseline, ours)):
            t0 = time.perf_counter()
            fn()
            times[fn] = time.perf_counter() - t0
        pairs.append((times[ours], times[baseline]))
    ratio = statistics.median(b / a for a, b in pairs)
    return ratio, statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)


def record_speedup(benchmark, ours, baseline, baseline_name, rounds=5):
    """Time `ours` against `baseline` (paired_speedup) and store the figures in the
    benchmark's extra_info under the convention above; nothing when benchmarks are
    disabled (make test runs each body once). Returns the speed-up or None."""
    if getattr(benchmark, "disabled", False):
        return None
    speedup, mine, theirs = paired_speedup(ours, baseline, rounds)
    benchmark.extra_info.update(speedup=round(speedup, 3), baseline=baseline_name, ours_s=mine, baseline_s=theirs)
    return speedup


def cpu_model():
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def memory_bandwidth():
    """Bytes per second this machine moves through memory with torch's threads: the best
    of a few copies of 256 MiB into a buffer already touched (read + write counted)."""
    import torch
    src = torch.ones(64 << 20)
    dst = torch.empty_like(src).fill_(0)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def record_floor(benchmark, nbytes):
    """Store the bytes-moved floor of an op beside its figure: extra_info["floor_s"] (the
    least traffic `nbytes` at this machine's copy bandwidth) and ["of_floor"] (ours / floor),
    and print both."""
    if getattr(benchmark, "disabled", False):
        return
    bandwidth = memory_bandwidth()
    floor = nbytes / bandwidth
    ours = benchmark.extra_info.get("ours_s") or benchmark.stats.stats.median
    benchmark.extra_info.update(bytes_moved=nbytes, bandwidth_gb_s=round(bandwidth / 1e9, 2), floor_s=floor,
                                of_floor=round(ours / floor, 2))
    speedup = benchmark.extra_info.get("speedup")
    vs = f", {speedup:.2f}x {benchmark.extra_info['baseline']}" if speedup else ""
    print(f"\n{benchmark.group}: ours {ours * 1e3:.2f} ms{vs}; bytes-moved floor {floor * 1e3:.2f} ms "
          f"({nbytes / 1e6:.0f} MB at {bandwidth / 1e9:.1f} GB/s), {ours / floor:.1f}x the floor")
