"""Edge inputs of the kernels found in review, each against chimera.ops.reference in float64."""
import pytest
import torch

from chimera import ops
from chimera.ops import reference

NAN = float("nan")


# A NaN window sample makes the envelope NaN at the positions it covers; elsewhere the
# envelope vanishes. torch.istft (and the reference) take the NaN as the minimum of the
# envelope (torch.min propagates it), so the NOLA check passes and the output is NaN. The
# kernels' check kept the first value it saw instead of the NaN when the zero came first,
# and raised "violate the NOLA condition" for the same input.
NAN_WINDOWS = [  # (window, hop, center)
    ([0.15, 0.0, 0.0, NAN], 3, True),
    ([0.0, 0.0, 0.0, NAN], 4, False),
    ([0.0, 0.6, 0.0, 0.0, 0.8, 0.0, 0.0, 0.2, 0.0, 0.0, 0.2, 0.5, 0.1, NAN, 0.3, 0.0], 12, False),
]


@pytest.mark.parametrize("window, hop, center", NAN_WINDOWS)
def test_overlap_add_nan_window_is_nan_not_a_nola_error(cpu_path, window, hop, center):
    window = torch.tensor(window, dtype=torch.float64)
    n_fft = window.shape[0]
    frames = torch.randn(2, 5, n_fft, dtype=torch.float64)
    want = reference.overlap_add(frames, window, hop, center, None)
    assert want.isnan().any()
    torch.testing.assert_close(ops.overlap_add(frames, window, hop, center, None), want, equal_nan=True)
    grad = torch.randn(2, want.shape[-1], dtype=torch.float64)
    want = reference.overlap_add_backward(grad, window, hop, center, 5)
    torch.testing.assert_close(ops.overlap_add_backward(grad, window, hop, center, 5), want, equal_nan=True)
    for dtype in (torch.float32, torch.float16):  # the check of the other dtypes
        got = ops.overlap_add(frames.to(dtype), window.to(dtype), hop, center, None)
        torch.testing.assert_close(got.double(), reference.overlap_add(frames, window, hop, center, None),
                                   equal_nan=True, rtol=1e-2, atol=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("window, hop, center", NAN_WINDOWS)
def test_overlap_add_nan_window_on_cuda(window, hop, center):
    """The CUDA backward's trimmed positions gave 0 where the reference (and the CPU) give
    window · 0, NaN for a NaN window sample."""
    window = torch.tensor(window, dtype=torch.float64)
    frames = torch.randn(2, 5, window.shape[0], dtype=torch.float64)
    want = reference.overlap_add(frames, window, hop, center, None)
    got = ops.overlap_add(frames.cuda(), window.cuda(), hop, center, None)
    torch.testing.assert_close(got.cpu(), want, equal_nan=True)
    grad = torch.randn(2, want.shape[-1], dtype=torch.float64)
    want = reference.overlap_add_backward(grad, window, hop, center, 5)
    got = ops.overlap_add_backward(grad.cuda(), window.cuda(), hop, center, 5)
    torch.testing.assert_close(got.cpu(), want, equal_nan=True)


def test_overlap_add_zero_envelope_still_raises():
    """Without a NaN, a vanishing envelope is still refused, as by the reference."""
    window = torch.tensor([0.15, 0.0, 0.0, 0.5], dtype=torch.float64)
    frames = torch.randn(2, 5, 4, dtype=torch.float64)
    for fn in (ops.overlap_add, reference.overlap_add):
        with pytest.raises(RuntimeError, match="NOLA"):
            fn(frames, window, 3, True, None)
