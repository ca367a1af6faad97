"""Batched k-means for deep-clustering inference, and the binary masks it gives.

:func:`kmeans_masks` is the one k-means separation path: the Separator (predict, evaluate,
training validation) calls it with the model's embeddings and, when the model also has a
mask head, that head's masks to name the clusters after.
"""
import itertools

import torch


def _sq_norms(x):
    # ‖x‖² (B, N, 1) as a reduction: x.square() would first make a copy of the embeddings
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()


def _pairwise_sq_dist(x, centres, x_sq=None):
    # ‖x‖² − 2 x·c + ‖c‖², clamped: (B, N, K); x_sq: ‖x‖² (B, N, 1) when already known
    x_sq = _sq_norms(x) if x_sq is None else x_sq
    # baddbmm, not `2 * x @ c`: that would scale a copy of all the embeddings first
    return torch.baddbmm(x_sq + centres.square().sum(-1).unsqueeze(1), x, centres.transpose(1, 2),
                         alpha=-2).clamp_min_(0)


def _nearest(x, centres):
    # argmin over centres of ‖c‖² − 2 x·c: ‖x‖² is the same for every centre, so it is left out
    return torch.baddbmm(centres.square().sum(-1).unsqueeze(1), x, centres.transpose(1, 2), alpha=-2).argmin(-1)


def _kmeans_pp(x, w, k, generator, x_sq=None):
    """k-means++ seeding, batched: each next centre drawn with probability ∝ w·d²."""
    B, N, _ = x.shape
    x_sq = _sq_norms(x) if x_sq is None else x_sq
    batch = torch.arange(B, device=x.device)
    probs = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
    first = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(x.device)
    centres = [x[batch, first]]
    d2 = _pairwise_sq_dist(x, centres[0].unsqueeze(1), x_sq).squeeze(-1)
    for _ in range(1, k):
        p = w * d2
        total = p.sum(-1, keepdim=True)
        # all mass on chosen points (fewer distinct points than k): fall back to weights
        p = torch.where(total > 0, p / total.clamp_min(1e-30), probs)
        idx = torch.multinomial(p.cpu(), 1, generator=generator).squeeze(1).to(x.device)
        centres.append(x[batch, idx])
        d2 = torch.minimum(d2, _pairwise_sq_dist(x, centres[-1].unsqueeze(1), x_sq).squeeze(-1))
    return torch.stack(centres, 1)


@torch.no_grad()
def kmeans(embedding, n_clusters, n_iter=50, weight=None, seed=0, whiten=False, tol=1e-4):
    """Weighted k-means on each item of a batch, on the embedding's device.

    embedding: (B, N, D); weight: (B, N) or None (an item whose weights are all 0 counts
    every point alike). k-means++ initialisation from `seed`.
    `whiten=True` first whitens each item's embeddings with (VᵀWV)^{-1/2}, the metric
    that DC-W training optimises. Lloyd's iterations stop after `n_iter`, once no label
    changes, or once no centre moves (squared distance) by more than `tol` × the item's
    weighted variance Σw‖x − μ‖²/Σw: a tolerance relative to the data's spread, as
    scikit-learn's is. Waiting for the labels alone never ends on real embeddings, where a
    few points on the boundary swap back and forth by float rounding while the centres
    stay put (every 10-second segment of a song ran all 50 iterations, 9x the time of
    the 16-17 this stops after). Returns (labels (B, N) int64,
    centres (B, K, D)) — centres in the (possibly whitened) space the clustering ran in.
    """
    x = embedding.detach().to(torch.float32 if embedding.dtype in (torch.float16, torch.bfloat16) else embedding.dtype)
    if x.dim() != 3:
        raise ValueError(f"embedding must be (B, N, D), got shape {tuple(x.shape)}")
    B, N, D = x.shape
    if N < n_clusters:
        raise ValueError(f"cannot form {n_clusters} clusters from {N} points")
    w = torch.ones(B, N, dtype=x.dtype, device=x.device) if weight is None else weight.to(x.dtype)
    # An item with no weight at all (a silent segment, or one silent channel of it, whose
    # bins are all below the activity threshold) clusters with every bin counted alike.
    w = torch.where(w.sum(-1, keepdim=True) > 0, w, torch.ones_like(w))
    total = w.sum(-1)                                                # (B,)
    if whiten:
        cov = (x * w.unsqueeze(-1)).transpose(1, 2) @ x / total.clamp_min(1e-30)[:, None, None]
        evals, evecs = torch.linalg.eigh(cov + 1e-6 * torch.eye(D, dtype=x.dtype, device=x.device))
        x = x @ (evecs * evals.clamp_min(1e-12).rsqrt().unsqueeze(1)) @ evecs.transpose(1, 2)
    x_sq = _sq_norms(x)                                              # (B, N, 1)
    mean = (w.unsqueeze(1) @ x).squeeze(1) / total.unsqueeze(-1)     # (B, D)
    # weighted variance Σ w‖x − μ‖² / Σ w, the scale the centres' moves are judged on
    spread = ((w * x_sq.squeeze(-1)).sum(-1) / total - mean.square().sum(-1)).clamp_min(0)
    generator = torch.Generator().manual_seed(seed)
    centres = _kmeans_pp(x, w, n_clusters, generator, x_sq)
    ks = torch.arange(n_clusters, device=x.device)
    labels = None
    for _ in range(n_iter):
        new_labels = _nearest(x, centres)
        onehot = (new_labels.unsqueeze(-1) == ks).to(x.dtype).mul_(w.unsqueeze(-1))  # (B, N, K), weighted
        mass = onehot.sum(1)                                                        # (B, K)
        sums = onehot.transpose(1, 2) @ x                                           # (B, K, D)
        # an empty cluster keeps its previous centre
        new_centres = torch.where(mass.unsqueeze(-1) > 0, sums / mass.clamp_min(1e-30).unsqueeze(-1), centres)
        moved = (new_centres - centres).square().sum(-1).amax(-1)                   # (B,)
        centres = new_centres
        if (labels is not None and torch.equal(labels, new_labels)) or bool((moved <= tol * spread).all()):
            break
        labels = new_labels
    return _nearest(x, centres), centres


def masks_from_labels(labels, n_clusters, shape=None):
    """Binary masks (B, K, N) from cluster labels (B, N); `shape` reshapes N (e.g. (T, F))."""
    masks = torch.nn.functional.one_hot(labels, n_clusters).transpose(1, 2).to(torch.float32)
    return masks if shape is None else masks.reshape(labels.shape[0], n_clusters, *shape)


def align_masks(masks, reference):
    """Reorder the K masks of each item, (B, K, ...), to agree best with `reference`
    (B, K, ...): the permutation that maximises the summed overlap, over all K! of them."""
    K = masks.shape[1]
    score = torch.einsum("bi...,bj...->bij", masks, reference.to(masks.dtype))  # mask i vs reference j
    perms = list(itertools.permutations(range(K)))
    totals = torch.stack([score[:, list(p), list(range(K))].sum(-1) for p in perms], -1)
    best = [perms[i] for i in totals.argmax(-1).tolist()]
    return torch.stack([masks[b, list(p)] for b, p in enumerate(best)])


@torch.no_grad()
def kmeans_masks(embedding, n_clusters, shape=None, weight=None, reference=None, n_iter=50, seed=0):
    """Binary masks (B, K, *shape) from k-means on each item's embeddings (B, N, D).

    `weight` (B, N) weighs the bins (e.g. 0 for silent ones, which then follow their
    nearest centre); `reference` (B, K, *shape), e.g. a mask head's masks, orders the
    clusters to agree with it (:func:`align_masks`), else they come in k-means' order.
    """
    labels, _ = kmeans(embedding, n_clusters, n_iter=n_iter, weight=weight, seed=seed)
    masks = masks_from_labels(labels, n_clusters, shape)
    return masks if reference is None else align_masks(masks, reference)
