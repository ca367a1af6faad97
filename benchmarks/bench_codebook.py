"""codebook_lookup forward+backward: fused op vs the reference twin vs plain PyTorch.

Mask-head size of issue 4 with CHIMERA_BENCH_FULL=1: B=8, T=400, F=513, C=2, K=12, complex
combook, float32. Default: a small shape for CI. The op's benchmark also runs each variant
in a subprocess and reports its peak RSS over the inputs (extra_info and a printed table).

    CHIMERA_BENCH_FULL=1 python -m pytest benchmarks/bench_codebook.py --benchmark-only
"""

import pytest
import torch

from benchutil import FULL, cuda, on_cuda, peak_rss_delta_mb
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
    from chimera.models.codebook_heads import combook_init
    codebook = combook_init(shape[-1]).to(torch.complex64).requires_grad_()
    grad = torch.randn(*shape[:-1], generator=g, dtype=torch.complex64)
    return logits, codebook, grad


def _step(fn, logits, codebook, grad):
    out = fn(logits, codebook)
    return torch.autograd.grad(out, (logits, codebook), grad)


def peak_memory(variant, shape):
    """Extra peak RSS (MiB) of one forward+backward above the inputs, in a fresh process."""
    setup = f"""
        import bench_codebook as b
        logits, codebook, grad = b._inputs({tuple(shape)!r})
        fn = b._fn({variant!r})
        b._step(fn, logits[:1, :1], codebook, grad[:1, :1])  # load kernels, warm allocators
    """
    return peak_rss_delta_mb(setup, "b._step(fn, logits, codebook, grad)")


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
        delta = peak_memory(v, SHAPE)
        benchmark.extra_info[f"peak_rss_over_inputs_MiB_{v}"] = delta
        rows.append((v, delta, _medians.get(v)))
    plain_delta = rows[0][1]
    benchmark.extra_info["memory_ratio_op_vs_plain"] = rows[-1][1] / plain_delta if plain_delta else None
    print(f"\n{GROUP} (CPU, {torch.get_num_threads()} threads)")
    print(f"{'variant':<10} {'median s':>9} {'peak RSS over inputs MiB':>25}")
    for v, delta, med in rows:
        print(f"{v:<10} {med if med is not None else float('nan'):>9.4f} {delta:>25.1f}")


@cuda
@pytest.mark.parametrize("variant", ["plain", "op"])
def test_codebook_fwd_bwd_cuda(benchmark, variant):
    benchmark.group = GROUP + " CUDA"
    logits, codebook, grad = (t.detach().cuda().requires_grad_(t.requires_grad) for t in _inputs(SHAPE))
    benchmark(on_cuda(_step), _fn(variant), logits, codebook, grad)
