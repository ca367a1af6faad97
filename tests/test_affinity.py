"""chimera::affinity_stats and its backward: the fused op against chimera.ops.reference."""
import pytest
import torch
from torch.library import opcheck

from affinity_util import TARGETS, f64, make
from chimera import ops
from chimera.ops import reference
from testutil import EXT_DISABLED

C = 3


def rel_err(got, want):
    if want.numel() == 0:
        return 0.0
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1.0)).item()


def grads(B, D, C, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, D, D, generator=g, dtype=torch.float64), torch.randn(B, D, C, generator=g, dtype=torch.float64),
            torch.randn(B, D, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("weighted", [True, False])
def test_stats_match_reference(cpu_path, target, weighted):
    V, Y, w = make(target=target, weighted=weighted)
    got = ops.affinity_stats(V, Y, w, C)
    want = reference.affinity_stats(V, Y, w, C)
    assert len(got) == 5
    for g, r in zip(got, want):
        assert g.dtype == torch.float64 and g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[0], got[0].transpose(1, 2)), "VᵀWV must be exactly symmetric"


# N: more than two forward tasks of 16384 bins with a ragged end, and backward blocks of 64
# rows ending in a partial group of 4 (N % 64 = 3). D: one vector, a partial one, several
# column blocks of the backward (1 to 6 depending on the dtype), up to D = 70.
PRODUCTION_N = 2 * 16384 + 7267


@pytest.mark.skipif(EXT_DISABLED, reason="compares the kernels with the reference")
@pytest.mark.parametrize("D", [1, 3, 20, 40, 70])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_production_paths_meet_the_reference(cpu_path, two_threads, D, target, dtype):
    V, Y, w = make(B=2, N=PRODUCTION_N, D=D, target=target, dtype=dtype, seed=D)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    got = ops.affinity_stats(V, Y, w, C)
    want = reference.affinity_stats(f64(V), f64(Y), f64(w), C)
    for name, g, r in zip(("vv", "vy", "yy", "wsum", "vsum"), got, want):
        assert rel_err(g, r) < tol, (name, rel_err(g, r))
    g_vv, g_vy, g_vs = grads(2, D, C)
    for g_vsum in (None, g_vs):
        dv = ops.affinity_stats_backward(g_vv, g_vy, V, Y, w, g_vsum)
        assert dv.dtype == dtype and dv.shape == V.shape
        want_dv = reference.affinity_stats_backward(g_vv, g_vy, f64(V), f64(Y), f64(w), g_vsum)
        assert rel_err(dv, want_dv) < tol, rel_err(dv, want_dv)


@pytest.mark.parametrize("target", ["index", "soft"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_results_do_not_depend_on_the_thread_count(cpu_path, target, dtype):
    """Bit for bit, forward and backward: where the bins are cut into tiles and tasks, and the
    order their sums are added in (visible in float64), depend on the shape alone."""
    V, Y, w = make(B=2, N=PRODUCTION_N, D=20, target=target, dtype=dtype, seed=5)
    g_vv, g_vy, g_vs = grads(2, 20, C)

    def run(threads, *backward_args):
        torch.set_num_threads(threads)
        return (*ops.affinity_stats(V, Y, w, C), ops.affinity_stats_backward(g_vv, g_vy, V, Y, w, *backward_args))

    n = torch.get_num_threads()
    try:
        for backward_args in ((), (g_vs,)):
            one, two = run(1, *backward_args), run(2, *backward_args)
            differ = [name for name, a, b in zip(("vv", "vy", "yy", "wsum", "vsum", "dV"), one, two)
                      if not torch.equal(a, b)]
            assert not differ, (differ, "with g_vsum" if backward_args else "")
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("weighted", [True, False])
def test_gradcheck_op(cpu_path, target, weighted):
    V, Y, w = make(B=2, N=23, D=3, target=target, weighted=weighted)
    V.requires_grad_(True)
    # every statistic that depends on V: VᵀWV, VᵀWY, Vᵀw
    assert torch.autograd.gradcheck(lambda v: [ops.affinity_stats(v, Y, w, C)[i] for i in (0, 1, 4)], (V,))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(target, requires_grad):
    for weighted in (True, False):
        V, Y, w = make(N=40, target=target, weighted=weighted, dtype=torch.float32)
        V.requires_grad_(requires_grad)
        opcheck(torch.ops.chimera.affinity_stats.default, (V, Y, w, C))
        g_vv, g_vy, g_vs = grads(2, 5, C)
        opcheck(torch.ops.chimera.affinity_stats_backward.default, (g_vv, g_vy, V.detach(), Y, w))
        opcheck(torch.ops.chimera.affinity_stats_backward.default, (g_vv, g_vy, V.detach(), Y, w, g_vs))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("target", ["index", "soft"])
def test_half_inputs_are_computed_in_float32(cpu_path, dtype, target):
    """One dtype policy (chimera.ops.affinity), kernel and reference alike: half inputs are
    accepted, computed in float32, float64 statistics, the gradient in the input dtype."""
    V, Y, w = make(N=300, D=6, target=target, dtype=dtype)
    got = ops.affinity_stats(V, Y, w, C)
    want = reference.affinity_stats(f64(V), f64(Y), f64(w), C)  # the same (rounded) values in float64
    for g, r in zip(got, want):
        assert g.dtype == torch.float64
        assert rel_err(g, r) < 1e-5
    g_vv, g_vy, g_vs = grads(2, 6, C)
    dv = ops.affinity_stats_backward(g_vv, g_vy, V, Y, w, g_vs)
    assert dv.dtype == dtype
    want_dv = reference.affinity_stats_backward(g_vv, g_vy, f64(V), f64(Y), f64(w), g_vs)
    assert rel_err(dv, want_dv) < (2e-3 if dtype == torch.float16 else 1.6e-2)  # the output's rounding


@pytest.mark.parametrize("fn", [ops.affinity_stats, reference.affinity_stats], ids=["op", "reference"])
def test_dtype_policy_rejects_what_it_does_not_cover(fn):
    V, Y, w = make(target="soft", dtype=torch.float32)
    with pytest.raises(RuntimeError, match="dense target dtype"):
        fn(V, Y.double(), w, C)
    with pytest.raises(RuntimeError, match="weight dtype"):
        fn(V, Y, w.half(), C)
    with pytest.raises(RuntimeError, match="embedding must be float32, float64, float16 or bfloat16"):
        fn(V.int(), Y.int(), w, C)


def test_non_contiguous_and_expanded_inputs(cpu_path):
    V, Y, w = make(N=64, D=6, target="onehot")
    Vn = V.transpose(1, 2).contiguous().transpose(1, 2)[:, ::2]  # strided view
    Yn, wn = Y[:, ::2], w[:, ::2]
    Ve = V[:, :1].expand(2, 32, 6)                               # stride 0 along the bins
    we = w[:1].expand(2, 64)[:, ::2]
    assert not Vn.is_contiguous() and not wn.is_contiguous() and Ve.stride(1) == 0
    g_vv, g_vy, g_vs = grads(2, 6, C)
    for v, y, ww in ((Vn, Yn, wn), (Ve, Yn, we)):
        for g, r in zip(ops.affinity_stats(v, y, ww, C), reference.affinity_stats(v, y, ww, C)):
            torch.testing.assert_close(g, r)
        torch.testing.assert_close(ops.affinity_stats_backward(g_vv, g_vy, v, y, ww, g_vs),
                                   reference.affinity_stats_backward(g_vv, g_vy, v, y, ww, g_vs))


def test_bad_inputs_are_rejected():
    V, Y, w = make(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="out of range"):
        ops.affinity_stats(V, torch.full_like(Y, C), w, C)
    with pytest.raises(RuntimeError, match="out of range"):
        ops.affinity_stats_backward(*grads(2, 5, C)[:2], V, torch.full_like(Y, -1), w)
    with pytest.raises(RuntimeError, match="weight must be"):
        ops.affinity_stats(V, Y, w[:, :5], C)
    with pytest.raises(RuntimeError, match="num_classes must be positive"):
        ops.affinity_stats(V, Y, w, 0)
    with pytest.raises(RuntimeError, match="grad_vsum must be"):
        ops.affinity_stats_backward(*grads(2, 5, C)[:2], V, Y, w, torch.zeros(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("target", TARGETS)
def test_op_compiles_fullgraph(target):
    """The op and its backward under torch.compile(fullgraph=True), against eager; an index
    target's class count traced from the data (a SymInt)."""
    V, Y, w = make(target=target, dtype=torch.float32)

    def stats(v, y, ww):
        c = int(y.max()) + 1 if y.dtype == torch.long else y.shape[-1]
        vv, vy, yy, ws, vs = ops.affinity_stats(v, y, ww, c)
        return vv.square().sum() + vy.sin().sum() + vs.cos().sum() + yy.sum() + ws.sum()

    def backward(gvv, gvy, v, y, ww, gvs):
        return ops.affinity_stats_backward(gvv, gvy, v, y, ww, gvs)

    V.requires_grad_(True)
    got = torch.compile(stats, backend="aot_eager", fullgraph=True)(V, Y, w)
    (g_got,) = torch.autograd.grad(got, V)
    want = stats(V, Y, w)
    (g_want,) = torch.autograd.grad(want, V)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)
    args = (*grads(2, 5, C)[:2], V.detach(), Y, w, grads(2, 5, C)[2])
    torch.testing.assert_close(torch.compile(backward, backend="aot_eager", fullgraph=True)(*args), backward(*args))


def test_meta_tensors_give_shapes():
    V = torch.empty(2, 10, 4, device="meta")
    Y = torch.empty(2, 10, dtype=torch.long, device="meta")
    shapes = [tuple(t.shape) for t in ops.affinity_stats(V, Y, None, 3)]
    assert shapes == [(2, 4, 4), (2, 4, 3), (2, 3, 3), (2,), (2, 4)]
