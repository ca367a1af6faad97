"""chimera.signal.istft (fused overlap-add op) vs torch.istft, forward and forward+backward.

Issue shape (CHIMERA_BENCH_FULL=1): 8 signals x 30 s at 44.1 kHz, n_fft 1024, hop 256,
sqrt-Hann. Default: a small shape for CI. Ratios against torch.istft (timed in the
same test) and the peak memory of each (extra resident memory of a subprocess that
runs forward+backward once, over the resident size before it) go to extra_info.
"""
import time

import pytest
import torch

from chimera.signal import istft

from benchutil import FULL, cuda, on_cuda, peak_rss_delta_mb
BATCH, SECONDS, RATE = (8, 30.0, 44100) if FULL else (2, 1.0, 16000)
N_FFT, HOP = 1024, 256


def make_inputs(seed=0):
    """Spectra of BATCH noise signals, as torch.stft lays them out (frequency fastest),
    the layout every spectrum in a separation pipeline has (masks times an STFT)."""
    g = torch.Generator().manual_seed(seed)
    window = torch.hann_window(N_FFT).sqrt()
    x = torch.randn(BATCH, int(SECONDS * RATE), generator=g)
    spec = torch.stft(x, N_FFT, HOP, window=window, return_complex=True)
    return spec, window


def run_torch(spec, window):
    return torch.istft(spec, N_FFT, HOP, window=window)


def run_chimera(spec, window):
    return istft(spec, N_FFT, HOP, window)


IMPLS = {"chimera": run_chimera, "torch": run_torch}


def fwd_bwd(fn, spec, window):
    spec = spec.detach().requires_grad_(True)
    y = fn(spec, window)
    y.backward(torch.ones_like(y))
    return spec.grad


def best_time(fn, reps=3):
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def extra_peak_mib(impl, backward):
    """Peak resident memory added by one forward (+backward), in a fresh process (MiB)."""
    setup = f"""
        import bench_signal as b
        spec, window = b.make_inputs()
        impl = b.IMPLS[{impl!r}]
        b.fwd_bwd(impl, spec[..., :8], window)  # load FFT plans and kernels first
    """
    return peak_rss_delta_mb(setup, "b.fwd_bwd(impl, spec, window)" if backward else "impl(spec, window)")


@pytest.mark.parametrize("impl", list(IMPLS))
def test_istft_forward(benchmark, impl):
    spec, window = make_inputs()
    benchmark.group = f"istft forward {BATCH}x{SECONDS:g}s"
    fn = IMPLS[impl]
    out = benchmark(fn, spec, window)
    benchmark.extra_info["extra_peak_rss_mib"] = extra_peak_mib(impl, backward=False)
    if impl == "chimera":
        torch.testing.assert_close(out, run_torch(spec, window), rtol=0, atol=1e-5 * out.abs().max().item())
        ours = best_time(lambda: fn(spec, window))
        benchmark.extra_info["speedup_vs_torch"] = best_time(lambda: run_torch(spec, window)) / ours
        benchmark.extra_info["torch_extra_peak_rss_mib"] = extra_peak_mib("torch", backward=False)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_istft_forward_backward(benchmark, impl):
    spec, window = make_inputs()
    benchmark.group = f"istft forward+backward {BATCH}x{SECONDS:g}s"
    fn = IMPLS[impl]
    grad = benchmark(fwd_bwd, fn, spec, window)
    benchmark.extra_info["extra_peak_rss_mib"] = extra_peak_mib(impl, backward=True)
    if impl == "chimera":
        torch.testing.assert_close(grad, fwd_bwd(run_torch, spec, window), rtol=0,
                                   atol=1e-5 * grad.abs().max().item())
        ours = best_time(lambda: fwd_bwd(fn, spec, window))
        benchmark.extra_info["speedup_vs_torch"] = best_time(lambda: fwd_bwd(run_torch, spec, window)) / ours
        benchmark.extra_info["torch_extra_peak_rss_mib"] = extra_peak_mib("torch", backward=True)


@cuda
@pytest.mark.parametrize("impl", list(IMPLS))
def test_istft_forward_backward_cuda(benchmark, impl):
    spec, window = (t.cuda() for t in make_inputs())
    benchmark.group = f"istft forward+backward CUDA {BATCH}x{SECONDS:g}s"
    benchmark(on_cuda(fwd_bwd), IMPLS[impl], spec, window)
