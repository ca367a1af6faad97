"""The deep-clustering losses built on chimera::affinity_stats: DC, DC-W and deep LDA,
against their definitions (written from the papers, not from the kernel's statistics)."""
import pytest
import torch

from affinity_util import TARGETS, dense, f64, losses_on_reference, make
from chimera import losses

C = 3
LOSSES = [losses.deep_clustering_loss, losses.whitened_kmeans_loss, losses.deep_lda_loss]
REDUCE = {"none": lambda x: x, "mean": torch.mean, "sum": torch.sum}


def ones_if_none(w, V):
    return torch.ones(V.shape[:2], dtype=torch.float64) if w is None else w.double()


def dc_quadratic(V, Y, w):
    """The O(N²) definition: ‖W^½(VVᵀ − YYᵀ)W^½‖²_F / (Σw)², float64."""
    V, Y, w = V.double(), dense(Y, C), ones_if_none(w, V)
    A = V @ V.transpose(1, 2) - Y @ Y.transpose(1, 2)
    return (A.square() * w[:, :, None] * w[:, None, :]).sum((1, 2)) / w.sum(-1).square()


def dcw_direct(V, Y, w):
    V, Y, w = V.double(), dense(Y, C), ones_if_none(w, V)
    VWV = V.transpose(1, 2) @ (V * w[..., None])
    VWY = V.transpose(1, 2) @ (Y * w[..., None])
    YWY = Y.transpose(1, 2) @ (Y * w[..., None])
    M = torch.linalg.inv(VWV) @ VWY @ torch.linalg.inv(YWY) @ VWY.transpose(1, 2)
    return V.shape[-1] - torch.diagonal(M, dim1=1, dim2=2).sum(-1)


def deep_lda_paper(V, Y, w, classes=C):
    """Wang, Le Roux & Hershey 2018, per item, O(N·D·C) in float64:
    ‖W^½(V − Y(YᵀWY)⁻¹YᵀWV)‖²_F / Σₙ wₙ‖vₙ − μ‖², μ the weighted mean."""
    out = []
    for Vb, Yb, wb in zip(V.double(), dense(Y, classes), ones_if_none(w, V)):
        means = torch.linalg.solve(Yb.T @ (Yb * wb[:, None]), Yb.T @ (Vb * wb[:, None]))  # class means (C, D)
        within = (wb * (Vb - Yb @ means).square().sum(1)).sum()
        mu = (wb[:, None] * Vb).sum(0) / wb.sum()
        total = (wb * (Vb - mu).square().sum(1)).sum()
        out.append(within / total)
    return torch.stack(out)


def test_deep_lda_reference_is_within_over_total_scatter():
    """The truth itself, on a case small enough to do by hand: two classes of two bins."""
    V = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]]], dtype=torch.float64)
    Y = torch.tensor([[0, 0, 1, 1]])
    # class means (1, 0), (0, 5): within = 1 + 1 + 1 + 1 = 4; mean (0.5, 2.5): total = 6.5 + 8.5 + 2.5 + 12.5 = 30
    want = torch.tensor([4 / 30], dtype=torch.float64)
    torch.testing.assert_close(deep_lda_paper(V, Y, None, classes=2), want)
    torch.testing.assert_close(losses.deep_lda_loss(V, Y, reduction="none"), want, rtol=3e-5, atol=0)  # the ridges


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_dc_loss_matches_quadratic_definition(target, weighted, reduction):
    V, Y, w = make(target=target, weighted=weighted)
    got = losses.deep_clustering_loss(V, Y, w, reduction=reduction)
    torch.testing.assert_close(got, REDUCE[reduction](dc_quadratic(V, Y, w)), rtol=1e-10, atol=1e-12)


def test_unweighted_dc_is_mean_over_bin_pairs():
    V, Y, _ = make(weighted=False)
    A = V @ V.transpose(1, 2) - dense(Y, C) @ dense(Y, C).transpose(1, 2)
    torch.testing.assert_close(losses.deep_clustering_loss(V, Y, reduction="none"), A.square().mean((1, 2)))


@pytest.mark.parametrize("target", TARGETS)
def test_dcw_matches_direct_formula(target):
    V, Y, w = make(target=target, D=4, N=80)
    torch.testing.assert_close(losses.whitened_kmeans_loss(V, Y, w, reduction="none"), dcw_direct(V, Y, w),
                               rtol=1e-5, atol=1e-5)  # the documented ridge shifts it by ~1e-6


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_deep_lda_matches_the_paper(target, weighted, reduction):
    V, Y, w = make(N=400, D=6, target=target, weighted=weighted)
    got = losses.deep_lda_loss(V, Y, w, reduction=reduction)
    torch.testing.assert_close(got, REDUCE[reduction](deep_lda_paper(V, Y, w)), rtol=2e-5, atol=1e-8)  # the ridges


def test_deep_lda_is_a_ratio_in_unit_interval_and_zero_at_its_minimum():
    V, Y, w = make(N=300, D=4)
    loss = losses.deep_lda_loss(V, Y, w, reduction="none")
    assert ((loss > 0) & (loss < 1)).all()
    # embeddings at their class centres: no within-class scatter
    centres = torch.randn(C, 4, dtype=torch.float64)
    assert 0 <= losses.deep_lda_loss(centres[Y], Y, w).item() < 1e-5  # the ridge: ~1e-6
    # scale invariant (a ratio of scatters), shift invariant (centred)
    torch.testing.assert_close(losses.deep_lda_loss(3 * V + 0.5, Y, w, reduction="none"), loss)


def test_dcw_perfect_embedding_reaches_its_minimum():
    # V = Y (D = C): whitened affinity equals the ideal one, loss D - C = 0
    _, Y, w = make(target="onehot")
    assert losses.whitened_kmeans_loss(Y.clone(), Y, w).abs().item() < 1e-4


@pytest.mark.parametrize("fn", LOSSES)
@pytest.mark.parametrize("target", TARGETS)
def test_fused_loss_and_gradient_meet_the_reference(fn, target):
    """Each loss on the kernels against the same loss on chimera.ops.reference differentiated
    by autograd (float64), at a shape with several forward tasks."""
    V, Y, w = make(B=2, N=40000, D=20, target=target, seed=2)
    V.requires_grad_(True)
    got = fn(V, Y, w, reduction="none")
    (g_got,) = torch.autograd.grad(got.sum(), V)
    with losses_on_reference():
        want = fn(V, Y, w, reduction="none")
        (g_want,) = torch.autograd.grad(want.sum(), V)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("fn", LOSSES)
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


@pytest.mark.parametrize("fn", LOSSES)
def test_nan_weight_propagates_to_the_loss(fn):
    """A NaN weight (sign bit set, as x86 makes them) gives a NaN loss for its item: the
    all-zero-weights guard must not read it as "no weight"."""
    V, Y, w = make()
    w[0, 5] = -torch.tensor(float("nan"))
    loss = fn(V, Y, w, reduction="none")
    assert torch.isnan(loss[0]) and torch.isfinite(loss[1])


def test_deep_lda_of_collapsed_embeddings_is_finite():
    V, Y, w = make()
    V = V[:, :1].expand_as(V).clone().requires_grad_(True)  # no scatter at all: 0 / 0 without the ridge
    loss = losses.deep_lda_loss(V, Y, w)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(V.grad).all()


@pytest.mark.parametrize("fn", LOSSES)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("weighted", [True, False])
def test_gradcheck_losses(fn, target, weighted):
    V, Y, w = make(B=2, N=23, D=3, target=target, weighted=weighted)
    V.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: fn(v, Y, w, reduction="none"), (V,))


def test_dc_gradient_closed_form():
    # (4/(Σw)²)·W(V·VᵀWV − Y·YᵀWV), the formula the backward kernel implements
    V, Y, w = make(B=1)
    V.requires_grad_(True)
    losses.deep_clustering_loss(V, Y, w).backward()
    Yd, Vd = dense(Y, C), V.detach()
    W = w[..., None]
    want = 4 / w.sum() ** 2 * W * (Vd @ (Vd.transpose(1, 2) @ (W * Vd)) - Yd @ (Yd.transpose(1, 2) @ (W * Vd)))
    torch.testing.assert_close(V.grad, want)


def test_deep_lda_gradient_closed_form():
    """dL/dvₙ = (2wₙ/T)·((vₙ − μ_c(n)) − L·(vₙ − μ)) for a hard target (T the total scatter):
    row-wise affine in V and Y, the mean term included."""
    V, Y, w = make(B=1, N=200, D=4)
    V.requires_grad_(True)
    loss = losses.deep_lda_loss(V, Y, w)
    loss.backward()
    Vd, wd, Yd = V.detach()[0], w[0], dense(Y, C)[0]
    means = (Yd.T @ (wd[:, None] * Vd)) / (Yd.T @ wd)[:, None]
    mu = (wd[:, None] * Vd).sum(0) / wd.sum()
    total = (wd * (Vd - mu).square().sum(1)).sum()
    want = 2 * wd[:, None] / total * ((Vd - Yd @ means) - loss.detach() * (Vd - mu))
    torch.testing.assert_close(V.grad[0], want, rtol=0, atol=1e-5 * want.abs().max().item())  # the ridges


@pytest.mark.parametrize("fn", LOSSES)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("weighted", [True, False])
def test_losses_compile_fullgraph(fn, target, weighted):
    """torch.compile(fullgraph=True), forward and backward, against eager; an index target's
    class count comes from the data (target.max() + 1, a SymInt in the graph)."""
    V, Y, w = make(target=target, weighted=weighted, dtype=torch.float32)
    V.requires_grad_(True)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    got = compiled(V, Y, w)
    (g_got,) = torch.autograd.grad(got, V)
    want = fn(V, Y, w)
    (g_want,) = torch.autograd.grad(want, V)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize("target", ["index", "soft"])
def test_float32_error_within_twice_plain_pytorch(target):
    # flash-attention's criterion: our float32 error at most ~2x that of plain PyTorch float32,
    # the truth being the loss on chimera.ops.reference in float64
    V, Y, w = make(B=2, N=20000, D=20, C=2, target=target, dtype=torch.float32, seed=3)
    Yd = dense(Y, 2).float()
    sw = w.sqrt()[..., None]

    def plain(v):
        Vw, Yw = v * sw, Yd * sw
        return ((Vw.transpose(1, 2) @ Vw).square().sum((1, 2)) - 2 * (Vw.transpose(1, 2) @ Yw).square().sum((1, 2))
                + (Yw.transpose(1, 2) @ Yw).square().sum((1, 2))) / w.sum(-1).square()

    V64 = V.double().requires_grad_(True)
    with losses_on_reference():
        truth = losses.deep_clustering_loss(V64, f64(Y), w.double(), reduction="none")
    (g_truth,) = torch.autograd.grad(truth.mean(), V64)
    V.requires_grad_(True)
    ours = losses.deep_clustering_loss(V, Y, w, reduction="none")
    (g_ours,) = torch.autograd.grad(ours.mean(), V)
    theirs = plain(V)
    (g_theirs,) = torch.autograd.grad(theirs.mean(), V)
    err = lambda x: (x.double() - truth).abs().max().item()  # noqa: E731
    assert err(ours) <= 2 * err(theirs) + 1e-7
    scale = g_truth.abs().max().item()
    gerr = lambda g: (g.double() - g_truth).abs().max().item() / scale  # noqa: E731
    assert gerr(g_ours) <= 2 * gerr(g_theirs) + 1e-6


def test_bad_inputs_are_rejected():
    V, Y, w = make(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        losses.deep_lda_loss(V[0], Y, w)
    with pytest.raises(ValueError, match="reduction"):
        losses.deep_lda_loss(V, Y, w, reduction="avg")
    with pytest.raises(TypeError, match="int64 class indices"):
        losses.deep_lda_loss(V, Y.int(), w)


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
