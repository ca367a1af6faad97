"""chimera.signal and chimera.ops.overlap_add against torch.stft/torch.istft and float64 oracles."""
import contextlib
import random

import pytest
import torch

import chimera.ops as ops
from chimera.ops import reference
from chimera.signal import StreamingISTFT, inconsistency, istft, misi, stft

from testutil import EXT_DISABLED, cuda, run_isolated

WINDOWS = {
    "sqrt_hann": lambda n, **kw: torch.hann_window(n, **kw).sqrt(),
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
}


def random_spec(n_fft, n_frames, batch=(2,), dtype=torch.complex64):
    return torch.randn(*batch, n_fft // 2 + 1, n_frames, dtype=dtype)


def torch_istft_or_error(spec, n_fft, hop, window, center, length):
    """torch.istft on a flattened batch; ("error", message) when torch rejects it."""
    try:
        out = torch.istft(spec.reshape(-1, *spec.shape[-2:]), n_fft, hop, window=window, center=center, length=length)
    except RuntimeError as exc:
        return "error", str(exc)
    return out.reshape(*spec.shape[:-2], -1), None


# ---------------------------------------------------------------- istft / stft vs torch

@pytest.mark.filterwarnings("ignore:The length of signal is shorter")
@pytest.mark.parametrize("n_fft", [256, 512, 1024, 2048])
@pytest.mark.parametrize("hop_div", [2, 4])
@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("center", [True, False])
def test_istft_matches_torch(n_fft, hop_div, window, center):
    hop = n_fft // hop_div
    w = WINDOWS[window](n_fft)
    spec = random_spec(n_fft, 9)  # not a consistent STFT
    full = n_fft + hop * 8
    for length in (None, full // 2 + 3, full + 50):  # shorter, and longer (zero tail)
        expected, error = torch_istft_or_error(spec, n_fft, hop, w, center, length)
        if expected == "error":  # e.g. Hann with center=False: envelope 0 at sample 0
            assert "overlap add min" in error
            with pytest.raises(RuntimeError, match="NOLA"):
                istft(spec, n_fft, hop, w, center, length)
            continue
        out = istft(spec, n_fft, hop, w, center, length)
        assert out.shape == expected.shape and out.dtype == torch.float32
        scale = expected.abs().max()
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * scale)


def test_nola_cases_in_grid_are_those_torch_rejects():
    # The grid above must also compare values for center=False: Hamming is NOLA there.
    w = torch.hamming_window(256)
    spec = random_spec(256, 5)
    torch.testing.assert_close(istft(spec, 256, 64, w, center=False),
                               torch.istft(spec, 256, 64, window=w, center=False), rtol=0, atol=1e-5)


@pytest.mark.parametrize("center", [True, False])
def test_stft_matches_torch_and_round_trips(center):
    n_fft, hop = 512, 128
    w = torch.hann_window(n_fft).sqrt()
    x = torch.randn(2, 3, 4000)
    spec = stft(x, n_fft, hop, w, center)
    expected = torch.stft(x.reshape(6, -1), n_fft, hop, window=w, center=center, return_complex=True)
    assert spec.shape == (2, 3, n_fft // 2 + 1, expected.shape[-1])
    torch.testing.assert_close(spec.reshape(6, *spec.shape[-2:]), expected)
    if center:
        torch.testing.assert_close(istft(spec, n_fft, hop, w, length=4000), x, rtol=0, atol=1e-5)


def test_istft_float64_and_batch_shapes():
    n_fft, hop = 256, 64
    w = torch.hann_window(n_fft, dtype=torch.float64)
    spec = random_spec(n_fft, 7, batch=(2, 3), dtype=torch.complex128)
    out = istft(spec, n_fft, hop, w)
    expected = torch.istft(spec.reshape(6, n_fft // 2 + 1, 7), n_fft, hop, window=w).reshape(2, 3, -1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_istft_rejects_bad_input():
    w = torch.hann_window(256)
    with pytest.raises(ValueError, match="complex"):
        istft(torch.randn(129, 4), 256, 64, w)
    with pytest.raises(ValueError, match="n_fft // 2 \\+ 1"):
        istft(random_spec(512, 4), 256, 64, w)
    with pytest.raises(ValueError, match="hop_length"):
        istft(random_spec(256, 4), 256, 300, w)


# ---------------------------------------------------------------- the op itself

def frames_and_window(n_frames=6, n_fft=32, batch=(3,), dtype=torch.float64, window="hann"):
    frames = torch.randn(*batch, n_frames, n_fft, dtype=dtype)
    return frames, WINDOWS[window](n_fft, dtype=dtype)


@pytest.mark.parametrize("center,length", [(True, None), (False, None), (True, 40), (True, 200), (False, 77)])
@pytest.mark.parametrize("hop", [8, 11, 32])
def test_overlap_add_matches_reference(center, length, hop):
    frames, w = frames_and_window(window="hamming")
    out = ops.overlap_add(frames, w, hop, center, length)
    torch.testing.assert_close(out, reference.overlap_add(frames, w, hop, center, length), rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    n_frames = frames.shape[-2]
    torch.testing.assert_close(ops.overlap_add_backward(g, w, hop, center, n_frames),
                               reference.overlap_add_backward(g, w, hop, center, n_frames), rtol=1e-12, atol=1e-12)


def test_overlap_add_backward_is_the_adjoint():
    frames, w = frames_and_window()
    g = torch.randn_like(ops.overlap_add(frames, w, 8, True, 100))
    lhs = (ops.overlap_add(frames, w, 8, True, 100) * g).sum()
    rhs = (frames * ops.overlap_add_backward(g, w, 8, True, frames.shape[-2])).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_overlap_add_low_precision(dtype):
    frames, w = frames_and_window(n_frames=20, n_fft=64, dtype=torch.float64)
    expected = reference.overlap_add(frames, w, 16, True, None)
    out = ops.overlap_add(frames.to(dtype), w.to(dtype), 16, True, None)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("center,length", [(True, None), (False, 50), (True, 120)])
def test_overlap_add_gradcheck(center, length):
    frames, w = frames_and_window(n_frames=5, n_fft=16, batch=(2,), window="hamming")
    frames.requires_grad_(True)
    fn = lambda f: ops.overlap_add(f, w, 5, center, length)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (frames,))
    assert torch.autograd.gradgradcheck(fn, (frames,))


def test_overlap_add_gradcheck_window():
    frames, w = frames_and_window(n_frames=4, n_fft=12, batch=(2,), window="hamming")
    frames.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, w: ops.overlap_add(f, w, 4, True, None), (frames, w))


def test_istft_gradcheck():
    n_fft, hop = 16, 4
    w = torch.hann_window(n_fft, dtype=torch.float64).sqrt()
    spec = random_spec(n_fft, 5, dtype=torch.complex128).requires_grad_(True)
    fn = lambda s: istft(s, n_fft, hop, w, True, 30)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (spec,), fast_mode=True)
    assert torch.autograd.gradcheck(fn, (spec[..., :3].detach().requires_grad_(True),))  # full Jacobian, small


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    frames, w = frames_and_window(n_frames=5, n_fft=16, dtype=torch.float32, window="hamming")
    frames.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.chimera.overlap_add.default, (frames, w, 4, True, None))
    torch.library.opcheck(torch.ops.chimera.overlap_add.default, (frames, w, 4, False, 90))
    g = torch.randn(3, 50, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.chimera.overlap_add_backward.default, (g, w, 4, True, 5))


def test_overlap_add_under_compile_shapes():
    frames, w = frames_and_window(n_frames=5, n_fft=16, dtype=torch.float32)
    out = torch.ops.chimera.overlap_add(frames.to("meta"), w.to("meta"), 4, True, None)
    assert out.shape == ops.overlap_add(frames, w, 4, True, None).shape


def test_overlap_add_nola_rejected():
    frames, w = frames_and_window(window="hann")  # periodic Hann: w[0] = 0
    with pytest.raises(RuntimeError, match="NOLA"):
        ops.overlap_add(frames, w, 8, False, None)  # sample 0 sees only w[0]
    with pytest.raises(RuntimeError, match="NOLA"):
        ops.overlap_add(frames, w.clone().index_fill_(0, torch.arange(8, 16), 0.0), 32, True, None)  # gap inside
    with pytest.raises(RuntimeError, match="NOLA"):
        ops.overlap_add_backward(torch.randn(3, 72, dtype=torch.float64), w, 8, False, 6)
    ops.overlap_add(frames, w, 8, True, None)  # center trims the vanishing edge: fine


def test_overlap_add_rejects_bad_arguments():
    frames, w = frames_and_window()
    with pytest.raises(RuntimeError, match="n_fft"):
        ops.overlap_add(frames, w[:-1], 8, True, None)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.overlap_add(frames, w.float(), 8, True, None)
    with pytest.raises(RuntimeError, match="hop_length"):
        ops.overlap_add(frames, w, 0, True, None)
    with pytest.raises(RuntimeError, match="length"):
        ops.overlap_add(frames, w, 8, True, -3)


@cuda
def test_overlap_add_cuda_matches_reference():
    # Against the float64 reference, not the CPU kernel: both kernels share csrc/common.
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        frames, w = frames_and_window(n_frames=40, n_fft=64, batch=(2, 3), dtype=dtype, window="hamming")
        for center, length in ((True, None), (False, 500), (True, 700)):
            out = ops.overlap_add(frames.cuda(), w.cuda(), 16, center, length)
            want = reference.overlap_add(frames.double(), w.double(), 16, center, length)
            torch.testing.assert_close(out.cpu().double(), want, rtol=tol, atol=tol)
            g = torch.randn(out.shape, dtype=dtype)
            got = ops.overlap_add_backward(g.cuda(), w.cuda(), 16, center, 40).cpu()
            want = reference.overlap_add_backward(g.double(), w.double(), 16, center, 40)
            torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    with pytest.raises(RuntimeError, match="NOLA"):
        ops.overlap_add(frames.cuda(), torch.hann_window(64, device="cuda", dtype=dtype), 16, False, None)


@cuda
def test_overlap_add_cuda_half_and_gradcheck():
    frames, w = frames_and_window(n_frames=10, n_fft=32, dtype=torch.float64, window="hamming")
    expected = reference.overlap_add(frames, w, 8, True, None)
    for dtype in (torch.float16, torch.bfloat16):
        out = ops.overlap_add(frames.cuda().to(dtype), w.cuda().to(dtype), 8, True, None)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double().cpu(), expected, rtol=3e-2, atol=3e-2)
    f = frames.cuda().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: ops.overlap_add(f, w.cuda(), 8, True, 70), (f,))


@cuda
@pytest.mark.parametrize("case", ["+nan", "-nan", "inf", "empty", "expanded"])
def test_overlap_add_cuda_edge_inputs(case):
    check_edge_case(case, "cuda")


# ---------------------------------------------------------------- NaN, NOLA agreement, edge inputs

def _nan(negative):
    bits = torch.tensor([0xFFC00000 if negative else 0x7FC00000], dtype=torch.int64).to(torch.int32)
    return bits.view(torch.float32).item()


OLA_EDGE_CASES = ("empty", "one_frame", "length0", "+nan", "-nan", "inf", "noncontiguous", "expanded", "float16",
                  "bfloat16")


def _ola_edge_inputs(case, dtype):
    """(frames, window, hop, center, length, grad) for one edge case of overlap_add."""
    g = torch.Generator().manual_seed(7)
    n_frames, n_fft, hop, center, length = 9, 32, 8, True, None
    batch = (0, 2) if case == "empty" else (3,)
    if case == "one_frame":
        n_frames, center = 1, False
    if case == "length0":
        length = 0
    frames = torch.randn(*batch, n_frames, n_fft, generator=g, dtype=torch.float64)
    window = torch.hamming_window(n_fft, dtype=torch.float64)
    if case in ("+nan", "-nan"):
        frames[0, 2, 5] = frames[1, 0, 20] = frames[2, 8, 31] = _nan(case == "-nan")
    elif case == "inf":
        frames[0, 3, 4], frames[0, 4, 4 + hop], frames[1, 1, 1] = float("inf"), float("-inf"), float("-inf")
    elif case == "noncontiguous":
        frames = frames.transpose(-1, -2).contiguous().transpose(-1, -2)
        window = torch.hamming_window(2 * n_fft, dtype=torch.float64)[::2]
    elif case == "expanded":
        frames = frames[:1].expand(*frames.shape)
        window = torch.ones(1, dtype=torch.float64).expand(n_fft)  # rectangular, stride 0
    out_len = reference.overlap_add(frames, window, hop, center, length).shape[-1]
    grad = torch.randn(*batch, out_len, generator=g, dtype=torch.float64)
    if case in ("+nan", "-nan") and out_len > 3:
        grad[0, 3] = _nan(case == "-nan")
    if case == "expanded":
        grad = grad[:1].expand_as(grad)
    dtype = getattr(torch, case) if case in ("float16", "bfloat16") else dtype
    return frames.to(dtype), window.to(dtype), hop, center, length, grad.to(dtype)


def check_edge_case(case, device="cpu"):
    """overlap_add and its backward on one edge case, every CPU path (or CUDA) and dtype,
    against the float64 reference, NaN where it is NaN (run in a subprocess below)."""
    paths = (ops.supported_cpu_capabilities() or (None,)) if device == "cpu" else (None,)
    for path in paths:
        for dtype in (torch.float32, torch.float64):
            frames, window, hop, center, length, grad = (t.to(device) if isinstance(t, torch.Tensor) else t
                                                         for t in _ola_edge_inputs(case, dtype))
            n_frames = frames.shape[-2]
            with ops.use_cpu_capability(path) if path else contextlib.nullcontext():
                out = ops.overlap_add(frames, window, hop, center, length)
                back = ops.overlap_add_backward(grad, window, hop, center, n_frames)
            want = reference.overlap_add(frames.double(), window.double(), hop, center, length)
            want_back = reference.overlap_add_backward(grad.double(), window.double(), hop, center, n_frames)
            tol = 2e-2 if frames.dtype in (torch.float16, torch.bfloat16) else 1e-5 if dtype == torch.float32 else 1e-12
            for got, ref in ((out, want), (back, want_back)):
                assert got.dtype == frames.dtype and got.shape == ref.shape
                torch.testing.assert_close(got.double().cpu(), ref.cpu(), rtol=tol, atol=tol, equal_nan=True)
            if case.endswith("nan"):
                assert torch.isnan(out).any() and torch.isnan(back).any()


@pytest.mark.parametrize("case", OLA_EDGE_CASES)
def test_overlap_add_edge_inputs(case):
    run_isolated("test_signal", "check_edge_case", case)


@pytest.mark.parametrize("negative", [False, True], ids=["+nan", "-nan"])
def test_overlap_add_nan_propagates(cpu_path, negative):
    frames, w = frames_and_window(n_frames=8, n_fft=32, batch=(2,), dtype=torch.float32)
    frames[1, 3, 10] = _nan(negative)
    out = ops.overlap_add(frames, w, 8, True, None)
    assert torch.isnan(out[1]).sum() == 1 and not torch.isnan(out[0]).any()  # one sample, nowhere else
    g = torch.randn_like(out)
    g[0, 40] = _nan(negative)
    back = ops.overlap_add_backward(g, w, 8, True, 8)
    assert torch.isnan(back[0]).sum() == 4 and not torch.isnan(back[1]).any()  # the 4 frames covering it


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_overlap_add_half_policy_is_the_same_in_kernel_and_reference(cpu_path, dtype):
    # Both sum in float32 and round once: the results agree to the last bit but for the
    # order of the float32 additions (a reference summing in float16 differs by many ulps).
    frames, w = frames_and_window(n_frames=40, n_fft=64, batch=(2,), dtype=torch.float32, window="hamming")
    frames, w = 100 * frames.to(dtype), w.to(dtype)
    out, ref = ops.overlap_add(frames, w, 16, True, None), reference.overlap_add(frames, w, 16, True, None)
    assert out.dtype == ref.dtype == dtype
    ulp = torch.finfo(dtype).eps * ref.float().abs().clamp_min(1)
    assert ((out.float() - ref.float()).abs() <= ulp).all()
    g = 100 * torch.randn_like(out)
    back = ops.overlap_add_backward(g, w, 16, True, 40)
    back_ref = reference.overlap_add_backward(g, w, 16, True, 40)
    assert ((back.float() - back_ref.float()).abs() <= torch.finfo(dtype).eps * back_ref.float().abs().clamp_min(1)).all()


@pytest.mark.parametrize("envelope", [0.5e-11, 2e-11])
def test_nola_tolerance_is_the_same_in_kernels_reference_and_stream(envelope):
    # A window whose ends give an envelope just below / above the tolerance at sample 0.
    w = torch.hamming_window(64, dtype=torch.float64)
    w[0] = envelope ** 0.5
    frames = torch.randn(1, 6, 64, dtype=torch.float64)
    spec = torch.fft.rfft(frames, dim=-1).transpose(-1, -2)
    calls = {
        "kernel": lambda: ops.overlap_add(frames, w, 64, False, None),
        "reference": lambda: reference.overlap_add(frames, w, 64, False, None),
        "stream": lambda: StreamingISTFT(64, 64, w, center=False).push(spec),
    }
    for name, call in calls.items():
        if envelope < reference.NOLA_TOLERANCE:
            with pytest.raises(RuntimeError, match=f"below {reference.NOLA_TOLERANCE:g}.*NOLA"):
                call()
        else:
            call()


def test_backend_reports_overlap_add():
    expected = "reference" if EXT_DISABLED else "cpp"
    assert ops.backend("cpu")["overlap_add"] == expected
    assert ops.backend("cpu")["overlap_add_backward"] == expected


# ---------------------------------------------------------------- streaming

@pytest.mark.filterwarnings("ignore:The length of signal is shorter")
@pytest.mark.parametrize("n_fft,hop", [(64, 16), (64, 32), (60, 25), (32, 32)])
@pytest.mark.parametrize("center,length", [(True, None), (False, None), (True, 333), (False, 1000)])
def test_streaming_equals_one_shot(n_fft, hop, center, length):
    if center and length is None and 2 * hop > n_fft:
        with pytest.raises(ValueError, match="hop_length"):
            StreamingISTFT(n_fft, hop, torch.hamming_window(n_fft), center)
        return
    rng = random.Random(n_fft * hop)
    w = torch.hamming_window(n_fft, dtype=torch.float64)
    n_frames = 30
    spec = random_spec(n_fft, n_frames, batch=(2,), dtype=torch.complex128)
    expected = istft(spec, n_fft, hop, w, center, length)
    for _ in range(4):  # random chunkings, including empty and single-frame chunks
        stream = StreamingISTFT(n_fft, hop, w, center, length)
        pieces, t = [], 0
        while t < n_frames:
            step = rng.choice([0, 1, 1, 2, 3, 7, 12])
            pieces.append(stream.push(spec[..., t:t + step]))
            t += step
        pieces.append(stream.flush())
        out = torch.cat(pieces, -1)
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6 * expected.abs().max())


def test_streaming_float32_and_state_size():
    n_fft, hop = 256, 64
    w = torch.hann_window(n_fft).sqrt()
    spec = random_spec(n_fft, 40, batch=(3,))
    expected = istft(spec, n_fft, hop, w)
    stream = StreamingISTFT(n_fft, hop, w)
    out = [stream.push(spec[..., :17])]
    assert stream._open.shape == (3, n_fft - hop)  # the only samples kept between calls
    out += [stream.push(spec[..., 17:]), stream.flush()]
    torch.testing.assert_close(torch.cat(out, -1), expected, rtol=0, atol=1e-6 * expected.abs().max())


def test_streaming_nola_rejected():
    stream = StreamingISTFT(64, 16, torch.hann_window(64), center=False)
    with pytest.raises(RuntimeError, match="NOLA"):
        stream.push(random_spec(64, 5))


def test_streaming_nola_error_names_the_stream_sample():
    # hop > n_fft / 2 without center: the samples past the first n_fft // 2 of a chunk go
    # through the op, whose message counted from the chunk's centred start (sample 1, not 5)
    n_fft, hop = 8, 6
    w = torch.ones(n_fft, dtype=torch.float64)
    w[5] = 0  # the envelope vanishes at every sample 5 + 6k
    spec = random_spec(n_fft, 6, dtype=torch.complex128)
    with pytest.raises(RuntimeError, match="at output sample 5,"):
        istft(spec, n_fft, hop, w, center=False)
    for cut in (1, 3, 6):
        stream = StreamingISTFT(n_fft, hop, w, center=False)
        with pytest.raises(RuntimeError, match="at output sample 5,"):
            stream.push(spec[..., :cut])
            stream.push(spec[..., cut:])


def test_streaming_flush_without_frames_refused_like_istft():
    # it returned a 1-D float32 CPU tensor whatever the stream's batch shape, dtype, device
    n_fft = 16
    w = torch.hann_window(n_fft, dtype=torch.float64)
    with pytest.raises(ValueError, match="no frames"):
        istft(torch.zeros(2, 9, 0, dtype=torch.complex128), n_fft, 4, w, length=20)
    for pushed in ([], [torch.zeros(2, 9, 0, dtype=torch.complex128)]):
        stream = StreamingISTFT(n_fft, 4, w, length=20)
        for chunk in pushed:
            stream.push(chunk)
        with pytest.raises(ValueError, match="no frames were pushed"):
            stream.flush()
        spec = random_spec(n_fft, 5, batch=(2,), dtype=torch.complex128)  # still usable after
        out = torch.cat([stream.push(spec), stream.flush()], -1)
        torch.testing.assert_close(out, istft(spec, n_fft, 4, w, length=20), rtol=0, atol=1e-12)


def test_streaming_stops_at_length_like_the_one_shot():
    # A window whose envelope vanishes at every hop (hann with hop = n_fft) where `length`
    # ends the output before the first zero: istft returns it, the stream computed (and
    # NOLA-checked) the samples past `length` anyway and raised.
    n_fft = 16
    w = torch.hann_window(n_fft, dtype=torch.float64)
    spec = random_spec(n_fft, 6, batch=(2,), dtype=torch.complex128)
    for length in (0, 1, 5):
        expected = istft(spec, n_fft, n_fft, w, True, length)
        stream = StreamingISTFT(n_fft, n_fft, w, True, length)
        out = torch.cat([stream.push(spec[..., :4]), stream.push(spec[..., 4:]), stream.flush()], -1)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_empty_batches_give_empty_results():
    # torch.stft and the FFT behind istft refuse an empty batch (MKL: "Inconsistent
    # configuration parameters"): an empty batch gives an empty result of the right shape.
    n_fft, hop = 16, 4
    w = torch.hann_window(n_fft)
    assert stft(torch.randn(0, 100), n_fft, hop, w).shape == (0, 9, 26)
    assert stft(torch.randn(2, 0, 100), n_fft, hop, w).shape == (2, 0, 9, 26)
    assert istft(torch.randn(0, 3, 9, 5, dtype=torch.complex64), n_fft, hop, w).shape == (0, 3, 16)
    stream = StreamingISTFT(n_fft, hop, w, length=20)
    out = torch.cat([stream.push(torch.randn(0, 9, 5, dtype=torch.complex64)), stream.flush()], -1)
    assert out.shape == (0, 20)


def test_empty_batches_stay_differentiable():
    # The empty results were new zeros, outside autograd's graph: a loss over an empty
    # batch raised "element 0 of tensors does not require grad" in backward.
    n_fft, hop = 16, 4
    w = torch.hann_window(n_fft, dtype=torch.float64)
    x = torch.randn(2, 0, 100, dtype=torch.float64, requires_grad=True)
    spec = stft(x, n_fft, hop, w, center=False)
    assert spec.shape == (2, 0, 9, 22) and spec.dtype == torch.complex128
    spec.abs().sum().backward()
    assert x.grad.shape == x.shape
    spec = torch.randn(0, 3, 9, 5, dtype=torch.complex128, requires_grad=True)
    stream = StreamingISTFT(n_fft, hop, w, length=20)
    for y in (istft(spec, n_fft, hop, w), torch.cat([stream.push(spec[:, 0]), stream.flush()], -1)):
        spec.grad = None
        y.sum().backward()
        assert spec.grad.shape == spec.shape


def test_stft_rejects_short_and_integer_signals_in_one_line():
    w = torch.hann_window(16)
    with pytest.raises(ValueError, match="8 samples is too short for n_fft=16 with center=True"):
        stft(torch.randn(2, 8), 16, 4, w)
    with pytest.raises(ValueError, match="15 samples is too short for n_fft=16 with center=False"):
        stft(torch.randn(15), 16, 4, w, center=False)
    assert stft(torch.randn(9), 16, 4, w).shape == (9, 3)  # reflect padding needs n_fft // 2 + 1
    assert stft(torch.randn(16), 16, 4, w, center=False).shape == (9, 1)
    with pytest.raises(ValueError, match="real floating point"):
        stft(torch.zeros(100, dtype=torch.int16), 16, 4, w)


# ---------------------------------------------------------------- MISI

def _sources(n=3, L=4000):
    t = torch.arange(L, dtype=torch.float64) / 8000
    freqs = torch.tensor([220.0, 530.0, 1250.0])[:n, None]
    return torch.sin(2 * torch.pi * freqs * t) * torch.linspace(0.2, 1.0, L) + 0.05 * torch.randn(n, L, dtype=torch.float64)


def test_misi_improves_consistency_and_keeps_magnitudes():
    n_fft, hop = 256, 64
    w = torch.hann_window(n_fft, dtype=torch.float64).sqrt()
    src = _sources()
    mix = src.sum(0)
    S = stft(src, n_fft, hop, w)
    Y = stft(mix, n_fft, hop, w)
    est = S.abs() * torch.exp(1j * torch.angle(Y))  # true magnitudes, mixture phase
    before = inconsistency(est, n_fft, hop, w)
    wav, spectra = misi(mix, est, 5, n_fft, hop, w, return_spectra=True)
    phase = spectra / spectra.abs().clamp_min(1e-12)
    after = inconsistency(S.abs() * phase, n_fft, hop, w)
    assert (after < before).all(), (before, after)
    err = lambda s: ((s - src).norm(dim=-1) / src.norm(dim=-1))  # noqa: E731
    assert (err(wav) < err(istft(est, n_fft, hop, w, length=mix.shape[-1]))).all()


def test_misi_zero_iterations_is_istft():
    n_fft, hop = 128, 32
    w = torch.hann_window(n_fft, dtype=torch.float64)
    src = _sources(2, 1000)
    est = stft(src, n_fft, hop, w) * 0.7
    torch.testing.assert_close(misi(src.sum(0), est, 0, n_fft, hop, w), istft(est, n_fft, hop, w, length=1000))


@pytest.mark.parametrize("mixture_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("estimates_dtype", [torch.complex64, torch.complex128, torch.float32])
@pytest.mark.parametrize("mixture_consistent", [False, True])
def test_misi_dtype_does_not_depend_on_n_iter(mixture_dtype, estimates_dtype, mixture_consistent):
    """complex64 estimates with a float64 mixture gave float32 for n_iter=0, float64 after."""
    n_fft, hop = 128, 32
    w = torch.hann_window(n_fft, dtype=torch.float64)
    src = _sources(2, 1000)
    est = stft(src, n_fft, hop, w)
    est = est.to(estimates_dtype) if estimates_dtype.is_complex else est.abs().to(estimates_dtype)
    mix = src.sum(0).to(mixture_dtype)
    real = torch.promote_types(mixture_dtype, est.real.dtype)
    for n_iter in (0, 1, 2):
        wav, spectra = misi(mix, est, n_iter, n_fft, hop, w, mixture_consistent=mixture_consistent,
                            return_spectra=True)
        assert wav.dtype == real and spectra.dtype == real.to_complex(), (n_iter, wav.dtype, spectra.dtype)


def test_misi_mixture_consistent_and_magnitude_input():
    n_fft, hop = 128, 32
    w = torch.hann_window(n_fft, dtype=torch.float64)
    src = _sources(3, 2000).unsqueeze(0)  # batch of 1
    mix = src.sum(1)
    mags = stft(src, n_fft, hop, w).abs() * 0.8
    wav = misi(mix, mags, 3, n_fft, hop, w, mixture_consistent=True)
    assert wav.shape == src.shape
    torch.testing.assert_close(wav.sum(1), mix, rtol=0, atol=1e-10)
    assert not torch.allclose(misi(mix, mags, 3, n_fft, hop, w).sum(1), mix, atol=1e-3)


def test_misi_stays_finite_on_subnormal_bins():
    # A float32 voice fading into a subnormal tail (what a near-silent stretch of a solo gives
    # after masking): bins of |z| ~ 1e-39 once made the phase update inf / NaN.
    n_fft, hop = 128, 32
    w = torch.hann_window(n_fft).sqrt()
    src = _sources(2, 2000).float()
    src[:, 1000:] *= 1e-40
    est = stft(src, n_fft, hop, w)
    tiny = est.abs()
    assert ((tiny > 0) & (tiny < torch.finfo(torch.float32).tiny)).any()  # the case is exercised
    wav, spectra = misi(src.sum(0), est, 2, n_fft, hop, w, return_spectra=True)
    assert torch.isfinite(wav).all() and torch.isfinite(spectra).all()
    torch.testing.assert_close(wav[:, :900], src[:, :900], rtol=0, atol=1e-4)  # the loud part unharmed


@pytest.mark.parametrize("magnitudes", [False, True])
def test_misi_propagates_nan_in_the_mixture(magnitudes):
    # The phase of a NaN bin became 1 (as for a zero bin): the NaN of the mixture was
    # dropped after one update and the waveforms came back finite, though wrong.
    n_fft, hop = 64, 16
    w = torch.hann_window(n_fft, dtype=torch.float64)
    src = _sources(2, 1000)
    mix = src.sum(0).repeat(2, 1)
    mix[0, 500] = float("nan")
    est = stft(src, n_fft, hop, w).expand(2, -1, -1, -1) * 0.9
    wav = misi(mix, est.abs() if magnitudes else est, 2, n_fft, hop, w)
    assert wav[0, :, 500].isnan().all()
    assert wav[1].isfinite().all()  # the other item of the batch is unharmed


def test_misi_rejects_complex_estimates_with_other_frames_than_the_mixture():
    n_fft, hop = 64, 16
    w = torch.hann_window(n_fft, dtype=torch.float64)
    src = _sources(2, 1000)
    est = stft(src, n_fft, hop, w)  # 63 frames
    for bad in (torch.cat([est, est[..., :3]], -1), est[..., :-3]):
        with pytest.raises(ValueError, match=f"estimates have {bad.shape[-1]} frames but the mixture STFT has 63"):
            misi(src.sum(0), bad, 2, n_fft, hop, w)


def test_misi_is_differentiable():
    n_fft, hop = 32, 8
    w = torch.hann_window(n_fft, dtype=torch.float64)
    src = _sources(2, 200)
    mags = stft(src, n_fft, hop, w).abs().requires_grad_(True)
    fn = lambda m: misi(src.sum(0), m, 2, n_fft, hop, w)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (mags,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("layout", ["contiguous", "stft"])
def test_istft_gradient_matches_torch(layout):
    n_fft, hop = 256, 64
    w = torch.hann_window(n_fft).sqrt()
    g = torch.randn(2, 900)
    spec = random_spec(n_fft, 16)
    if layout == "stft":  # torch.stft's layout: frequency fastest
        spec = spec.transpose(-1, -2).contiguous().transpose(-1, -2)
    ours = spec.clone().requires_grad_(True)
    theirs = spec.clone().requires_grad_(True)
    (istft(ours, n_fft, hop, w, True, 900) * g).sum().backward()
    (torch.istft(theirs, n_fft, hop, window=w, length=900) * g).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-5 * theirs.grad.abs().max())
