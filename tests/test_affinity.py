"""chimera::affinity_stats and the deep-clustering losses built on it."""
import pytest
import torch
from torch.library import opcheck

from chimera import losses, ops
from chimera.ops import reference

C = 3


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def make(B=2, N=57, D=5, dtype=torch.float64, weighted=True, target="index", seed=0):
    g = torch.Generator().manual_seed(seed)
    V = unit(torch.randn(B, N, D, generator=g, dtype=dtype))
    labels = torch.randint(0, C, (B, N), generator=g)
    if target == "index":
        Y = labels
    elif target == "onehot":
        Y = torch.nn.functional.one_hot(labels, C).to(dtype)
    else:  # soft
        Y = torch.softmax(torch.randn(B, N, C, generator=g, dtype=dtype) * 2, -1)
    w = torch.rand(B, N, generator=g, dtype=dtype) if weighted else None
    return V, Y, w


def dense(Y):
    return torch.nn.functional.one_hot(Y, C).double() if Y.dtype == torch.long else Y.double()


def dc_quadratic(V, Y, w):
    """The O(N²) definition: ‖W^½(VVᵀ − YYᵀ)W^½‖²_F / (Σw)², float64."""
    V, Y = V.double(), dense(Y)
    w = torch.ones(V.shape[:2], dtype=torch.float64) if w is None else w.double()
    A = V @ V.transpose(1, 2) - Y @ Y.transpose(1, 2)
    return (A.square() * w[:, :, None] * w[:, None, :]).sum((1, 2)) / w.sum(-1).square()


def dcw_direct(V, Y, w):
    V, Y = V.double(), dense(Y)
    w = torch.ones(V.shape[:2], dtype=torch.float64) if w is None else w.double()
    VWV = V.transpose(1, 2) @ (V * w[..., None])
    VWY = V.transpose(1, 2) @ (Y * w[..., None])
    YWY = Y.transpose(1, 2) @ (Y * w[..., None])
    M = torch.linalg.inv(VWV) @ VWY @ torch.linalg.inv(YWY) @ VWY.transpose(1, 2)
    return V.shape[-1] - torch.diagonal(M, dim1=1, dim2=2).sum(-1)


TARGETS = ["index", "onehot", "soft"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("weighted", [True, False])
def test_stats_match_reference(target, weighted):
    V, Y, w = make(target=target, weighted=weighted)
    got = ops.affinity_stats(V, Y, w, C)
    want = reference.affinity_stats(V, Y, w, C)
    for g, r in zip(got, want):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_dc_loss_matches_quadratic_definition(target, weighted, reduction):
    V, Y, w = make(target=target, weighted=weighted)
    want = dc_quadratic(V, Y, w)
    want = {"none": want, "mean": want.mean(), "sum": want.sum()}[reduction]
    got = losses.deep_clustering_loss(V, Y, w, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_unweighted_dc_is_mean_over_bin_pairs():
    V, Y, _ = make(weighted=False)
    A = V @ V.transpose(1, 2) - dense(Y) @ dense(Y).transpose(1, 2)
    torch.testing.assert_close(losses.deep_clustering_loss(V, Y, reduction="none"), A.square().mean((1, 2)))


@pytest.mark.parametrize("target", TARGETS)
def test_dcw_matches_direct_formula(target):
    V, Y, w = make(target=target, D=4, N=80)
    torch.testing.assert_close(losses.whitened_kmeans_loss(V, Y, w, reduction="none"), dcw_direct(V, Y, w),
                               rtol=1e-5, atol=1e-5)  # the documented ridge shifts it by ~1e-6


def test_dcw_perfect_embedding_reaches_its_minimum():
    # V = Y (D = C): whitened affinity equals the ideal one, loss D - C = 0
    _, Y, w = make(target="onehot")
    assert losses.whitened_kmeans_loss(Y.clone(), Y, w).abs().item() < 1e-4


@pytest.mark.parametrize("fn", [losses.deep_clustering_loss, losses.whitened_kmeans_loss])
def test_absent_class_and_zero_weights_stay_finite(fn):
    V, _, w = make()
    Y = torch.zeros(V.shape[:2], dtype=torch.long)  # classes 1 and 2 absent
    V.requires_grad_(True)
    loss = fn(V, Y, w, num_classes=C)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(V.grad).all()

    V.grad = None
    loss = fn(V, Y, torch.zeros_like(w), num_classes=C)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(V.grad).all()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("weighted", [True, False])
def test_gradcheck_op(target, weighted):
    V, Y, w = make(B=2, N=23, D=3, target=target, weighted=weighted)
    V.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: ops.affinity_stats(v, Y, w, C)[:2], (V,))


@pytest.mark.parametrize("fn", [losses.deep_clustering_loss, losses.whitened_kmeans_loss])
@pytest.mark.parametrize("target", ["index", "soft"])
def test_gradcheck_losses(fn, target):
    V, Y, w = make(B=2, N=23, D=3, target=target)
    V.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: fn(v, Y, w, reduction="none"), (V,))


def test_dc_gradient_closed_form():
    # (4/(Σw)²)·W(V·VᵀWV − Y·YᵀWV), the formula the backward kernel implements
    V, Y, w = make(B=1)
    V.requires_grad_(True)
    losses.deep_clustering_loss(V, Y, w).backward()
    Yd, Vd = dense(Y), V.detach()
    W = w[..., None]
    want = 4 / w.sum() ** 2 * W * (Vd @ (Vd.transpose(1, 2) @ (W * Vd)) - Yd @ (Yd.transpose(1, 2) @ (W * Vd)))
    torch.testing.assert_close(V.grad, want)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(target, requires_grad):
    for weighted in (True, False):
        V, Y, w = make(N=40, target=target, weighted=weighted, dtype=torch.float32)
        V.requires_grad_(requires_grad)
        opcheck(torch.ops.chimera.affinity_stats.default, (V, Y, w, C))
        g_vv, g_vy = torch.randn(2, 5, 5, dtype=torch.float64), torch.randn(2, 5, C, dtype=torch.float64)
        opcheck(torch.ops.chimera.affinity_stats_backward.default, (g_vv, g_vy, V.detach(), Y, w))


def test_non_contiguous_inputs():
    V, Y, w = make(N=64, D=6, target="onehot")
    Vn = V.transpose(1, 2).contiguous().transpose(1, 2)[:, ::2]  # strided view
    Yn, wn = Y[:, ::2], w[:, ::2]
    assert not Vn.is_contiguous() and not wn.is_contiguous()
    for g, r in zip(ops.affinity_stats(Vn, Yn, wn, C), reference.affinity_stats(Vn.contiguous(), Yn.contiguous(), wn.contiguous(), C)):
        torch.testing.assert_close(g, r)
    Vn = Vn.detach().requires_grad_(True)
    losses.deep_clustering_loss(Vn, Yn, wn).backward()
    Vc = Vn.detach().contiguous().requires_grad_(True)
    losses.deep_clustering_loss(Vc, Yn.contiguous(), wn.contiguous()).backward()
    torch.testing.assert_close(Vn.grad, Vc.grad)


@pytest.mark.parametrize("target", ["index", "soft"])
def test_float32_error_within_twice_plain_pytorch(target):
    # flash-attention's criterion: our float32 error at most ~2x that of plain PyTorch float32
    V, Y, w = make(B=2, N=20000, D=20, target=target, dtype=torch.float32, seed=3)
    truth = losses.deep_clustering_loss(V.double(), Y if Y.dtype == torch.long else Y.double(), w.double(),
                                        reduction="none")
    Yd = dense(Y).float()
    sw = w.sqrt()[..., None]
    Vw, Yw = V * sw, Yd * sw
    plain = ((Vw.transpose(1, 2) @ Vw).square().sum((1, 2)) - 2 * (Vw.transpose(1, 2) @ Yw).square().sum((1, 2))
             + (Yw.transpose(1, 2) @ Yw).square().sum((1, 2))) / w.sum(-1).square()
    ours = losses.deep_clustering_loss(V, Y, w, reduction="none")
    err_plain = (plain.double() - truth).abs().max().item()
    err_ours = (ours.double() - truth).abs().max().item()
    assert err_ours <= 2 * err_plain + 1e-7

    V.requires_grad_(True)
    losses.deep_clustering_loss(V, Y, w).backward()
    V64 = V.detach().double().requires_grad_(True)
    losses.deep_clustering_loss(V64, Y if Y.dtype == torch.long else Y.double(), w.double()).backward()
    Vp = V.detach().clone().requires_grad_(True)
    Vw = Vp * sw
    plain = ((Vw.transpose(1, 2) @ Vw).square().sum((1, 2)) - 2 * (Vw.transpose(1, 2) @ Yw).square().sum((1, 2))
             + (Yw.transpose(1, 2) @ Yw).square().sum((1, 2))) / w.sum(-1).square()
    plain.mean().backward()
    scale = V64.grad.abs().max().item()
    err_ours = (V.grad.double() - V64.grad).abs().max().item() / scale
    err_plain = (Vp.grad.double() - V64.grad).abs().max().item() / scale
    assert err_ours <= 2 * err_plain + 1e-6


def test_half_input_on_cpu_is_upcast():
    V, Y, w = make(dtype=torch.float32)
    got = losses.deep_clustering_loss(V.half(), Y, w.half())
    want = losses.deep_clustering_loss(V.half().float(), Y, w.half().float())
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, rtol=1e-3, atol=1e-3)


def test_bad_inputs_are_rejected():
    V, Y, w = make(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="out of range"):
        ops.affinity_stats(V, torch.full_like(Y, C), w, C)
    with pytest.raises((RuntimeError, ValueError), match="(B, N, D)|embedding"):
        losses.deep_clustering_loss(V[0], Y, w)
    with pytest.raises(RuntimeError, match="weight"):
        ops.affinity_stats(V, Y, w[:, :5], C)
    with pytest.raises(ValueError, match="reduction"):
        losses.deep_clustering_loss(V, Y, w, reduction="avg")


def test_compiles_fullgraph():
    V, Y, w = make(dtype=torch.float32, target="soft")
    V.requires_grad_(True)
    fn = torch.compile(losses.deep_clustering_loss, backend="aot_eager", fullgraph=True)
    loss = fn(V, Y, w)
    loss.backward()
    torch.testing.assert_close(loss, losses.deep_clustering_loss(V.detach(), Y, w))


def test_weight_helpers():
    mag = torch.rand(2, 7, 9) + 0.1
    mag[1] = 0
    w = losses.magnitude_ratio_weights(mag)
    assert w.shape == (2, 63)
    torch.testing.assert_close(w[0].sum(), torch.tensor(1.0))
    assert (w[1] == 0).all()
    mag = torch.tensor([[[1.0, 0.1, 0.009, 0.0]]])
    assert losses.voice_activity_weights(mag, threshold_db=40.0).tolist() == [[1.0, 1.0, 0.0, 0.0]]
    src = torch.stack([torch.full((1, 2, 3), 1.0), torch.full((1, 2, 3), 2.0)], 1)
    src[0, 0, 0, 0] = 5
    labels = losses.ideal_binary_labels(src)
    assert labels.shape == (1, 6) and labels[0, 0] == 0 and (labels[0, 1:] == 1).all()
