"""Batched k-means for deep-clustering inference, and the binary masks it gives.

:func:`kmeans_masks` is the one k-means separation path: the Separator (predict, evaluate,
training validation) calls it with the model's embeddings and, when the model also has a
mask head, that head's masks to name the clusters after.
"""
import itertools
import numbers

import torch


def _sq_norms(x):
    # ‖x‖² (B, N, 1) as a reduction: x.square() would first make a copy of the embeddings
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()


def _scores(x, centres, x_sq=None):
    # (x_sq +) ‖c‖² − 2 x·c: (B, N, K). baddbmm, not `2 * x @ c`: that would scale a copy of
    # all the embeddings first
    c_sq = centres.square().sum(-1).unsqueeze(1)
    return torch.baddbmm(c_sq if x_sq is None else x_sq + c_sq, x, centres.transpose(1, 2), alpha=-2)


def _pairwise_sq_dist(x, centres, x_sq):
    # ‖x‖² − 2 x·c + ‖c‖², clamped: (B, N, K); x_sq: ‖x‖² (B, N, 1)
    return _scores(x, centres, x_sq).clamp_min_(0)


def _nearest(x, centres):
    # argmin over centres of ‖c‖² − 2 x·c: ‖x‖² is the same for every centre, so it is left out
    return _scores(x, centres).argmin(-1)


def _cluster_sums(x, w, labels, ks):
    # the weight (B, K) and weighted sum (B, K, D) of each cluster's points, through a weighted
    # one-hot (B, N, K) freed on return (it was held through the next iteration's argmin)
    onehot = (labels.unsqueeze(-1) == ks).to(x.dtype).mul_(w.unsqueeze(-1))
    return onehot.sum(1), onehot.transpose(1, 2) @ x


def _kmeans_pp(x, w, k, seed, x_sq):
    """k-means++ seeding, batched: each next centre drawn with probability ∝ w·d² (x_sq: ‖x‖²).
    Each item draws from its own generator seeded with `seed`, so its centres do not depend
    on the other items of the batch (one generator for the batch made a segment's sources
    depend on the batch size, and a file's on the block size it was read in)."""
    # (B, N) temporaries as few as can be (k-means' peak memory, see kmeans): the probabilities
    # by weight made only when used, the others divided and minimised in place
    batch = torch.arange(x.shape[0], device=x.device)
    generators = [torch.Generator().manual_seed(seed) for _ in range(x.shape[0])]

    def draw(p):  # one point of each item, with probabilities p (B, N)
        p = p.cpu()
        picks = [torch.multinomial(p[b], 1, generator=g) for b, g in enumerate(generators)]
        picks = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.int64)
        return x[batch, picks.to(x.device)]

    def by_weight():
        return w / w.sum(-1, keepdim=True).clamp_min(1e-30)

    def by_distance(d2):
        p = w * d2
        total = p.sum(-1, keepdim=True)
        p.div_(total.clamp_min(1e-30))
        # all mass on chosen points (fewer distinct points than k): fall back to weights
        return p if bool((total > 0).all()) else torch.where(total > 0, p, by_weight())

    centres = [draw(by_weight())]
    d2 = _pairwise_sq_dist(x, centres[0].unsqueeze(1), x_sq).squeeze(-1)
    for _ in range(1, k):
        centres.append(draw(by_distance(d2)))
        torch.minimum(d2, _pairwise_sq_dist(x, centres[-1].unsqueeze(1), x_sq).squeeze(-1), out=d2)
    return torch.stack(centres, 1)


@torch.no_grad()
def kmeans(embedding, n_clusters, n_iter=50, weight=None, seed=0, whiten=False, tol=1e-4):
    """Weighted k-means on each item of a batch, on the embedding's device.

    embedding: (B, N, D); weight: (B, N) or None (an item whose weights are all 0 counts
    every point alike). k-means++ initialisation from `seed`.
    `whiten=True` first whitens each item's embeddings with (VᵀWV)^{-1/2}, the metric
    that DC-W training optimises. Lloyd's iterations stop (each item's on its own, so an
    item clusters as it would alone: the same seeding, the same centres) after `n_iter`, once no label
    changes, or once no centre moves (squared distance) by more than `tol` × the item's
    weighted variance Σw‖x − μ‖²/Σw: a tolerance relative to the data's spread, as
    scikit-learn's is. Waiting for the labels alone never ends on real embeddings, where a
    few points on the boundary swap back and forth by float rounding while the centres
    stay put (every 10-second segment of a song ran all 50 iterations, 9x the time of
    the 16-17 this stops after). Returns (labels (B, N) int64,
    centres (B, K, D)) — centres in the (possibly whitened) space the clustering ran in.
    An item with a NaN or Inf embedding or weight gets NaN centres (and labels 0, which
    mean nothing); the other items cluster as without it.
    """
    if not embedding.is_floating_point():  # integer or complex: an error deep in the distances
        raise TypeError(f"embedding must be real floating point, got {embedding.dtype}")
    if not isinstance(n_clusters, numbers.Integral) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a whole number >= 1, got {n_clusters!r}")
    x = embedding.detach().to(torch.float32 if embedding.dtype in (torch.float16, torch.bfloat16) else embedding.dtype)
    if x.dim() != 3:
        raise ValueError(f"embedding must be (B, N, D), got shape {tuple(x.shape)}")
    B, N, D = x.shape
    if N < n_clusters:
        raise ValueError(f"cannot form {n_clusters} clusters from {N} points")
    if weight is None:
        w = torch.ones(B, N, dtype=x.dtype, device=x.device)
    else:
        if weight.shape[-1:] != (N,) or weight.shape[:-1] not in ((), (1,), (B,)):  # (N,), (1, N): every item's
            raise ValueError(f"weight must be (B, N) = {(B, N)}, got shape {tuple(weight.shape)}")
        w = weight.to(x.dtype).expand(B, N)
        if bool((w < 0).any()):  # torch.multinomial's error said "probability tensor"
            raise ValueError("weight must be >= 0")
    x_sq = _sq_norms(x)                                              # (B, N, 1)
    # NaN or Inf in an item: NaN centres for it, which it meanwhile clusters as all-zero points
    # of equal weight (argmin took a NaN distance as the least: one cluster got every point,
    # and multinomial refuses NaN weights). The sums of ‖x‖² and w (>= 0) are the cheap test
    # (isfinite on them took a tenth of k-means' time); the exact one only when it fails, for
    # a sum also overflows on large finite values.
    bad = ~(x_sq.sum((1, 2)).isfinite() & w.sum(-1).isfinite())        # (B,)
    any_bad = bool(bad.any())
    if any_bad:
        bad = ~(x.isfinite().flatten(1).all(1) & w.isfinite().all(-1))
        x, w = x.masked_fill(bad[:, None, None], 0), w.masked_fill(bad[:, None], 1)
        x_sq = _sq_norms(x)
    # An item with no weight at all (a silent segment, or one silent channel of it, whose
    # bins are all below the activity threshold) clusters with every bin counted alike.
    w = torch.where(w.sum(-1, keepdim=True) > 0, w, torch.ones_like(w))
    total = w.sum(-1)                                                # (B,)
    if whiten:
        cov = (x * w.unsqueeze(-1)).transpose(1, 2) @ x / total.clamp_min(1e-30)[:, None, None]
        evals, evecs = torch.linalg.eigh(cov + 1e-6 * torch.eye(D, dtype=x.dtype, device=x.device))
        x = x @ (evecs * evals.clamp_min(1e-12).rsqrt().unsqueeze(1)) @ evecs.transpose(1, 2)
        x_sq = _sq_norms(x)
    mean = (w.unsqueeze(1) @ x).squeeze(1) / total.unsqueeze(-1)     # (B, D)
    # weighted variance Σ w‖x − μ‖² / Σ w, the scale the centres' moves are judged on
    spread = ((w * x_sq.squeeze(-1)).sum(-1) / total - mean.square().sum(-1)).clamp_min(0)
    centres = _kmeans_pp(x, w, n_clusters, seed, x_sq)
    del x_sq  # the iterations leave ‖x‖² out
    # What k-means adds to the embeddings at its peak was what made `predict --method kmeans`
    # need 519 MB against the mask head's 375 (45 s of stereo): 59 MB on a batch of 4 x 321,507
    # points, now 30 (the same results to the bit; the predict peak 489 MB), from the seeding
    # in place, ‖x‖² and the one-hot freed when done, and the labels between iterations in one
    # byte, not argmin's eight.
    label_dtype = torch.uint8 if n_clusters <= 256 else torch.int64
    ks = torch.arange(n_clusters, device=x.device, dtype=label_dtype)
    labels = None
    # Each item stops on its own (its centres then stay as they are), so that it clusters as
    # it would alone: a batch-wide test kept an item that had converged iterating while the
    # others moved, and its sources depended on the batch size (and a file's on its blocks).
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    for _ in range(n_iter):
        new_labels = _nearest(x, centres).to(label_dtype)
        mass, sums = _cluster_sums(x, w, new_labels, ks)                            # (B, K), (B, K, D)
        # an empty cluster keeps its previous centre
        new_centres = torch.where(mass.unsqueeze(-1) > 0, sums / mass.clamp_min(1e-30).unsqueeze(-1), centres)
        moved = (new_centres - centres).square().sum(-1).amax(-1)                   # (B,)
        centres = torch.where(done[:, None, None], centres, new_centres)
        if labels is not None:
            done |= (labels == new_labels).all(-1)
        done |= moved <= tol * spread
        if bool(done.all()):
            break
        labels = new_labels
    labels = _nearest(x, centres)
    if any_bad:
        centres = centres.masked_fill(bad[:, None, None], float("nan"))
    return labels, centres


def masks_from_labels(labels, n_clusters, shape=None):
    """Binary masks (B, K, N) from cluster labels (B, N); `shape` reshapes N (e.g. (T, F))."""
    # a comparison, not one_hot(...).transpose(1, 2): that made (B, N, K) int64 (8 bytes an
    # entry) and a transposed float32 copy that the reshape copied once more
    ks = torch.arange(n_clusters, device=labels.device)
    masks = (labels.unsqueeze(1) == ks[:, None]).to(torch.float32)
    return masks if shape is None else masks.reshape(labels.shape[0], n_clusters, *shape)


def align_masks(masks, reference):
    """Reorder the K masks of each item, (B, K, ...), to agree best with `reference`
    (B, K, ...): the permutation that maximises the summed overlap, over all K! of them.
    An item whose overlaps are NaN (a NaN reference) has no best order: its masks are NaN."""
    if reference.shape != masks.shape:
        raise ValueError(f"reference {tuple(reference.shape)} must have the masks' shape {tuple(masks.shape)}")
    B, K = masks.shape[:2]
    score = torch.einsum("bi...,bj...->bij", masks, reference.to(masks.dtype))  # mask i vs reference j
    perms = list(itertools.permutations(range(K)))
    totals = torch.stack([score[:, list(p), list(range(K))].sum(-1) for p in perms], -1)
    best = torch.tensor(perms, device=masks.device)[totals.argmax(-1)]        # (B, K)
    out = masks[torch.arange(B, device=masks.device)[:, None], best]          # an empty batch too
    unknown = totals.isnan().any(-1)  # argmax took the NaN as the largest
    if bool(unknown.any()):
        out[unknown] = float("nan")
    return out


@torch.no_grad()
def kmeans_masks(embedding, n_clusters, shape=None, weight=None, reference=None, n_iter=50, seed=0):
    """Binary masks (B, K, *shape) from k-means on each item's embeddings (B, N, D).

    `weight` (B, N) weighs the bins (e.g. 0 for silent ones, which then follow their
    nearest centre); `reference` (B, K, *shape), e.g. a mask head's masks, orders the
    clusters to agree with it (:func:`align_masks`), else they come in k-means' order.
    """
    labels, centres = kmeans(embedding, n_clusters, n_iter=n_iter, weight=weight, seed=seed)
    masks = masks_from_labels(labels, n_clusters, shape)
    nan = centres.isnan().flatten(1).any(1)  # NaN or Inf in the item's embedding or weight
    if bool(nan.any()):
        masks[nan] = float("nan")
    return masks if reference is None else align_masks(masks, reference)
