"""codebook_lookup forward+backward: fused op vs the reference twin vs plain PyTorch.

Mask-head size of issue 4 with CHIMERA_BENCH_FULL=1: B=8, T=400, F=513, C=2, K=12, complex
combook, float32. Default: a small shape for CI. The op's benchmark also runs each variant
in a subprocess and reports its peak RSS over the inputs (extra_info and a printed table).

    CHIMERA_BENCH_FULL=1 python -m pytest benchmarks/bench_codebook.py --benchmark-only
"""
import os
import subprocess
import sys

import pytest
import torch

FULL = os.environ.get("CHIMERA_BENCH_FULL", "") == "1"
SHAPE = (8, 400, 513, 2, 12) if FULL else (2, 50, 65, 2, 12)  # B, T, F, C, K
GROUP = "codebook fwd+bwd " + "x".join(map(str, SHAPE))
VARIANTS = ("plain", "reference", "op")
_medians = {}


def plain(logits, codebook):
    return (torch.softmax(logits, -1).to(codebook.dtype) * codebook).sum(-1)


def _fn(variant):
    if variant == "plain":
        return plain
    from chimera.ops import codebook_lookup, reference
    return reference.codebook_lookup if variant == "reference" else codebook_lookup


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g).requires_grad_()
    from chimera.models.heads import combook_init
    codebook = combook_init(shape[-1]).to(torch.complex64).requires_grad_()
    grad = torch.randn(*shape[:-1], generator=g, dtype=torch.complex64)
    return logits, codebook, grad


def _step(fn, logits, codebook, grad):
    out = fn(logits, codebook)
    return torch.autograd.grad(out, (logits, codebook), grad)


def _status_bytes(field):
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a subprocess forked from a big
    # pytest process would report the parent's peak.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _rss_bytes():
    return _status_bytes("VmRSS")


def _measure_peak(variant, shape):
    """In this (fresh) process: peak RSS of one fwd+bwd above the RSS with the inputs allocated."""
    logits, codebook, grad = _inputs(shape)
    fn = _fn(variant)
    _step(fn, logits[:1, :1], codebook, grad[:1, :1])  # load kernels, warm allocators
    before = _rss_bytes()
    _step(fn, logits, codebook, grad)
    peak = _status_bytes("VmHWM")
    return peak - before, peak


def peak_memory(variant, shape):
    code = (
        "import sys; sys.path.insert(0, %r); import bench_codebook as b; "
        "print(*b._measure_peak(%r, %r))" % (os.path.dirname(os.path.abspath(__file__)), variant, tuple(shape))
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's chimera first
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()),
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=root)
    delta, peak = map(int, out.stdout.split()[-2:])
    return delta, peak


@pytest.mark.parametrize("variant", VARIANTS)
def test_codebook_fwd_bwd(benchmark, variant):
    benchmark.group = GROUP
    logits, codebook, grad = _inputs(SHAPE)
    fn = _fn(variant)
    benchmark.pedantic(_step, args=(fn, logits, codebook, grad), rounds=5 if FULL else 20, warmup_rounds=1)
    if getattr(benchmark, "disabled", False) or benchmark.stats is None:
        return
    _medians[variant] = benchmark.stats.stats.median
    benchmark.extra_info["median_s"] = _medians[variant]
    if variant != "op":
        return
    from chimera.ops import backend
    benchmark.extra_info["backend"] = backend("cpu")["codebook_lookup"]
    for other in ("plain", "reference"):
        if other in _medians:
            benchmark.extra_info[f"speedup_vs_{other}"] = _medians[other] / _medians["op"]
    rows = []
    for v in VARIANTS:
        delta, peak = peak_memory(v, SHAPE)
        benchmark.extra_info[f"peak_rss_over_inputs_MiB_{v}"] = delta / 2**20
        rows.append((v, delta / 2**20, peak / 2**20, _medians.get(v)))
    plain_delta = rows[0][1]
    benchmark.extra_info["memory_ratio_op_vs_plain"] = rows[-1][1] / plain_delta if plain_delta else None
    print(f"\n{GROUP} (CPU, {torch.get_num_threads()} threads)")
    print(f"{'variant':<10} {'median s':>9} {'peak RSS over inputs MiB':>25} {'peak RSS MiB':>13}")
    for v, delta, peak, med in rows:
        print(f"{v:<10} {med if med is not None else float('nan'):>9.4f} {delta:>25.1f} {peak:>13.1f}")
