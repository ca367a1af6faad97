"""Deep-clustering losses (DC and deep LDA), forward and forward+backward, weighted, index
targets.

Full shape (CHIMERA_BENCH_FULL=1): B=8, T=400, F=513 (N=205,200), D=20, C=2, float32.
Compared in the same run: the fused op, its pure-PyTorch twin, a plain low-rank PyTorch
formulation (rows scaled by √w, three bmm; for deep LDA torch-chimera's formulation with
bmm and inverse, plus the weighted total scatter), and asteroid's / nussl's deep
clustering losses when installed (loaded by file path; never a dependency).

The fused benchmarks store their speed-up over the plain formulation (extra_info "speedup",
"baseline", benchutil.record_speedup) and the bytes-moved/flop floor of the two kernel
passes on this machine ("floor_s", "of_floor"), printed beside the figure.
"""
import functools
import importlib.util
import os
import time

import pytest
import torch

from benchutil import FULL, assert_same, cuda, memory_bandwidth, on_cuda, peak_rss_delta_mb, record_speedup
from chimera import losses
from chimera.ops import reference

B, T, F, D, C = (8, 400, 513, 20, 2) if FULL else (2, 100, 129, 20, 2)
N = T * F


def inputs():
    g = torch.Generator().manual_seed(0)
    V = torch.nn.functional.normalize(torch.randn(B, N, D, generator=g), dim=-1)
    labels = torch.randint(0, C, (B, N), generator=g)
    w = torch.rand(B, N, generator=g)
    return V, labels, w


def plain_lowrank(V, labels, w):
    sw = w.sqrt().unsqueeze(-1)
    Vw = V * sw
    Yw = torch.nn.functional.one_hot(labels, C).to(V.dtype) * sw
    vv = Vw.transpose(1, 2) @ Vw
    vy = Vw.transpose(1, 2) @ Yw
    yy = Yw.transpose(1, 2) @ Yw
    loss = (vv.square().sum((1, 2)) - 2 * vy.square().sum((1, 2)) + yy.square().sum((1, 2))) / w.sum(-1).square()
    return loss.mean()


def plain_deep_lda(V, labels, w):
    """torch-chimera's deep-LDA numerator (√w-scaled rows, bmm, inverse of YᵀWY), over the
    weighted total scatter, in plain PyTorch."""
    sw = w.sqrt().unsqueeze(-1)
    Vw = V * sw
    Yw = torch.nn.functional.one_hot(labels, C).to(V.dtype) * sw
    YtV = Yw.transpose(1, 2) @ Vw
    YtY = Yw.transpose(1, 2) @ Yw + 1e-6 * torch.eye(C, dtype=V.dtype, device=V.device)
    within = (Vw - Yw @ (torch.linalg.inv(YtY) @ YtV)).square().sum((1, 2))
    mu = (V * w.unsqueeze(-1)).sum(1) / w.sum(-1, keepdim=True)
    total = (w.unsqueeze(-1) * (V - mu.unsqueeze(1)).square()).sum((1, 2))
    return (within / total).mean()


def reference_loss(V, labels, w):
    vv, vy, yy, s, _ = reference.affinity_stats(V, labels, w, C)
    return ((vv.square().sum((1, 2)) - 2 * vy.square().sum((1, 2)) + yy.square().sum((1, 2))) / s.square()).mean()


def _peer(path_in_site, attr):
    spec = importlib.util.find_spec(path_in_site.split("/")[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    file = os.path.join(spec.submodule_search_locations[0], *path_in_site.split("/")[1:])
    if not os.path.exists(file):
        return None
    s = importlib.util.spec_from_file_location("_peer_" + path_in_site.replace("/", "_"), file)
    module = importlib.util.module_from_spec(s)
    s.loader.exec_module(module)
    return getattr(module, attr)


_asteroid = _peer("asteroid/losses/cluster.py", "deep_clustering_loss")
_nussl = _peer("nussl/ml/train/loss.py", "DeepClusteringLoss")


def asteroid_loss(V, labels, w):
    # asteroid weights by a binary mask (VAD), and wants targets as (B, F, T) in F-major order
    return _asteroid(V, labels.view(B, F, T), binary_mask=(w > 0.5).view(B, F, T)).mean()


def nussl_loss(V, labels, w):
    onehot = torch.nn.functional.one_hot(labels, C).float()
    return _nussl()(V, onehot, w)


IMPLS = {
    "chimera": lambda V, y, w: losses.deep_clustering_loss(V, y, w, num_classes=C),
    "reference": reference_loss,
    "plain_lowrank": plain_lowrank,
}
if _asteroid is not None:
    IMPLS["asteroid"] = asteroid_loss
if _nussl is not None:
    IMPLS["nussl"] = nussl_loss
LDA_IMPLS = {
    "chimera": lambda V, y, w: losses.deep_lda_loss(V, y, w, num_classes=C),
    "plain_deep_lda": plain_deep_lda,
}
BASELINE = {"dc": ("plain_lowrank", IMPLS), "deep-lda": ("plain_deep_lda", LDA_IMPLS)}


@functools.lru_cache(maxsize=None)
def matmul_flops():
    """Floating-point operations per second this machine reaches with torch's threads: the
    best of a few float32 2048² matrix products (an FMA-bound kernel)."""
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048 ** 3 / best


def kernel_floor(backward):
    """Least time of the fused passes at this machine's copy bandwidth and matmul rate, each
    pass bounded by the larger of its traffic and its multiply-adds. Forward: read V, w and
    the labels; the lower triangle of VᵀWV (D(D+1)/2 FMA per bin). Backward: the same reads
    and dV written; D² FMA per bin."""
    reads = B * N * (D * 4 + 4 + 8)
    passes = [(reads, B * N * D * (D + 1))]
    if backward:
        passes.append((reads + B * N * D * 4, 2 * B * N * D * D))
    bandwidth, flops = memory_bandwidth(), matmul_flops()
    return sum(max(nbytes / bandwidth, ops / flops) for nbytes, ops in passes)


def record(benchmark, loss, backward, ours, baseline):
    """The speed-up over the plain formulation and the floor, in extra_info and printed."""
    speedup = record_speedup(benchmark, ours, baseline, BASELINE[loss][0])
    if speedup is None:
        return
    floor = kernel_floor(backward)
    mine = benchmark.extra_info["ours_s"]
    benchmark.extra_info.update(floor_s=floor, of_floor=round(mine / floor, 2),
                                bandwidth_gb_s=round(memory_bandwidth() / 1e9, 1),
                                matmul_gflop_s=round(matmul_flops() / 1e9, 1))
    print(f"\n{benchmark.group}: chimera {mine * 1e3:.1f} ms, {speedup:.2f}x {BASELINE[loss][0]}; floor "
          f"{floor * 1e3:.1f} ms ({memory_bandwidth() / 1e9:.1f} GB/s, {matmul_flops() / 1e9:.0f} GFLOP/s), "
          f"{mine / floor:.2f}x the floor")


def forward(fn, V, y, w):
    def run():
        with torch.no_grad():
            return fn(V, y, w)
    return run


def training_step(fn, V, y, w):
    """One forward+backward of `fn`; returns dL/dV."""
    V = V.detach().requires_grad_(True)

    def step():
        V.grad = None
        fn(V, y, w).backward()
        return V.grad
    return step


CASES = [("dc", impl) for impl in IMPLS] + [("deep-lda", impl) for impl in LDA_IMPLS]
PHASES = {"forward": forward, "forward-backward": training_step}


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("loss,impl", CASES)
def test_loss(benchmark, loss, impl, phase):
    """One benchmark per loss, implementation and phase; the fused one also times itself
    against the plain formulation in pairs (the speed-up) and prints the floor."""
    impls, (V, y, w) = BASELINE[loss][1], inputs()
    benchmark.group = f"{loss}-{phase} B{B} N{N} D{D}"
    out = benchmark(PHASES[phase](impls[impl], V, y, w))
    assert torch.isfinite(out).all()
    if impl == "chimera":
        # the same loss (forward) or dL/dV (forward-backward) as the baseline it is timed against
        assert_same(out, PHASES[phase](impls[BASELINE[loss][0]], V, y, w)(), 1e-4 if phase == "forward" else 1e-3)
        record(benchmark, loss, phase == "forward-backward", PHASES[phase](impls[impl], V, y, w),
               PHASES[phase](impls[BASELINE[loss][0]], V, y, w))


@pytest.mark.parametrize("impl", ["chimera", "plain_lowrank"])
def test_dc_forward_peak_memory(benchmark, impl):
    """Extra peak RSS of one forward pass (the inputs excluded), in a fresh process."""
    setup = f"""
        from bench_affinity import inputs, IMPLS
        V, y, w = inputs()
        fn = IMPLS[{impl!r}]
        with torch.no_grad(): fn(V[:1, :64], y[:1, :64], w[:1, :64])  # warm up allocator and kernels
    """
    work = "with torch.no_grad(): fn(V, y, w)"
    mb = benchmark.pedantic(peak_rss_delta_mb, args=(setup, work), rounds=1, iterations=1)
    benchmark.group = "dc-forward peak extra RSS (MiB in extra_info)"
    benchmark.extra_info["peak_extra_rss_mib"] = round(mb, 1)
    print(f"\n{impl}: forward peak extra RSS {mb:.1f} MiB")


@cuda
@pytest.mark.parametrize("loss,impl", [("dc", "chimera"), ("dc", "plain_lowrank"), ("deep-lda", "chimera"),
                                       ("deep-lda", "plain_deep_lda")])
def test_forward_backward_cuda(benchmark, loss, impl):
    benchmark.group = f"{loss}-forward-backward CUDA B{B} N{N} D{D}"
    fn = BASELINE[loss][1][impl]
    grad = benchmark(on_cuda(training_step(fn, *(t.cuda() for t in inputs()))))
    assert torch.isfinite(grad).all()
