"""The deep-clustering losses: DC, DC-W and deep LDA.

Deep clustering (Hershey et al. 2016), its whitened k-means variant and the deep-LDA
objective (both Wang, Le Roux & Hershey 2018) are computed from the statistics VᵀWV, VᵀWY,
YᵀWY, Σw and Vᵀw of the fused op ``chimera.ops.affinity_stats`` (one pass over the
embeddings, one more for the gradient): never from the N×N affinity matrices.
"""
import torch

from .. import ops
from ._common import reduce_loss

#: Relative ridge added to VᵀWV and YᵀWY before inverting them in DC-W and deep LDA:
#: ε = RIDGE · tr(M)/size + TINY. It keeps the inverses finite when a class is absent
#: from an item (a zero row/column of YᵀWY) or the embeddings are rank-deficient.
#: Deep LDA also adds RIDGE · Σw‖v‖² + TINY to its denominator (the total scatter).
WHITENING_RIDGE = 1e-6
_TINY = 1e-12


def _stats(embedding, target, weight, num_classes=None):
    if embedding.dim() != 3:
        raise ValueError(f"embedding must be (B, N, D), got shape {tuple(embedding.shape)}")
    if target.dtype == torch.long:
        if num_classes is None:
            num_classes = int(target.max().item()) + 1 if target.numel() else 1
    elif not target.is_floating_point():
        raise TypeError(f"target must be int64 class indices or a float (B, N, C) tensor, got {target.dtype}")
    else:
        target = target.to(embedding.dtype)
        num_classes = target.shape[-1]
    if weight is not None:
        if embedding.dtype in (torch.float16, torch.bfloat16):
            # The op takes the weights in the embedding's dtype, where float16 turns weights above
            # 65504 into inf (a NaN loss) and small ones into 0. Every loss here is invariant to
            # scaling an item's weights: scale them to a maximum of 1 first.
            peak = weight.amax(-1, keepdim=True)
            weight = weight / torch.where(peak > 0, peak, torch.ones_like(peak))
        weight = weight.to(embedding.dtype)
    return ops.affinity_stats(embedding, target, weight, num_classes)


def deep_clustering_loss(embedding, target, weight=None, reduction="mean", num_classes=None):
    """Deep clustering loss ‖W^½(VVᵀ − YYᵀ)W^½‖²_F / (Σw)², per batch item.

    embedding: (B, N, D); target: (B, N) int64 class indices (never expanded to one-hot)
    or (B, N, C) float (one-hot or soft); weight: (B, N) non-negative or None.
    Without weights this is the mean over the N² bin pairs. An item whose weights are
    all zero has loss 0. Gradients flow to the embedding (and to weights or a dense target
    that require them).
    """
    vv, vy, yy, wsum, _ = _stats(embedding, target, weight, num_classes)
    norm = wsum.square().clamp_min(_TINY)
    loss = (vv.square().sum((1, 2)) - 2 * vy.square().sum((1, 2)) + yy.square().sum((1, 2))) / norm
    loss = torch.where(wsum == 0, torch.zeros_like(loss), loss)  # all-zero weights: 0; a NaN stays
    return reduce_loss(loss, reduction).to(embedding.dtype)


def _ridge_eps(m):
    """ε = RIDGE · tr(M)/size + TINY per item, for a (B, size, size) matrix M."""
    return WHITENING_RIDGE * torch.diagonal(m, dim1=-2, dim2=-1).sum(-1) / m.shape[-1] + _TINY


def _ridge(m):
    return m + _ridge_eps(m)[:, None, None] * torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)


def _solve_classes(yy, rhs, index_target):
    """(YᵀWY + εI)⁻¹ rhs. YᵀWY of an index target is diagonal (affinity_stats): a division,
    which also keeps a traced class count (torch.compile) out of a matrix solve."""
    if index_target:
        diag = torch.diagonal(yy, dim1=-2, dim2=-1) + _ridge_eps(yy)[:, None]
        return rhs / diag.unsqueeze(-1)
    return torch.linalg.solve(_ridge(yy), rhs)


def whitened_kmeans_loss(embedding, target, weight=None, reduction="mean", num_classes=None):
    """Whitened k-means deep clustering loss (DC-W, Wang et al. 2018), per item:

        L = D − tr((VᵀWV)⁻¹ VᵀWY (YᵀWY)⁻¹ YᵀWV),

    with the ridge of ``WHITENING_RIDGE`` on both inverses (see there). Same arguments as
    :func:`deep_clustering_loss`; an item whose weights are all zero has loss 0.
    """
    vv, vy, yy, wsum, _ = _stats(embedding, target, weight, num_classes)
    D = vv.shape[-1]
    b = _solve_classes(yy, vy.transpose(1, 2), target.dtype == torch.long)  # (YᵀWY)⁻¹ YᵀWV
    a = torch.linalg.solve(_ridge(vv), vy @ b)  # (VᵀWV)⁻¹ VᵀWY (YᵀWY)⁻¹ YᵀWV: D x D, whatever C is
    loss = D - torch.diagonal(a, dim1=-2, dim2=-1).sum(-1)
    loss = torch.where(wsum == 0, torch.zeros_like(loss), loss)  # all-zero weights: 0; a NaN stays
    return reduce_loss(loss, reduction).to(embedding.dtype)


def deep_lda_loss(embedding, target, weight=None, reduction="mean", num_classes=None):
    """Deep-LDA loss (Wang, Le Roux & Hershey 2018): within-class over total scatter of the
    embeddings, per item, with W = diag(w):

        L = ‖W^½ (V − Y (YᵀWY)⁻¹ YᵀWV)‖²_F / Σₙ wₙ‖vₙ − μ‖²,   μ = Σₙ wₙvₙ / Σₙ wₙ.

    For a hard target the numerator is Σₙ wₙ‖vₙ − μ_c(n)‖² with the weighted class means
    μ_c; for a soft one it is the weighted least-squares residual of V on Y. With targets
    whose rows sum to 1, L lies in [0, 1]. Without weights the numerator is torch-chimera's
    ``loss_dc_deep_lda``; with weights the denominator is the weighted total scatter above
    (scaling the rows of V by √w, as that code does, would centre it on the unweighted mean
    of the scaled rows, which is not a scatter). Both are computed from the statistics,
    L = (tr VᵀWV − tr(VᵀWY (YᵀWY + εI)⁻¹ YᵀWV)) / (tr VᵀWV − ‖Vᵀw‖²/Σw + ε'), with the
    ridges ε, ε' of ``WHITENING_RIDGE``: an absent class adds nothing, collapsed embeddings
    give a finite value, and an item whose weights are all zero has loss 0. Same arguments
    as :func:`deep_clustering_loss`.
    """
    vv, vy, yy, wsum, vsum = _stats(embedding, target, weight, num_classes)
    trace = torch.diagonal(vv, dim1=-2, dim2=-1).sum(-1)                             # Σ w‖v‖²
    means = _solve_classes(yy, vy.transpose(1, 2), target.dtype == torch.long)        # (YᵀWY)⁻¹ YᵀWV
    within = trace - torch.einsum("bdc,bcd->b", vy, means)
    total = trace - vsum.square().sum(-1) / wsum.clamp_min(_TINY)
    loss = within / (total + WHITENING_RIDGE * trace + _TINY)
    loss = torch.where(wsum == 0, torch.zeros_like(loss), loss)  # all-zero weights: 0; a NaN stays
    return reduce_loss(loss, reduction).to(embedding.dtype)
