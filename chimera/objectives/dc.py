"""The deep-clustering losses: DC and DC-W.

Deep clustering (Hershey et al. 2016) and its whitened k-means variant (Wang, Le Roux
& Hershey 2018) are computed from the Gram statistics VᵀWV, VᵀWY and YᵀWY of the
fused op ``chimera.ops.affinity_stats``: never from the N×N affinity matrices.
"""
import torch

from .. import ops
from ._common import reduce_loss

#: Relative ridge added to VᵀWV and YᵀWY before inverting them in DC-W:
#: ε = RIDGE · tr(M)/size + TINY. It keeps the inverses finite when a class is absent
#: from an item (a zero row/column of YᵀWY) or the embeddings are rank-deficient.
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
        weight = weight.to(embedding.dtype)
    if embedding.device.type == "cpu" and embedding.dtype in (torch.float16, torch.bfloat16):
        # The CPU kernel computes in float32/float64; half inputs are upcast.
        embedding = embedding.float()
        target = target if target.dtype == torch.long else target.float()
        weight = None if weight is None else weight.float()
    return ops.affinity_stats(embedding, target, weight, num_classes)


def deep_clustering_loss(embedding, target, weight=None, reduction="mean", num_classes=None):
    """Deep clustering loss ‖W^½(VVᵀ − YYᵀ)W^½‖²_F / (Σw)², per batch item.

    embedding: (B, N, D); target: (B, N) int64 class indices (never expanded to one-hot)
    or (B, N, C) float (one-hot or soft); weight: (B, N) non-negative or None.
    Without weights this is the mean over the N² bin pairs. An item whose weights are
    all zero has loss 0. Gradients flow to the embedding only.
    """
    vv, vy, yy, wsum = _stats(embedding, target, weight, num_classes)
    norm = wsum.square().clamp_min(_TINY)
    loss = (vv.square().sum((1, 2)) - 2 * vy.square().sum((1, 2)) + yy.square().sum((1, 2))) / norm
    loss = torch.where(wsum > 0, loss, torch.zeros_like(loss))
    return reduce_loss(loss, reduction).to(embedding.dtype)


def _ridge(m):
    size = m.shape[-1]
    scale = torch.diagonal(m, dim1=-2, dim2=-1).sum(-1) / size
    eps = WHITENING_RIDGE * scale + _TINY
    return m + eps[:, None, None] * torch.eye(size, dtype=m.dtype, device=m.device)


def whitened_kmeans_loss(embedding, target, weight=None, reduction="mean", num_classes=None):
    """Whitened k-means deep clustering loss (DC-W, Wang et al. 2018), per item:

        L = D − tr((VᵀWV)⁻¹ VᵀWY (YᵀWY)⁻¹ YᵀWV),

    with the ridge of ``WHITENING_RIDGE`` on both inverses (see there). Same arguments as
    :func:`deep_clustering_loss`; an item whose weights are all zero has loss 0.
    """
    vv, vy, yy, wsum = _stats(embedding, target, weight, num_classes)
    D = vv.shape[-1]
    a = torch.linalg.solve(_ridge(vv), vy)                 # (VᵀWV)⁻¹ VᵀWY
    b = torch.linalg.solve(_ridge(yy), vy.transpose(1, 2))  # (YᵀWY)⁻¹ YᵀWV
    loss = D - torch.einsum("bij,bji->b", a, b)
    loss = torch.where(wsum > 0, loss, torch.zeros_like(loss))
    return reduce_loss(loss, reduction).to(embedding.dtype)
