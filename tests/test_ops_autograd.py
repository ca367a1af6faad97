"""Gradients the fused kernels do not compute themselves: to the weights or a dense target of
affinity_stats, double backward of affinity_stats and codebook_lookup, a trained overlap-add
window under torch.compile. They go by autograd through the reference twins (_registry.reference_vjp)."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.library import opcheck

import chimera.ops as ops
from chimera.ops import reference

F64 = torch.float64


def _affinity_inputs(target, seed=0):
    gen = torch.Generator().manual_seed(seed)
    V = torch.randn(2, 7, 3, generator=gen, dtype=F64)
    w = torch.rand(2, 7, generator=gen, dtype=F64) + 0.5
    Y = torch.randint(0, 3, (2, 7), generator=gen) if target == "index" else torch.rand(2, 7, 3, generator=gen, dtype=F64)
    return V, Y, w


def _stats_sum(stats, seed=1):
    """A scalar that depends on every statistic, with random coefficients."""
    gen = torch.Generator().manual_seed(seed)
    return sum((s * torch.randn(s.shape, generator=gen, dtype=F64)).sum() for s in stats)


@pytest.mark.parametrize("target", ["index", "dense"])
def test_affinity_weight_gradient_matches_reference(target):
    """Was silently None: the backward returned no gradient for the weights."""
    V, Y, w = _affinity_inputs(target)
    w_op, w_ref = w.clone().requires_grad_(), w.clone().requires_grad_()
    _stats_sum(ops.affinity_stats(V, Y, w_op, 3)).backward()
    _stats_sum(reference.affinity_stats(V, Y, w_ref, 3)).backward()
    assert w_op.grad is not None
    torch.testing.assert_close(w_op.grad, w_ref.grad)
    assert gradcheck(lambda w_: ops.affinity_stats(V, Y, w_, 3), (w.clone().requires_grad_(),))


def test_affinity_dense_target_gradient():
    V, Y, w = _affinity_inputs("dense")
    for weight in (None, w):
        assert gradcheck(lambda y: ops.affinity_stats(V, y, weight, -1), (Y.clone().requires_grad_(),))
    assert gradcheck(lambda v, y, w_: ops.affinity_stats(v, y, w_, -1),
                     (V.requires_grad_(), Y.requires_grad_(), w.requires_grad_()))


@pytest.mark.parametrize("target", ["index", "dense"])
@pytest.mark.parametrize("weighted", [False, True])
def test_affinity_double_backward(target, weighted):
    """Was silently wrong (no autograd formula for affinity_stats_backward: zero Hessian)."""
    V, Y, w = _affinity_inputs(target)
    w = w.requires_grad_() if weighted else None
    assert gradgradcheck(lambda v, *rest: ops.affinity_stats(v, Y, *rest, 3) if rest else ops.affinity_stats(v, Y, None, 3),
                         (V.requires_grad_(), *([w] if weighted else [])))


def test_affinity_gradient_penalty_matches_reference():
    V, Y, w = _affinity_inputs("index")
    grads = []
    for fn in (ops.affinity_stats, reference.affinity_stats):
        v = V.clone().requires_grad_()
        (g,) = torch.autograd.grad(_stats_sum(fn(v, Y, w, 3)), v, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), v)
        grads.append(gg)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("mode", ["interpolate", "argmax"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_codebook_double_backward(mode, normalize, kind):
    """Was silently wrong (zeros): codebook_lookup_backward had no autograd formula."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, generator=gen, dtype=F64)
    codebook = torch.randn(4, generator=gen, dtype=torch.complex128 if kind == "complex" else F64)
    fn = lambda x, c: ops.codebook_lookup(x, c, mode, normalize)  # noqa: E731
    for x_grad, c_grad in ((True, True), (True, False), (False, True)):
        args = (logits.clone().requires_grad_(x_grad), codebook.clone().requires_grad_(c_grad))
        assert gradgradcheck(fn, args)


def test_codebook_second_derivative_is_not_zero():
    codebook = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    rows = []
    for fn in (ops.codebook_lookup, reference.codebook_lookup):
        logits = torch.tensor([[0.3, -0.2, 1.0]], dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(fn(logits, codebook).sum(), logits, create_graph=True)
        rows.append(torch.autograd.grad(g[0, 0], logits)[0])
    assert rows[0].abs().max() > 0
    torch.testing.assert_close(rows[0], rows[1])


def test_opcheck_with_trained_weights_and_window():
    """torch.compile traces these backward formulas through the twins: their value checks
    (label range, NOLA) must not guard on data (was: 'Could not guard on data-dependent expression')."""
    V, Y, w = _affinity_inputs("index")
    opcheck(torch.ops.chimera.affinity_stats.default, (V.requires_grad_(), Y, w.requires_grad_(), 3))
    g_vv, g_vy = torch.randn(2, 3, 3, dtype=F64, requires_grad=True), torch.randn(2, 3, 3, dtype=F64)
    opcheck(torch.ops.chimera.affinity_stats_backward.default, (g_vv, g_vy, V, Y, w))
    frames = torch.randn(2, 5, 8, dtype=F64)
    window = torch.hann_window(8, dtype=F64, requires_grad=True)
    opcheck(torch.ops.chimera.overlap_add.default, (frames, window, 2, True, None))
    opcheck(torch.ops.chimera.overlap_add_backward.default, (torch.randn(2, 10, dtype=F64), window, 2, True, 5))
    opcheck(torch.ops.chimera.codebook_lookup_backward.default,
            (torch.randn(4, dtype=F64, requires_grad=True), torch.randn(4, 3, dtype=F64, requires_grad=True),
             torch.randn(3, dtype=F64), False, True, [True, True]))


def test_value_checks_still_run_eagerly():
    V, Y, w = _affinity_inputs("index")
    with pytest.raises(RuntimeError, match="out of range"):
        reference.affinity_stats(V, Y + 5, w, 3)
    with pytest.raises(RuntimeError, match="NOLA"):
        reference.overlap_add(torch.randn(1, 3, 8), torch.hann_window(8, periodic=False), 2, False, None)


def test_trained_window_gradient_penalty_matches_reference():
    """The window gradient was computed on detached inputs: under create_graph it had no
    grad_fn, so a penalty on it raised or (summed with other terms) was silently dropped."""
    frames = torch.randn(1, 4, 8, dtype=F64)
    window = torch.hann_window(8, dtype=F64) + 0.1
    results = []
    for fn in (ops.overlap_add, reference.overlap_add):
        f, w = frames.clone().requires_grad_(), window.clone().requires_grad_()
        g_f, g_w = torch.autograd.grad(fn(f, w, 2, True, None).square().sum(), (f, w), create_graph=True)
        results.append(torch.autograd.grad(g_f.square().sum() + g_w.square().sum(), (f, w)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
    assert gradgradcheck(lambda f, w: ops.overlap_add_backward(f, w, 2, True, 4),
                         (torch.randn(1, 10, dtype=F64, requires_grad=True), window.clone().requires_grad_()))
