"""chimera.ops.codebook_lookup against its float64 reference, gradients, op checks, edge cases,
and the magbook / phasebook / combook heads."""
import math

import pytest
import torch

from chimera.ops import codebook_lookup, reference
from chimera.ops.codebook import codebook_lookup_backward, codebook_lookup_op
from chimera.models.codebook_heads import CombookHead, MagbookHead, PhasebookHead

from testutil import EXT_DISABLED, cuda, run_isolated

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


# ---------------------------------------------------------------- NaN, thread counts, edge inputs

def _nan(negative, dtype):
    """A quiet NaN with or without its sign bit (x86 produces the negative one for inf - inf)."""
    bits = torch.tensor([0xFFC00000 if negative else 0x7FC00000], dtype=torch.int64).to(torch.int32)
    return bits.view(torch.float32).to(dtype)


def _nan_rows(dtype, negative):
    nan = _nan(negative, dtype).item()
    inf = math.inf
    return torch.tensor([[0.0, nan, 1.0], [nan, 0.0, 1.0], [0.0, 1.0, nan], [inf, nan, 0.0], [-inf, -inf, nan],
                         [0.0, 1.0, 2.0]], dtype=dtype)


def _op_and_twin(logits, book, grad, argmax, normalize):
    """The kernels (forward, backward) and their reference twin in float64."""
    out = codebook_lookup_op(logits, book, argmax, normalize)
    grads = codebook_lookup_backward(grad, logits, book, argmax, normalize, [True, True])
    ref = reference.codebook_lookup_real(logits.double(), book.double(), argmax, normalize)
    ref_grads = reference.codebook_lookup_backward(grad.double(), logits.double(), book.double(), argmax, normalize,
                                                   [True, True])
    return (out, *grads), (ref, *ref_grads)


def _assert_matches(got, want, tol):
    for g, w in zip(got, want):
        assert g.shape == w.shape
        scale = w[torch.isfinite(w)].abs().max().item() if torch.isfinite(w).any() else 1.0
        torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol * max(scale, 1.0), equal_nan=True)


@pytest.mark.parametrize("negative", [False, True], ids=["+nan", "-nan"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("argmax", [False, True], ids=["interpolate", "argmax"])
def test_nan_logit_propagates(cpu_path, negative, dtype, D, normalize, argmax):
    # Logits [0, NaN, 1] give NaN like the reference, whatever the NaN's sign and place, in
    # every mode: output, logits gradient (interpolate) and codebook gradient.
    logits = _nan_rows(dtype, negative)
    book = torch.tensor([0.0, 1.0, 2.0], dtype=dtype) if D == 1 else torch.randn(3, 2, dtype=dtype)
    grad = torch.randn(logits.shape[0], *book.shape[1:], dtype=dtype)
    got, want = _op_and_twin(logits, book, grad, argmax, normalize)
    out, gx, gc = got
    rows = out.reshape(6, -1)
    assert torch.isnan(rows[:5]).all() and torch.isfinite(rows[5]).all()
    assert torch.isnan(gc).all()  # every codebook entry: the NaN rows weigh on all of them
    if not argmax:
        assert torch.isnan(gx[:5]).all() and torch.isfinite(gx[5]).all()
    _assert_matches(got, want, 1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_codebook_entry_propagates(cpu_path, dtype):
    book = torch.tensor([[1.0, 0.0], [math.nan, 0.0], [0.0, 1.0]], dtype=dtype)
    logits = torch.randn(5, 3, dtype=dtype)
    grad = torch.randn(5, 2, dtype=dtype)
    for normalize in (False, True):
        got, want = _op_and_twin(logits, book, grad, False, normalize)
        # the real parts are NaN, and through |y| the imaginary parts too when normalised
        assert torch.isnan(got[0][:, 0]).all() and torch.isnan(got[0][:, 1]).all() == normalize
        assert torch.isnan(got[1]).all()
        _assert_matches(got, want, 1e-5 if dtype == torch.float32 else 1e-12)


def _many_rows(dtype, rows=5 * 1013, k=K):
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(rows, k, generator=g, dtype=dtype)
    book = torch.randn(k, 2, generator=g, dtype=dtype)
    grad = torch.randn(rows, 2, generator=g, dtype=dtype)
    return logits, book, grad


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("argmax", [False, True], ids=["interpolate", "argmax"])
def test_backward_over_many_rows_matches_float64_reference(cpu_path, normalize, argmax):
    # Thousands of rows on 2 threads: several chunks of partial sums, flushes within a chunk,
    # a last partial block of lanes (5065 rows).
    logits, book, grad = _many_rows(torch.float32)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got, want = _op_and_twin(logits, book, grad, argmax, normalize)
    finally:
        torch.set_num_threads(n)
    _assert_matches(got, want, 2e-5)


@pytest.mark.skipif(EXT_DISABLED, reason="the kernels' reduction order (the reference's is ATen's)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("argmax", [False, True], ids=["interpolate", "argmax"])
def test_results_do_not_depend_on_the_thread_count(cpu_path, dtype, normalize, argmax):
    logits, book, grad = _many_rows(dtype, rows=20011)
    n = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = codebook_lookup_op(logits, book, argmax, normalize)
            results.append((out, *codebook_lookup_backward(grad, logits, book, argmax, normalize, [True, True])))
    finally:
        torch.set_num_threads(n)
    for one, two in zip(*results):
        assert torch.equal(one, two)


EDGE_CASES = ("empty", "k1", "c1", "+nan", "-nan", "inf", "noncontiguous", "expanded", "float16", "bfloat16")


def _edge_inputs(case, dtype, D):
    """(logits, codebook as (K,) or (K, 2), grad) for one edge case."""
    g = torch.Generator().manual_seed(5)
    book = torch.randn(K, *(() if D == 1 else (2,)), generator=g, dtype=torch.float64)
    shape = {"empty": (0, 3), "c1": (2, 5, 7, 1)}.get(case, (4, 9))
    logits = 2 * torch.randn(*shape, K, generator=g, dtype=torch.float64)
    if case == "k1":
        logits, book = logits[..., :1], book[:1]
    elif case in ("+nan", "-nan"):
        logits[0, 0, 2] = logits[1, 4, 0] = logits[2, 8, K - 1] = _nan(case == "-nan", torch.float64).item()
    elif case == "inf":
        logits[0, 0, 1] = logits[0, 0, 3] = math.inf
        logits[1, 2, :] = -math.inf
        logits[2, 3, ::2] = -math.inf
        logits[3, 1, 0] = math.inf
        logits[3, 1, 1] = -math.inf
    elif case == "noncontiguous":
        logits = logits.transpose(0, 1).contiguous().transpose(0, 1)  # (4, 9, K), rows not in memory order
        book = torch.randn(2 * K, *book.shape[1:], generator=g, dtype=torch.float64)[::2]
    elif case == "expanded":
        logits = logits[:1].expand(4, 9, K)  # stride 0
        book = book[:1].expand(K, *book.shape[1:])
    grad = torch.randn(*logits.shape[:-1], *book.shape[1:], generator=g, dtype=torch.float64)
    if case == "expanded":
        grad = grad[:, :1].expand_as(grad)
    if case in ("float16", "bfloat16"):
        logits = logits.to(getattr(torch, case))
        return logits, book.to(torch.float32), grad.to(torch.float32)
    return logits.to(dtype), book.to(dtype), grad.to(dtype)


def edge_case(case):
    """Forward and backward of one edge case, every CPU path, mode, normalisation, codebook
    width and dtype, against the float64 twin (run in a subprocess by the test below)."""
    from chimera import ops
    paths = ops.supported_cpu_capabilities() or (None,)
    for path in paths:
        for dtype in (torch.float32, torch.float64):
            for D in (1, 2):
                for argmax in (False, True):
                    for normalize in (False, True):
                        logits, book, grad = _edge_inputs(case, dtype, D)
                        if path is None:
                            got, want = _op_and_twin(logits, book, grad, argmax, normalize)
                        else:
                            with ops.use_cpu_capability(path):
                                got, want = _op_and_twin(logits, book, grad, argmax, normalize)
                        half = logits.dtype in (torch.float16, torch.bfloat16)
                        assert got[1].dtype == logits.dtype and got[0].dtype == got[2].dtype == book.dtype
                        tol = 1e-2 if half else 1e-5 if book.dtype == torch.float32 else 1e-12
                        _assert_matches(got, want, tol)
        # The public function (autograd, complex codebooks) runs the same inputs.
        logits, book, grad = _edge_inputs(case, torch.float32, 2)
        x = logits.detach().requires_grad_()
        c = torch.view_as_complex(book.contiguous()).requires_grad_()
        out = codebook_lookup(x, c)
        out.backward(torch.view_as_complex(grad.contiguous()))
        assert out.shape == logits.shape[:-1] and x.grad.shape == logits.shape and c.grad.shape == c.shape


@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_inputs(case):
    run_isolated("test_codebook", "edge_case", case)


@cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("ldtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(mode, normalize, ldtype):
    # Against the float64 reference, not the CPU kernel: both kernels share csrc/common.
    real = torch.float64 if ldtype == torch.float64 else torch.float32
    logits = (2 * torch.randn(3, 70, 11, K, dtype=real)).to(ldtype)
    cb = torch.randn(K, dtype=torch.complex128 if real == torch.float64 else torch.complex64)
    weight = torch.randn(3, 70, 11, dtype=cb.dtype)
    x = logits.cuda().requires_grad_()
    c = cb.cuda().requires_grad_()
    out = codebook_lookup(x, c, mode, normalize)
    (out * weight.cuda()).real.sum().backward()
    argmax = mode == "argmax"
    book = torch.view_as_real(cb)
    grad = torch.view_as_real(weight.conj().resolve_conj()).contiguous()
    want = (torch.view_as_complex(reference.codebook_lookup_real(logits.double(), book.double(), argmax, normalize)),
            *reference.codebook_lookup_backward(grad.double(), logits.double(), book.double(), argmax, normalize,
                                                [True, True]))
    tol = 1e-12 if ldtype == torch.float64 else 1e-4
    _close_nan = lambda a, b, t: torch.testing.assert_close(a, b, rtol=t, atol=t, equal_nan=True)  # noqa: E731
    _close_nan(out.detach().cpu().to(want[0].dtype), want[0], tol)
    if mode == "interpolate":
        _close_nan(x.grad.cpu().double(), want[1], 1e-2 if ldtype in (torch.float16, torch.bfloat16) else tol)
    _close_nan(torch.view_as_real(c.grad.cpu()).double(), want[2], 1e-3 if real == torch.float32 else 1e-10)


@cuda
@pytest.mark.parametrize("negative", [False, True], ids=["+nan", "-nan"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("argmax", [False, True], ids=["interpolate", "argmax"])
def test_cuda_nan_logit_propagates(negative, normalize, argmax):
    logits = _nan_rows(torch.float32, negative).cuda()
    book = torch.randn(3, 2, device="cuda")
    grad = torch.randn(logits.shape[0], 2, device="cuda")
    got, want = _op_and_twin(logits, book, grad, argmax, normalize)
    assert torch.isnan(got[0][:5]).all() and torch.isfinite(got[0][5]).all()
    _assert_matches(got, want, 1e-5)


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
