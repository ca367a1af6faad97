"""chimera::affinity_stats and its backward on CUDA, against float64 references.

Skipped without a GPU; run with `make test-cuda` (pytest -m cuda) on a GPU machine.
The references are evaluated in float64 on the CPU from the very same (already
rounded) inputs, so the tolerances measure only the kernel's accumulation error.
"""
import pytest
import torch

from affinity_util import losses_on_reference
from testutil import EXT_DISABLED
from chimera import losses
from chimera.ops import affinity_stats, affinity_stats_backward, backend, reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEV = "cuda"
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Forward: statistics are float64 in every case; float32/half/bf16 inputs are
# accumulated in float32 per 64-bin tile, then in float64.
FWD_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
# Backward: dV is returned in the input dtype, so its rounding dominates.
BWD_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make_inputs(B, N, D, C, form, weighted, dtype, device=DEV):
    v = torch.randn(B, N, D, dtype=torch.float64).to(dtype)
    if form == "index":
        t = torch.randint(0, C, (B, N))
    elif form == "onehot":
        t = torch.nn.functional.one_hot(torch.randint(0, C, (B, N)), C).to(dtype)
    else:  # soft
        t = torch.softmax(torch.randn(B, N, C, dtype=torch.float64), -1).to(dtype)
    w = torch.rand(B, N, dtype=torch.float64).to(dtype) if weighted else None
    move = lambda x: None if x is None else x.to(device)  # noqa: E731
    return move(v), move(t), move(w)


def f64_cpu(x):
    if x is None:
        return None
    return x.cpu() if x.dtype == torch.long else x.cpu().to(torch.float64)


def rel_err(got, want):
    scale = want.abs().max().clamp_min(1e-30)
    return ((got.cpu().to(torch.float64) - want).abs().max() / scale).item()


def test_cuda_kernel_is_registered():
    if EXT_DISABLED:
        pytest.skip("extension disabled")
    # backend(device) lists every op (codebook and overlap-add too): compare these two only.
    got = backend("cuda")
    assert {op: got[op] for op in ("affinity_stats", "affinity_stats_backward")} == {
        "affinity_stats": "cuda", "affinity_stats_backward": "cuda"}


# N: below one tile, several tiles/chunks with a ragged end. D=64, C=3 dense gives
# (D+C)(D+C+1)/2 = 2278 statistics: more than one block's share (grid z > 1), and a
# float64 backward that needs more than 48 KiB of shared memory.
SHAPES = [(2, 5, 4, 2), (3, 1000, 20, 3), (2, 777, 64, 3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", ["index", "onehot", "soft"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_backward_match_float64_reference(shape, weighted, form, dtype):
    B, N, D, C = shape
    v, t, w = make_inputs(B, N, D, C, form, weighted, dtype)
    got = affinity_stats(v, t, w, C)
    want = reference.affinity_stats(f64_cpu(v), f64_cpu(t), f64_cpu(w), C)
    for name, g, r in zip(("vv", "vy", "yy", "wsum", "vsum"), got, want):
        assert g.dtype == torch.float64 and g.device.type == "cuda" and g.shape == r.shape, name
        assert rel_err(g, r) <= FWD_TOL[dtype], (name, rel_err(g, r))
    assert torch.equal(got[0], got[0].transpose(1, 2)), "V^T W V must be exactly symmetric"

    g_vv = torch.randn(B, D, D, dtype=torch.float64)
    g_vy = torch.randn(B, D, C, dtype=torch.float64)
    g_vs = torch.randn(B, D, dtype=torch.float64)
    for g_vsum in (None, g_vs):
        dv = affinity_stats_backward(g_vv.to(DEV), g_vy.to(DEV), v, t, w, None if g_vsum is None else g_vsum.to(DEV))
        assert dv.dtype == dtype and dv.shape == v.shape
        want_dv = reference.affinity_stats_backward(g_vv, g_vy, f64_cpu(v), f64_cpu(t), f64_cpu(w), g_vsum)
        assert rel_err(dv, want_dv) <= BWD_TOL[dtype], rel_err(dv, want_dv)


def test_forward_is_bitwise_reproducible():
    v, t, w = make_inputs(4, 50_000, 20, 2, "index", True, torch.float32)
    a = affinity_stats(v, t, w, 2)
    b = affinity_stats(v, t, w, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("form", ["index", "soft"])
def test_batch_beyond_the_grid_y_limit(form):
    """Items are gridDim.y (at most 65535): larger batches were refused, now launched in slices."""
    B, N, D, C = 65535 + 17, 3, 2, 2
    v, t, w = make_inputs(B, N, D, C, form, True, torch.float32)
    got = affinity_stats(v, t, w, C)
    want = reference.affinity_stats(f64_cpu(v), f64_cpu(t), f64_cpu(w), C)
    for g, r in zip(got, want):
        assert g.shape == r.shape and rel_err(g, r) <= 1e-5
    g_vv, g_vy = torch.randn(B, D, D, dtype=torch.float64), torch.randn(B, D, C, dtype=torch.float64)
    dv = affinity_stats_backward(g_vv.to(DEV), g_vy.to(DEV), v, t, w)
    assert rel_err(dv, reference.affinity_stats_backward(g_vv, g_vy, f64_cpu(v), f64_cpu(t), f64_cpu(w))) <= 1e-5


def _grad_smem_bytes(D, C, rows, dense):
    """Shared memory of the backward kernel (affinity_stats.cu, grad_kernel) for float64."""
    return 8 * (D * D + C * D + rows * (2 * (D | 1) + (C if dense else 0)) + D)


@pytest.mark.parametrize("form", ["index", "soft"])
def test_backward_with_fewer_than_32_rows_per_block(form):
    """A D so large that even 32 rows per block exceed the device's opt-in shared memory
    (the D x D operand dominates): the backward takes fewer rows per block. It stopped at
    32 rows and refused, e.g. float64 D = 64 on a 64 KiB (Turing) device."""
    optin = getattr(torch.cuda.get_device_properties(DEV), "shared_memory_per_block_optin", None)
    if not optin:
        pytest.skip("this torch does not report shared_memory_per_block_optin")
    C, dense = 2, form == "soft"
    D = next((d for d in range(2, 1024)
              if _grad_smem_bytes(d, C, 32, dense) > optin >= _grad_smem_bytes(d, C, 8, dense)), None)
    if D is None:
        pytest.skip(f"no D between 32 and 8 rows per block for {optin} bytes")
    B, N = 2, 100
    v, t, w = make_inputs(B, N, D, C, form, True, torch.float64)
    g_vv, g_vy = torch.randn(B, D, D, dtype=torch.float64), torch.randn(B, D, C, dtype=torch.float64)
    dv = affinity_stats_backward(g_vv.to(DEV), g_vy.to(DEV), v, t, w)
    want = reference.affinity_stats_backward(g_vv, g_vy, f64_cpu(v), f64_cpu(t), f64_cpu(w))
    assert rel_err(dv, want) <= BWD_TOL[torch.float64]


@pytest.mark.parametrize("form", ["index", "soft"])
def test_non_contiguous_inputs(form):
    B, N, D, C = 2, 300, 6, 3
    v, t, w = make_inputs(B, N, 2 * D, C, form, True, torch.float32)
    v = v[..., ::2]                      # strided embedding
    w = w.t().contiguous().t()           # transposed storage
    assert not v.is_contiguous() and not w.is_contiguous()
    got = affinity_stats(v, t, w, C)
    want = reference.affinity_stats(f64_cpu(v), f64_cpu(t), f64_cpu(w), C)
    for g, r in zip(got, want):
        assert rel_err(g, r) <= 1e-5
    g_vv, g_vy = torch.randn(B, D, D, dtype=torch.float64), torch.randn(B, D, C, dtype=torch.float64)
    dv = affinity_stats_backward(g_vv.to(DEV), g_vy.to(DEV), v, t, w)
    assert rel_err(dv, reference.affinity_stats_backward(g_vv, g_vy, f64_cpu(v), f64_cpu(t), f64_cpu(w))) <= 1e-5


@pytest.mark.parametrize("form", ["index", "soft"])
def test_deep_lda_loss_on_cuda_meets_the_reference(form):
    """The deep-LDA loss and gradient (the g_vsum path) against the CPU reference in float64."""
    v, t, w = make_inputs(2, 5000, 20, 3, form, True, torch.float32)
    v.requires_grad_(True)
    loss = losses.deep_lda_loss(v, t, w, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), v)
    v64 = f64_cpu(v.detach()).requires_grad_(True)
    with losses_on_reference():
        want = losses.deep_lda_loss(v64, f64_cpu(t), f64_cpu(w), reduction="none")
        (want_grad,) = torch.autograd.grad(want.sum(), v64)
    assert rel_err(loss, want) <= 1e-5 and rel_err(grad, want_grad) <= 1e-4


def test_zero_weights_give_zero_statistics_and_gradient():
    v, t, _ = make_inputs(2, 200, 5, 2, "index", False, torch.float32)
    w = torch.zeros(2, 200, device=DEV)
    vv, vy, yy, ws, vs = affinity_stats(v, t, w, 2)
    assert vs.abs().max() == 0
    assert vv.abs().max() == 0 and vy.abs().max() == 0 and yy.abs().max() == 0 and ws.abs().max() == 0
    dv = affinity_stats_backward(torch.ones(2, 5, 5, dtype=torch.float64, device=DEV),
                                 torch.ones(2, 5, 2, dtype=torch.float64, device=DEV), v, t, w)
    assert torch.equal(dv, torch.zeros_like(dv))


@pytest.mark.parametrize("shape", [(2, 0, 4), (0, 50, 4), (2, 50, 0)], ids=["N=0", "B=0", "D=0"])
@pytest.mark.parametrize("form", ["index", "soft"])
def test_empty_inputs_match_the_reference(shape, form):
    B, N, D = shape
    v, t, w = make_inputs(B, N, D, 3, form, True, torch.float32)
    got = affinity_stats(v, t, w, 3)
    want = reference.affinity_stats(f64_cpu(v), f64_cpu(t), f64_cpu(w), 3)
    for g, r in zip(got, want):
        assert g.shape == r.shape
        # D=0 still has YᵀWY and Σw, summed from float32 inputs in float32 per tile: within
        # FWD_TOL of the float64 reference, not float64's default rtol (that failed nearly
        # always). N=0 and B=0 must be exact zeros: rel_err then divides by 1e-30.
        if r.numel():
            assert rel_err(g, r) <= FWD_TOL[torch.float32], rel_err(g, r)
    g_vv, g_vy, g_vs = (torch.randn(B, D, D, dtype=torch.float64), torch.randn(B, D, 3, dtype=torch.float64),
                        torch.randn(B, D, dtype=torch.float64))
    dv = affinity_stats_backward(g_vv.to(DEV), g_vy.to(DEV), v, t, w, g_vs.to(DEV))
    assert dv.shape == v.shape


@pytest.mark.parametrize("value", [float("nan"), -float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("form", ["index", "soft"])
def test_non_finite_values_propagate_like_the_reference(value, form):
    v, t, w = make_inputs(2, 300, 5, 3, form, True, torch.float32)
    v[0, 17, 2] = value
    got = affinity_stats(v, t, w, 3)
    want = reference.affinity_stats(f64_cpu(v), f64_cpu(t), f64_cpu(w), 3)
    where = lambda x: torch.stack([x.isnan(), x.isposinf(), x.isneginf()])  # noqa: E731
    for g, r in zip(got, want):
        assert torch.equal(where(g.cpu()), where(r))
    g_vv, g_vy = torch.randn(2, 5, 5, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    dv = affinity_stats_backward(g_vv.to(DEV), g_vy.to(DEV), v, t, w)
    want_dv = reference.affinity_stats_backward(g_vv, g_vy, f64_cpu(v), f64_cpu(t), f64_cpu(w)).float()
    assert torch.equal(where(dv.cpu()), where(want_dv))


@pytest.mark.parametrize("bad", [-1, 3])
def test_out_of_range_label_raises(bad):
    v, t, w = make_inputs(2, 100, 4, 3, "index", True, torch.float32)
    t[1, 17] = bad
    with pytest.raises(RuntimeError, match="out of range"):
        affinity_stats(v, t, w, 3)
    with pytest.raises(RuntimeError, match="out of range"):
        affinity_stats_backward(torch.zeros(2, 4, 4, dtype=torch.float64, device=DEV),
                                torch.zeros(2, 4, 3, dtype=torch.float64, device=DEV), v, t, w)


@pytest.mark.skipif(EXT_DISABLED, reason="the reference twin does not check dtypes or shapes")
def test_bad_inputs_have_clear_errors():
    v, t, w = make_inputs(2, 10, 4, 3, "soft", True, torch.float32)
    with pytest.raises(RuntimeError, match="dense target dtype"):
        affinity_stats(v, t.double(), w, 3)
    with pytest.raises(RuntimeError, match="weight must be"):
        affinity_stats(v, t, w[:, :5], 3)
    with pytest.raises(RuntimeError, match="embedding must be"):
        affinity_stats(v.int(), t, w, 3)


@pytest.mark.parametrize("form", ["index", "soft"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_gradcheck_float64(form, weighted):
    v, t, w = make_inputs(2, 70, 3, 2, form, weighted, torch.float64)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: affinity_stats(x, t, w, 2)[:2], (v,))


@pytest.mark.parametrize("form", ["index", "onehot"])
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_opcheck(form, requires_grad, dtype):
    v, t, w = make_inputs(2, 90, 4, 3, form, True, dtype)
    v.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.chimera.affinity_stats.default, (v, t, w, 3))
    g_vv = torch.randn(2, 4, 4, dtype=torch.float64, device=DEV)
    g_vy = torch.randn(2, 4, 3, dtype=torch.float64, device=DEV)
    torch.library.opcheck(torch.ops.chimera.affinity_stats_backward.default, (g_vv, g_vy, v.detach(), t, w))
    g_vs = torch.randn(2, 4, dtype=torch.float64, device=DEV)
    torch.library.opcheck(torch.ops.chimera.affinity_stats_backward.default, (g_vv, g_vy, v.detach(), t, w, g_vs))
