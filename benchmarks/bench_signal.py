"""chimera.signal.istft (fused overlap-add op) vs torch.istft, forward and forward+backward.

Issue shape (CHIMERA_BENCH_FULL=1): 8 signals x 30 s at 44.1 kHz, n_fft 1024, hop 256,
sqrt-Hann. Default: a small shape for CI. The chimera benchmarks store their speed-up over
torch.istft, timed alternately in the same test (benchutil.record_speedup, gated by
`make bench-check`), and the bytes-moved floor of the pipeline on this machine; a separate
benchmark reports the peak memory of each (extra resident memory of a subprocess that runs
forward (+backward) once, over the resident size before it).
"""
import pytest
import torch

from chimera.signal import istft

from benchutil import FULL, assert_same, cuda, on_cuda, peak_rss_delta_mb, record_floor, record_speedup

BATCH, SECONDS, RATE = (8, 30.0, 44100) if FULL else (2, 1.0, 16000)
N_FFT, HOP = 1024, 256
NAME = f"{BATCH}x{SECONDS:g}s"
ROUNDS = 5 if FULL else 20


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


def bytes_moved(spec, backward):
    """Least memory traffic with the FFT as its own pass: read the spectrum, write the
    frames (inverse FFT), read them, write the signal; the backward the same in reverse."""
    frames = spec.shape[0] * spec.shape[-1] * N_FFT * 4
    signal = spec.shape[0] * (HOP * (spec.shape[-1] - 1)) * 4
    one_way = spec.numel() * 8 + 2 * frames + signal
    return one_way * (2 if backward else 1)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_istft_forward(benchmark, impl):
    spec, window = make_inputs()
    benchmark.group = f"istft forward {NAME}"
    fn = IMPLS[impl]
    out = benchmark.pedantic(fn, args=(spec, window), rounds=ROUNDS, warmup_rounds=1)
    if impl == "chimera":
        assert_same(out, run_torch(spec, window), 1e-5)
        record_speedup(benchmark, lambda: fn(spec, window), lambda: run_torch(spec, window), "torch.istft", ROUNDS)
        record_floor(benchmark, bytes_moved(spec, backward=False))


@pytest.mark.parametrize("impl", list(IMPLS))
def test_istft_forward_backward(benchmark, impl):
    spec, window = make_inputs()
    benchmark.group = f"istft forward+backward {NAME}"
    fn = IMPLS[impl]
    grad = benchmark.pedantic(fwd_bwd, args=(fn, spec, window), rounds=ROUNDS, warmup_rounds=1)
    if impl == "chimera":
        assert_same(grad, fwd_bwd(run_torch, spec, window), 1e-5)
        record_speedup(benchmark, lambda: fwd_bwd(fn, spec, window), lambda: fwd_bwd(run_torch, spec, window),
                       "torch.istft", ROUNDS)
        record_floor(benchmark, bytes_moved(spec, backward=True))


def extra_peak_mib(impl, backward):
    """Peak resident memory added by one forward (+backward), in a fresh process (MiB)."""
    setup = f"""
        import bench_signal as b
        spec, window = b.make_inputs()
        impl = b.IMPLS[{impl!r}]
        b.fwd_bwd(impl, spec[..., :8], window)  # load FFT plans and kernels first
    """
    return peak_rss_delta_mb(setup, "b.fwd_bwd(impl, spec, window)" if backward else "impl(spec, window)")


def test_istft_peak_memory(benchmark):
    benchmark.group = f"istft peak RSS {NAME} (MiB in extra_info)"
    peaks = benchmark.pedantic(
        lambda: {f"{impl}_{'fwd_bwd' if b else 'fwd'}": extra_peak_mib(impl, b) for impl in IMPLS for b in (False, True)},
        rounds=1, iterations=1)
    benchmark.extra_info.update({f"extra_peak_rss_mib_{k}": round(m, 1) for k, m in peaks.items()})
    print(f"\nistft {NAME}: extra peak RSS, MiB: " + ", ".join(f"{k} {m:.1f}" for k, m in peaks.items()))


@cuda
@pytest.mark.parametrize("impl", list(IMPLS))
def test_istft_forward_backward_cuda(benchmark, impl):
    spec, window = (t.cuda() for t in make_inputs())
    benchmark.group = f"istft forward+backward CUDA {NAME}"
    benchmark(on_cuda(fwd_bwd), IMPLS[impl], spec, window)
