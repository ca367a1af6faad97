"""Edge inputs of chimera::affinity_stats (+ backward) and the deep-clustering losses, each a
function that raises on a wrong result. tests/test_affinity_edge.py runs them in a child
process (`python affinity_edge_cases.py NAME...`), so a kernel that kills the process
(SIGFPE, SIGSEGV) fails its case instead of the test run."""
import sys
import traceback

import torch

from affinity_util import classes, f64, losses_on_reference, make
from chimera import losses, ops
from chimera.ops import reference

LOSSES = (losses.deep_clustering_loss, losses.whitened_kmeans_loss, losses.deep_lda_loss)


def same(got, want, rtol, floor=1e-12):
    """Same shape, NaN / ±inf at the same places, finite values within rtol of the largest
    (or of `floor`, for values that are zero up to rounding)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.equal(classes(got), classes(want)), "non-finite values differ"
    fin = torch.isfinite(want)
    if fin.any():
        scale = want.double()[fin].abs().max().clamp_min(floor).item()
        torch.testing.assert_close(got.double()[fin], want.double()[fin], rtol=0, atol=rtol * scale)


def op_case(V, Y, w, C, rtol=1e-5, loss_rtol=1e-4):
    """The op and its backward (with and without g_vsum) against the reference, then every
    loss, forward and backward, against the same loss on the reference (autograd)."""
    got = ops.affinity_stats(V, Y, w, C)
    want = reference.affinity_stats(f64(V), f64(Y), f64(w), C)
    for g, r in zip(got, want):
        assert g.dtype == torch.float64
        same(g, r, rtol)
    B, _, D = V.shape
    gen = torch.Generator().manual_seed(7)
    g_vv, g_vy, g_vs = (torch.randn(B, D, D, generator=gen, dtype=torch.float64),
                        torch.randn(B, D, C, generator=gen, dtype=torch.float64),
                        torch.randn(B, D, generator=gen, dtype=torch.float64))
    for g_vsum in ((), (g_vs,)):
        dv = ops.affinity_stats_backward(g_vv, g_vy, V, Y, w, *g_vsum)
        assert dv.dtype == V.dtype and dv.shape == V.shape
        same(dv, reference.affinity_stats_backward(g_vv, g_vy, f64(V), f64(Y), f64(w), *g_vsum).to(V.dtype), rtol)
    for fn in LOSSES:
        v = V.detach().requires_grad_(True)
        loss = fn(v, Y, w, reduction="none", num_classes=C if Y.dtype == torch.long else None)
        (grad,) = torch.autograd.grad(loss.sum(), v) if v.numel() else (torch.zeros_like(v),)
        v64 = f64(V).detach().requires_grad_(True)
        with losses_on_reference():
            want_loss = fn(v64, f64(Y), f64(w), reduction="none", num_classes=C if Y.dtype == torch.long else None)
            (want_grad,) = torch.autograd.grad(want_loss.sum(), v64) if v64.numel() else (torch.zeros_like(v64),)
        same(loss, want_loss, loss_rtol)
        same(grad, want_grad.to(V.dtype), loss_rtol)
    return got


def case_empty_batch():  # B = 0: was SIGFPE (division by the batch size)
    for target in ("index", "soft"):
        V, Y, w = make(B=0, N=50, target=target)
        got = op_case(V, Y, w, 3)
        assert [tuple(t.shape) for t in got] == [(0, 5, 5), (0, 5, 3), (0, 3, 3), (0,), (0, 5)]


def case_no_bins():  # N = 0: zero statistics, zero losses
    for target in ("index", "soft"):
        V, Y, w = make(N=0, target=target)
        got = op_case(V, Y, w, 3)
        assert all(not t.any() for t in got)
        for fn in LOSSES:
            assert not fn(V, Y, w, reduction="none", num_classes=3).any()


def case_no_features():  # D = 0: the backward was SIGFPE (division by D)
    for target in ("index", "soft"):
        op_case(*make(D=0, target=target), 3)


def case_one_class():
    V, _, w = make()
    op_case(V, torch.zeros(V.shape[:2], dtype=torch.long), w, 1)
    op_case(V, torch.ones(*V.shape[:2], 1, dtype=V.dtype), w, 1)


def case_absent_class():
    V, Y, w = make()
    Y[0] = Y[0] % 2  # item 0 has no bin of class 2
    op_case(V, Y, w, 3)


def _poisoned(value, target, where="embedding"):
    V, Y, w = make(N=200, target=target, dtype=torch.float32)
    if where == "embedding":
        V[0, 17, 2] = value
    elif where == "weight":
        w[0, 17] = value
    else:
        Y[0, 17, 1] = value
    return V, Y, w


def _assert_item0_poisoned(V, Y, w):
    """Item 0 holds the non-finite value: its losses and every row of its gradient are not
    finite; item 1 is untouched."""
    for fn in LOSSES:
        v = V.detach().requires_grad_(True)
        loss = fn(v, Y, w, reduction="none", num_classes=3 if Y.dtype == torch.long else None)
        (grad,) = torch.autograd.grad(loss.sum(), v)
        assert not torch.isfinite(loss[0]) and torch.isfinite(loss[1]), (fn.__name__, loss)
        assert (~torch.isfinite(grad[0])).any(dim=-1).all(), fn.__name__
        assert torch.isfinite(grad[1]).all(), fn.__name__


def case_nan_positive():
    for target in ("index", "soft"):
        nan = torch.tensor(float("nan"))
        assert not torch.signbit(nan)
        V, Y, w = _poisoned(nan, target)
        op_case(V, Y, w, 3)
        _assert_item0_poisoned(V, Y, w)


def case_nan_negative():  # the usual NaN on x86 (inf - inf, 0 * inf): sign bit set
    for target in ("index", "soft"):
        nan = -torch.tensor(float("nan"))
        assert torch.signbit(nan)
        for where in ("embedding", "weight") + (("target",) if target == "soft" else ()):
            V, Y, w = _poisoned(nan, target, where)
            op_case(V, Y, w, 3)
            _assert_item0_poisoned(V, Y, w)


def case_infinities():
    for target in ("index", "soft"):
        for value in (float("inf"), float("-inf")):
            V, Y, w = _poisoned(value, target)
            op_case(V, Y, w, 3)
            _assert_item0_poisoned(V, Y, w)
            V, Y, w = _poisoned(value, target, "weight")
            op_case(V, Y, w, 3)


def case_non_contiguous():
    for target in ("index", "soft"):
        V, Y, w = make(N=120, D=8, target=target)
        V = V.transpose(1, 2).contiguous().transpose(1, 2)[:, ::3, 1:6]
        Y, w = Y[:, ::3], w.t().contiguous().t()[:, ::3]
        assert not V.is_contiguous() and not w.is_contiguous()
        op_case(V, Y, w, 3)


def case_expanded():  # stride 0: the batch of V and Y, the bins of w (bins of V: test_affinity.py)
    for target in ("index", "soft"):
        V, Y, w = make(B=1, N=40, target=target)
        V, Y = V.expand(2, 40, 5), Y.expand(2, *Y.shape[1:])
        w = w[:, :1].expand(2, 40)
        assert V.stride(0) == 0 and w.stride(1) == 0
        op_case(V, Y, w, 3)


def case_half():
    for dtype in (torch.float16, torch.bfloat16):
        for target in ("index", "soft"):
            V, Y, w = make(N=300, target=target, dtype=dtype)
            op_case(V, Y, w, 3, rtol=2e-2, loss_rtol=2e-2)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def main(names):
    torch.set_num_threads(2)
    for name in names:
        try:
            CASES[name]()
            print(f"CASE {name} OK", flush=True)
        except Exception:
            last = traceback.format_exc().strip().splitlines()
            print(f"CASE {name} FAIL {' | '.join(last[-4:])}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
