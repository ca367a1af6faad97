"""Deep-clustering loss, forward and forward+backward, weighted, index targets.

Full shape (CHIMERA_BENCH_FULL=1): B=8, T=400, F=513 (N=205,200), D=20, C=2, float32.
Compared in the same run: the fused op, its pure-PyTorch twin, a plain low-rank
PyTorch formulation (rows scaled by √w, three bmm), and asteroid's / nussl's deep
clustering losses when installed (loaded by file path; never a dependency).
"""
import importlib.util
import os

import pytest
import torch

from chimera import losses
from chimera.ops import reference
from benchutil import FULL, cuda, on_cuda, peak_rss_delta_mb

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


def reference_loss(V, labels, w):
    vv, vy, yy, s = reference.affinity_stats(V, labels, w, C)
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
    "chimera": lambda V, y, w: losses.deep_clustering_loss(V, y, w),
    "reference": reference_loss,
    "plain_lowrank": plain_lowrank,
}
if _asteroid is not None:
    IMPLS["asteroid"] = asteroid_loss
if _nussl is not None:
    IMPLS["nussl"] = nussl_loss


@pytest.mark.parametrize("impl", list(IMPLS))
def test_dc_forward(benchmark, impl):
    V, y, w = inputs()
    benchmark.group = f"dc-forward B{B} N{N} D{D}"
    with torch.no_grad():
        loss = benchmark(IMPLS[impl], V, y, w)
    assert torch.isfinite(loss)


def training_step(impl, V, y, w):
    """One forward+backward of `impl`; returns dL/dV."""
    V.requires_grad_(True)

    def step():
        V.grad = None
        IMPLS[impl](V, y, w).backward()
        return V.grad
    return step


@pytest.mark.parametrize("impl", list(IMPLS))
def test_dc_forward_backward(benchmark, impl):
    benchmark.group = f"dc-forward-backward B{B} N{N} D{D}"
    grad = benchmark(training_step(impl, *inputs()))
    assert torch.isfinite(grad).all()


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
@pytest.mark.parametrize("impl", ["chimera", "plain_lowrank"])
def test_dc_forward_backward_cuda(benchmark, impl):
    benchmark.group = f"dc-forward-backward CUDA B{B} N{N} D{D}"
    grad = benchmark(on_cuda(training_step(impl, *(t.cuda() for t in inputs()))))
    assert torch.isfinite(grad).all()
