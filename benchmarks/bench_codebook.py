"""codebook_lookup, forward and forward+backward: fused op vs the reference twin vs plain PyTorch.

Mask-head size of issue 4 with CHIMERA_BENCH_FULL=1: B=8, T=400, F=513, C=2, K=12, complex
combook, float32. Default: a small shape for CI. The op's benchmarks store their speed-up
over plain PyTorch, timed alternately in the same test (benchutil.record_speedup, gated by
`make bench-check`), and the bytes-moved floor of the op on this machine; a separate
benchmark runs each variant in a subprocess and reports its peak RSS over the inputs.

    CHIMERA_BENCH_FULL=1 python -m pytest benchmarks/bench_codebook.py --benchmark-only -s
"""

import pytest
import torch

from chimera.models.codebook_heads import combook_init
from chimera.ops import codebook_lookup, reference

from benchutil import FULL, assert_same, cuda, on_cuda, peak_rss_delta_mb, record_floor, record_speedup

SHAPE = (8, 400, 513, 2, 12) if FULL else (2, 50, 65, 2, 12)  # B, T, F, C, K
NAME = "x".join(map(str, SHAPE))
VARIANTS = ("plain", "reference", "op")
ROUNDS = 5 if FULL else 20


def plain(logits, codebook):
    return (torch.softmax(logits, -1).to(codebook.dtype) * codebook).sum(-1)


IMPLS = {"plain": plain, "reference": reference.codebook_lookup, "op": codebook_lookup}


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g).requires_grad_()
    codebook = combook_init(shape[-1]).to(torch.complex64).requires_grad_()
    grad = torch.randn(*shape[:-1], generator=g, dtype=torch.complex64)
    return logits, codebook, grad


def _step(fn, logits, codebook, grad):
    out = fn(logits, codebook)
    return torch.autograd.grad(out, (logits, codebook), grad)


def _forward(fn, logits, codebook):
    with torch.no_grad():
        return fn(logits, codebook)


def bytes_moved(shape, backward):
    """Least memory traffic of the op: read the logits, write the mask (complex64); the
    backward reads the incoming gradient and the logits again and writes their gradient."""
    logits = torch.Size(shape).numel() * 4
    mask = torch.Size(shape[:-1]).numel() * 8
    return logits + mask + ((mask + 2 * logits) if backward else 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_codebook_forward(benchmark, variant):
    benchmark.group = f"codebook forward {NAME}"
    logits, codebook, _ = _inputs(SHAPE)
    fn = IMPLS[variant]
    mask = benchmark.pedantic(_forward, args=(fn, logits, codebook), rounds=ROUNDS, warmup_rounds=1)
    if variant == "op":
        assert_same(mask, _forward(plain, logits, codebook), 1e-5)  # the mask plain PyTorch computes
        record_speedup(benchmark, lambda: _forward(fn, logits, codebook), lambda: _forward(plain, logits, codebook),
                       "plain PyTorch", ROUNDS)
        record_floor(benchmark, bytes_moved(SHAPE, backward=False))


@pytest.mark.parametrize("variant", VARIANTS)
def test_codebook_fwd_bwd(benchmark, variant):
    benchmark.group = f"codebook fwd+bwd {NAME}"
    logits, codebook, grad = _inputs(SHAPE)
    fn = IMPLS[variant]
    grads = benchmark.pedantic(_step, args=(fn, logits, codebook, grad), rounds=ROUNDS, warmup_rounds=1)
    if variant == "op":
        assert_same(grads, _step(plain, logits, codebook, grad), 1e-4)  # both gradients plain PyTorch computes
        record_speedup(benchmark, lambda: _step(fn, logits, codebook, grad),
                       lambda: _step(plain, logits, codebook, grad), "plain PyTorch", ROUNDS)
        record_floor(benchmark, bytes_moved(SHAPE, backward=True))


def peak_memory(variant, shape):
    """Extra peak RSS (MiB) of one forward+backward above the inputs, in a fresh process."""
    setup = f"""
        import bench_codebook as b
        logits, codebook, grad = b._inputs({tuple(shape)!r})
        fn = b.IMPLS[{variant!r}]
        b._step(fn, logits[:1, :1], codebook, grad[:1, :1])  # load kernels, warm allocators
    """
    return peak_rss_delta_mb(setup, "b._step(fn, logits, codebook, grad)")


def test_codebook_peak_memory(benchmark):
    benchmark.group = f"codebook fwd+bwd peak RSS {NAME} (MiB in extra_info)"
    peaks = benchmark.pedantic(lambda: {v: peak_memory(v, SHAPE) for v in VARIANTS}, rounds=1, iterations=1)
    benchmark.extra_info.update({f"peak_rss_over_inputs_mib_{v}": round(m, 1) for v, m in peaks.items()})
    print(f"\ncodebook fwd+bwd {NAME}: peak RSS over the inputs, MiB: "
          + ", ".join(f"{v} {m:.1f}" for v, m in peaks.items()))


@cuda
@pytest.mark.parametrize("variant", ["plain", "op"])
def test_codebook_fwd_bwd_cuda(benchmark, variant):
    benchmark.group = f"codebook fwd+bwd {NAME} CUDA"
    logits, codebook, grad = (t.detach().cuda().requires_grad_(t.requires_grad) for t in _inputs(SHAPE))
    benchmark(on_cuda(_step), IMPLS[variant], logits, codebook, grad)
