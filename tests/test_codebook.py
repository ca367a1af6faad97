"""chimera.ops.codebook_lookup against its float64 reference, gradients, op checks, edge cases,
and the magbook / phasebook / combook heads."""
import math

import pytest
import torch

from chimera.ops import codebook_lookup, reference
from chimera.ops.codebook import codebook_lookup_backward, codebook_lookup_op
from chimera.models.codebook_heads import CombookHead, MagbookHead, PhasebookHead

from testutil import cuda

MODES = ("interpolate", "argmax")
K = 6


def _codebook(kind, dtype=torch.float64, k=K):
    if kind == "complex":
        return torch.randn(k, dtype=dtype).to(torch.complex128 if dtype == torch.float64 else torch.complex64) + 1j * torch.randn(
            k, dtype=dtype
        )
    return torch.randn(k, dtype=dtype)


def _close(a, b, tol):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_float64_reference(mode, kind, normalize, dtype):
    logits = 3 * torch.randn(2, 7, 5, K, dtype=dtype)
    cb = _codebook(kind, dtype)
    out = codebook_lookup(logits, cb, mode, normalize)
    ref = reference.codebook_lookup(logits.double(), cb.to(torch.complex128 if kind == "complex" else torch.float64),
                                    mode, normalize)
    assert out.shape == (2, 7, 5) and out.dtype == cb.dtype
    _close(out.to(ref.dtype), ref, 1e-5 if dtype == torch.float32 else 1e-12)


def test_interpolate_is_softmax_weighted_sum():
    # An independent oracle: plain softmax, no conventions involved.
    logits = torch.randn(4, 3, K, dtype=torch.float64)
    cb = _codebook("complex")
    expected = (torch.softmax(logits, -1).to(cb.dtype) * cb).sum(-1)
    _close(codebook_lookup(logits, cb), expected, 1e-12)
    _close(codebook_lookup(logits, cb, normalize=True), expected / expected.abs(), 1e-12)
    _close(codebook_lookup(logits, cb, "argmax"), cb[logits.argmax(-1)], 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck(mode, kind, normalize):
    logits = torch.randn(3, 4, K, dtype=torch.float64, requires_grad=True)
    cb = _codebook(kind).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, c: codebook_lookup(x, c, mode, normalize), (logits, cb))


@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("normalize", [False, True])
def test_gradients_match_reference_autograd(kind, normalize):
    logits = 2 * torch.randn(5, 3, K, dtype=torch.float64)
    cb = _codebook(kind)
    weight = torch.randn(5, 3, dtype=cb.dtype)
    grads = []
    for fn in (codebook_lookup, reference.codebook_lookup):
        x, c = logits.clone().requires_grad_(), cb.clone().requires_grad_()
        (fn(x, c, "interpolate", normalize) * weight).real.sum().backward()
        grads.append((x.grad, c.grad))
    _close(grads[0][0], grads[1][0], 1e-12)
    _close(grads[0][1], grads[1][1], 1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", [False, True])
def test_backward_twin_matches_kernel(mode, normalize):
    # The op-level backward against its spelt-out reference formulas, float32 vs float64.
    logits = 2 * torch.randn(4, 9, K)
    cb = torch.randn(K, 2)
    grad = torch.randn(4, 9, 2)
    got = codebook_lookup_backward(grad, logits, cb, mode == "argmax", normalize, [True, True])
    want = reference.codebook_lookup_backward(grad.double(), logits.double(), cb.double(), mode == "argmax",
                                              normalize, [True, True])
    _close(got[0].double(), want[0], 1e-5)
    _close(got[1].double(), want[1], 1e-4)
    if mode == "argmax":
        assert torch.count_nonzero(got[0]) == 0


def test_output_mask():
    logits, cb, grad = torch.randn(3, K), torch.randn(K), torch.randn(3)
    gx, gc = codebook_lookup_backward(grad, logits, cb, False, False, [False, True])
    assert gx.shape == (0,) and gc.abs().sum() > 0
    gx, gc = codebook_lookup_backward(grad, logits, cb, False, False, [True, False])
    assert gx.shape == logits.shape and torch.count_nonzero(gc) == 0


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("argmax", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("D", [1, 2])
def test_opcheck(requires_grad, argmax, normalize, D):
    logits = torch.randn(3, 4, K, dtype=torch.float64, requires_grad=requires_grad)
    cb = torch.randn((K, 2) if D == 2 else (K,), dtype=torch.float64, requires_grad=requires_grad)
    torch.library.opcheck(codebook_lookup_op, (logits, cb, argmax, normalize))
    grad = torch.randn(3, 4, *cb.shape[1:], dtype=torch.float64)
    torch.library.opcheck(codebook_lookup_backward, (grad, logits.detach(), cb.detach(), argmax, normalize, [True, True]))


def test_k_equals_one():
    logits = torch.randn(4, 5, 1, dtype=torch.float64, requires_grad=True)
    cb = torch.tensor([0.5 - 2j], dtype=torch.complex128, requires_grad=True)
    out = codebook_lookup(logits, cb)
    _close(out, torch.full((4, 5), 0.5 - 2j, dtype=torch.complex128), 1e-15)
    out.real.sum().backward()
    assert torch.count_nonzero(logits.grad) == 0  # softmax over one entry is constant
    _close(cb.grad, torch.tensor([20.0 + 0j], dtype=torch.complex128), 1e-12)


def test_ties_pick_first_index():
    cb = torch.tensor([1.0, 2.0, 3.0, 4.0])
    logits = torch.tensor([[0.0, 5.0, 5.0, 1.0], [7.0, 7.0, 7.0, 7.0], [-1.0, -2.0, -1.0, -3.0]])
    assert codebook_lookup(logits, cb, "argmax").tolist() == [2.0, 1.0, 1.0]
    # equal logits interpolate uniformly
    assert codebook_lookup(logits[1:2], cb).item() == pytest.approx(2.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_and_infinite_logits_are_finite(dtype):
    inf = math.inf
    logits = torch.tensor(
        [
            [1e4, -1e4, 0.0, 1e4],       # huge: two entries share the mass
            [-inf, 2.0, -inf, 2.0],      # -inf entries get nothing
            [inf, 0.0, inf, -inf],       # +inf entries share the mass
            [-inf, -inf, -inf, -inf],    # all -inf: uniform by convention
            [-1e4, -1e4, -1e4, -1e4 + 1],
        ],
        dtype=dtype,
    ).requires_grad_()
    cb = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=dtype).requires_grad_()
    out = codebook_lookup(logits, cb)
    expected = [4.5, 5.0, 2.5, 3.75, (1 + 2 + 4 + 8 * math.e) / (3 + math.e)]
    _close(out.double(), torch.tensor(expected, dtype=torch.float64), 1e-6)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(cb.grad).all()
    # rows with an infinite maximum are constant in the logits
    assert torch.count_nonzero(logits.grad[2:4]) == 0
    ref = reference.codebook_lookup(logits.detach().double(), cb.detach().double())
    _close(out.detach().double(), ref, 1e-6)


def test_float32_weights_accurate_over_the_exp_range():
    # Two entries with logits 0 and x: the output is sigmoid(x). Covers the float32 exp of the
    # CPU kernel from 0 down past its underflow cut-off.
    x = torch.linspace(-100, 0, 20001)
    out = codebook_lookup(torch.stack([torch.zeros_like(x), x], -1), torch.tensor([0.0, 1.0]))
    ref = torch.sigmoid(x.double())
    assert ((out.double() - ref).abs() <= 1e-6 * ref + 1e-37).all()


def test_all_minus_inf_row_argmax_is_first():
    logits = torch.full((2, K), -math.inf)
    cb = torch.arange(K, dtype=torch.float32) + 1
    assert codebook_lookup(logits, cb, "argmax").tolist() == [1.0, 1.0]


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch(mode):
    logits = torch.randn(0, 3, K, requires_grad=True)
    cb = torch.randn(K, dtype=torch.complex64, requires_grad=True)
    out = codebook_lookup(logits, cb, mode)
    assert out.shape == (0, 3) and out.dtype == torch.complex64
    out.abs().sum().backward()
    assert logits.grad is None or logits.grad.shape == logits.shape
    assert torch.count_nonzero(cb.grad) == 0


@pytest.mark.parametrize("mode", MODES)
def test_normalize_at_zero_magnitude(mode):
    cb = torch.tensor([1.0, -1.0, 0.0], dtype=torch.complex128, requires_grad=True)
    logits = torch.tensor([[0.0, 0.0, -math.inf], [-1.0, -2.0, 3.0], [2.0, -1.0, 0.0]], dtype=torch.float64,
                          requires_grad=True)
    out = codebook_lookup(logits, cb, mode, normalize=True)
    # row 0: 1 and -1 cancel (interpolate) or the tie picks 1 (argmax); row 1: mostly 0, a
    # nonzero sum (interpolate) or exactly the 0 entry (argmax); row 2: p0 > p1, positive.
    expected = [1.0, 0.0, 1.0] if mode == "argmax" else [0.0, 1.0, 1.0]
    assert torch.isfinite(torch.view_as_real(out)).all()
    assert out.abs().tolist() == pytest.approx(expected, abs=1e-12)
    assert out[2].item() == pytest.approx(1.0)
    torch.view_as_real(out).sum().backward()
    assert torch.isfinite(torch.view_as_real(cb.grad)).all()
    if logits.grad is not None:
        assert torch.isfinite(logits.grad).all()


def test_non_contiguous_input():
    base = torch.randn(K, 5, 4, dtype=torch.float64)
    logits = base.permute(2, 1, 0)  # (4, 5, K) with K not innermost in memory
    assert not logits.is_contiguous()
    cb = _codebook("complex")
    _close(codebook_lookup(logits, cb), reference.codebook_lookup(logits.contiguous(), cb), 1e-12)
    cb_strided = torch.randn(2 * K, dtype=torch.complex128)[::2]
    _close(codebook_lookup(logits, cb_strided), reference.codebook_lookup(logits.contiguous(), cb_strided), 1e-12)


def test_half_logits_with_float_codebook():
    logits = torch.randn(3, 4, K).to(torch.bfloat16)
    cb = torch.randn(K, dtype=torch.complex64)
    out = codebook_lookup(logits, cb)
    assert out.dtype == torch.complex64
    _close(out, reference.codebook_lookup(logits.float(), cb), 1e-5)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="mode"):
        codebook_lookup(torch.randn(2, 3), torch.randn(3), mode="max")
    with pytest.raises(ValueError, match="K = 4"):
        codebook_lookup(torch.randn(2, 3), torch.randn(4))
    with pytest.raises(TypeError, match="does not match"):
        codebook_lookup(torch.randn(2, 3), torch.randn(3, dtype=torch.complex128))
    with pytest.raises(ValueError, match="1-D"):
        codebook_lookup(torch.randn(2, 3), torch.randn(3, 1))
    with pytest.raises(RuntimeError, match="codebook"):
        codebook_lookup_op(torch.randn(2, 3), torch.randn(3, 3), False, False)


@cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("ldtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(mode, normalize, ldtype):
    real = torch.float64 if ldtype == torch.float64 else torch.float32
    logits = (2 * torch.randn(3, 70, 11, K, dtype=real)).to(ldtype)
    cb = torch.randn(K, dtype=torch.complex128 if real == torch.float64 else torch.complex64)
    weight = torch.randn(3, 70, 11, dtype=cb.dtype)
    results = []
    for device in ("cpu", "cuda"):
        x = logits.to(device).requires_grad_()
        c = cb.to(device).requires_grad_()
        out = codebook_lookup(x, c, mode, normalize)
        (out * weight.to(device)).real.sum().backward()
        results.append([t.cpu() if t is not None else None for t in (out, x.grad, c.grad)])
    tol = 1e-12 if ldtype == torch.float64 else 1e-4
    _close(results[1][0], results[0][0], tol)
    if mode == "interpolate":
        _close(results[1][1].to(real), results[0][1].to(real), 1e-2 if ldtype in (torch.float16, torch.bfloat16) else tol)
    _close(results[1][2], results[0][2], 1e-3 if real == torch.float32 else 1e-10)


# ---------------------------------------------------------------- heads

def test_magbook_head():
    head = MagbookHead(16, n_freq=5, n_sources=2)
    assert head.codebook.tolist() == [0.0, 1.0, 2.0]
    h = torch.randn(3, 7, 16, requires_grad=True)
    mask = head(h)
    assert mask.shape == (3, 2, 5, 7) and mask.dtype == torch.float32
    assert ((mask >= 0) & (mask <= 2)).all()
    mask.sum().backward()
    assert h.grad.abs().sum() > 0 and head.linear.weight.grad.abs().sum() > 0


def test_phasebook_head():
    head = PhasebookHead(16, n_freq=5, n_sources=2)
    assert head.phasebook.shape == (8,)
    torch.testing.assert_close(head.phasebook[2], torch.tensor(1j, dtype=torch.complex64), atol=1e-6, rtol=0)
    h = torch.randn(3, 7, 16, requires_grad=True)
    mask = head(h)
    assert mask.shape == (3, 2, 5, 7) and mask.dtype == torch.complex64
    assert (mask.abs() <= 2 + 1e-5).all()
    torch.view_as_real(mask).sum().backward()
    assert h.grad.abs().sum() > 0
    phase_only = head(h.detach(), mode="argmax")
    mag = phase_only.abs()
    assert torch.isin(torch.round(mag * 1e4) / 1e4, torch.tensor([0.0, 1.0, 2.0])).all()


def test_combook_head():
    head = CombookHead(16, n_freq=5, n_sources=2, n_entries=12)
    cb = head.codebook.detach()
    assert cb.shape == (12,) and cb.dtype == torch.complex64
    # distinct entries (no duplicate +-pi)
    gaps = (cb[:, None] - cb[None, :]).abs() + torch.eye(12)
    assert gaps.min() > 0.1
    h = torch.randn(2, 4, 16, requires_grad=True)
    mask = head(h)
    assert mask.shape == (2, 2, 5, 4) and mask.dtype == torch.complex64
    torch.view_as_real(mask).pow(2).sum().backward()
    assert head.codebook_real.grad.abs().sum() > 0 and h.grad.abs().sum() > 0


def test_head_logits_layout_needs_no_copy():
    head = CombookHead(8, n_freq=3, n_sources=2, n_entries=4)
    h = torch.randn(2, 5, 8)
    logits = head.logits(h)
    assert logits.shape == (2, 5, 3, 2, 4) and logits.is_contiguous()
    expected = codebook_lookup(logits, head.codebook).permute(0, 3, 2, 1)
    torch.testing.assert_close(head(h), expected)
