import pytest
import torch

from chimera import cluster


def blobs(B=3, per=40, K=3, D=4, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(B, K, D, generator=g) * 5
    truth = torch.arange(K).repeat_interleave(per).expand(B, -1)
    perm = torch.stack([torch.randperm(K * per, generator=g) for _ in range(B)])
    truth = torch.gather(truth, 1, perm)
    x = torch.gather(centres, 1, truth[..., None].expand(-1, -1, D)) + spread * torch.randn(B, K * per, D, generator=g)
    return x, truth


def same_partition(a, b):
    # equal up to a relabelling: the pairwise co-membership matrices agree
    return torch.equal(a[:, :, None] == a[:, None, :], b[:, :, None] == b[:, None, :])


# Whitening equalises every direction, so it only keeps clusters apart when the
# embedding has no more dimensions than the clusters span (as after DC-W training).
@pytest.mark.parametrize("whiten,D", [(False, 4), (True, 2)])
def test_recovers_well_separated_clusters_exactly(whiten, D):
    x, truth = blobs(D=D)
    labels, centres = cluster.kmeans(x, 3, seed=1, whiten=whiten)
    assert labels.shape == truth.shape and centres.shape == (3, 3, D)
    assert same_partition(labels, truth)


def test_weights_steer_centres():
    x = torch.tensor([[[0.0], [1.0], [10.0], [11.0]]])
    w = torch.tensor([[1.0, 3.0, 1.0, 1.0]])
    labels, centres = cluster.kmeans(x, 2, weight=w)
    assert sorted(centres[0, :, 0].tolist()) == pytest.approx([0.75, 10.5])


def test_an_item_without_weight_clusters_as_if_unweighted():
    # a silent segment (or channel) gives all-zero activity weights: no error, and the item
    # clusters as with no weights while the others keep theirs
    x, truth = blobs(B=2)
    w = torch.rand(2, x.shape[1], generator=torch.Generator().manual_seed(4)) + 0.5
    w[1] = 0.0
    labels, centres = cluster.kmeans(x, 3, weight=w, seed=1)
    alone, alone_centres = cluster.kmeans(x[1:], 3, seed=1)
    assert same_partition(labels[1:], alone) and same_partition(labels, truth)
    assert torch.isfinite(centres).all()
    masks = cluster.kmeans_masks(x, 3, weight=torch.zeros(2, x.shape[1]))
    assert masks.shape == (2, 3, x.shape[1]) and torch.equal(masks.sum(1), torch.ones(2, x.shape[1]))


def test_masks_from_labels():
    labels = torch.tensor([[0, 1, 1, 0, 2, 2]])
    masks = cluster.masks_from_labels(labels, 3, shape=(2, 3))
    assert masks.shape == (1, 3, 2, 3)
    assert (masks.sum(1) == 1).all()
    assert masks[0, 1].flatten().tolist() == [0, 1, 1, 0, 0, 0]


def test_too_few_points():
    with pytest.raises(ValueError, match="clusters"):
        cluster.kmeans(torch.randn(1, 2, 3), 3)


def test_kmeans_masks_take_the_reference_order():
    # three well-separated blobs; the reference names them in a known order per item
    x, truth = blobs(K=3)
    reference = cluster.masks_from_labels(truth, 3)                 # (B, K, N)
    plain = cluster.kmeans_masks(x, 3, seed=1)
    named = cluster.kmeans_masks(x, 3, seed=1, reference=reference)
    assert torch.equal(named, reference)
    assert not torch.equal(plain, reference)  # k-means alone picks its own order for some item
    # a soft, noisy reference still names them, and the masks stay a permutation of k-means'
    soft = 0.6 * reference + 0.2 + 0.1 * torch.rand(reference.shape)
    assert torch.equal(cluster.kmeans_masks(x, 3, seed=1, reference=soft), reference)
    shaped = cluster.kmeans_masks(x, 3, shape=(10, 12), seed=1, reference=reference.reshape(-1, 3, 10, 12))
    assert torch.equal(shaped, reference.reshape(-1, 3, 10, 12))


def test_align_masks_finds_the_best_of_all_permutations():
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(4, 4, 5, 6, generator=g)
    perms = [torch.randperm(4, generator=g) for _ in range(4)]
    shuffled = torch.stack([reference[b, p] for b, p in enumerate(perms)])
    torch.testing.assert_close(cluster.align_masks(shuffled, reference), reference, rtol=0, atol=0)


def test_stops_when_the_centres_stand_still_though_labels_keep_swapping(monkeypatch):
    # On real embeddings a few boundary points swap clusters back and forth by float
    # rounding while the centres do not move: k-means must stop there, not run n_iter.
    # Here one point of no weight (it cannot move a centre) is made to swap every call.
    x, truth = blobs(B=2, per=200)
    w = torch.ones(x.shape[:2])
    w[:, 0] = 0.0
    nearest = cluster._nearest
    calls = []

    def swapping(points, centres):
        labels = nearest(points, centres)
        labels[:, 0] = len(calls) % centres.shape[1]
        calls.append(1)
        return labels

    monkeypatch.setattr(cluster, "_nearest", swapping)
    labels, _ = cluster.kmeans(x, 3, weight=w, seed=1, n_iter=50)
    assert len(calls) <= 5
    assert same_partition(labels[:, 1:], truth[:, 1:])


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_tolerance_is_relative_to_the_spread(scale):
    # overlapping blobs that take several iterations: the same answer at any scale, and
    # within a few bins of running to a fixed point (tol=0)
    x, _ = blobs(B=2, per=2000, K=2, D=3, spread=3.0, seed=2)
    base, _ = cluster.kmeans(x, 2, seed=0)
    labels, centres = cluster.kmeans(x * scale, 2, seed=0)
    assert torch.equal(labels, base)
    exact, _ = cluster.kmeans(x * scale, 2, seed=0, tol=0.0, n_iter=500)
    assert (labels != exact).float().mean() < 0.01


@pytest.mark.parametrize("where", ["embedding", "weight"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_in_an_item_gives_it_nan(where, value):
    # A NaN embedding made every point its nearest centre's (argmin takes NaN as the least),
    # binary masks with all of the item in one source; a NaN weight counted the item as
    # unweighted, an infinite one crashed in torch.multinomial. Now that item's centres
    # and masks are NaN, and the other items cluster as before.
    x, truth = blobs()
    w = torch.ones(x.shape[:2])
    (x if where == "embedding" else w)[1, 5, ...] = value
    labels, centres = cluster.kmeans(x, 3, weight=w, seed=1)
    assert centres[1].isnan().all() and not centres[[0, 2]].isnan().any()
    assert same_partition(labels[[0, 2]], truth[[0, 2]])
    masks = cluster.kmeans_masks(x, 3, weight=w, seed=1, reference=cluster.masks_from_labels(truth, 3))
    assert masks[1].isnan().all()
    assert torch.equal(masks[[0, 2]], cluster.masks_from_labels(truth[[0, 2]], 3))


def test_a_nan_reference_gives_nan_masks():
    # the order of an item whose reference is NaN is not known: argmax took the NaN total
    x, truth = blobs()
    reference = cluster.masks_from_labels(truth, 3)
    reference[2, 0, 7] = float("nan")
    masks = cluster.kmeans_masks(x, 3, seed=1, reference=reference)
    assert masks[2].isnan().all()
    assert torch.equal(masks[:2], cluster.masks_from_labels(truth[:2], 3))


def test_bad_arguments_raise_one_clear_error():
    x, truth = blobs()
    with pytest.raises(ValueError, match="weight"):  # was torch.multinomial's "probability tensor contains ..."
        w = torch.ones(x.shape[:2])
        w[0, 3] = -1.0
        cluster.kmeans(x, 3, weight=w)
    with pytest.raises(ValueError, match="weight"):  # was a bmm shape error
        cluster.kmeans(x, 3, weight=torch.ones(2, x.shape[1]))
    for k in (0, -1, 2.0):  # an IndexError from amax, a RuntimeError from arange, a TypeError from range
        with pytest.raises(ValueError, match="n_clusters"):
            cluster.kmeans(x, k)
    for bad in (x.long(), torch.complex(x, x)):
        with pytest.raises(TypeError, match="embedding"):
            cluster.kmeans(bad, 3)
    with pytest.raises(ValueError, match="reference"):  # was an IndexError in align_masks
        cluster.kmeans_masks(x, 3, reference=torch.rand(3, 2, x.shape[1]))
    # one weight row for every item broadcasts, as it did
    labels, _ = cluster.kmeans(x, 3, weight=torch.ones(x.shape[1]), seed=1)
    assert same_partition(labels, truth)


def test_an_empty_batch_gives_empty_results():
    x = torch.randn(0, 10, 4)
    labels, centres = cluster.kmeans(x, 2)
    assert labels.shape == (0, 10) and centres.shape == (0, 2, 4)
    masks = cluster.kmeans_masks(x, 2, shape=(2, 5), reference=torch.rand(0, 2, 2, 5))  # was torch.stack([])
    assert masks.shape == (0, 2, 2, 5)


@pytest.mark.parametrize("whiten", [False, True])
def test_an_item_clusters_as_it_would_alone(whiten):
    # Each item of a batch is a segment (or channel) of a recording: its clusters must not
    # depend on the others, or the Separator's k-means sources change with the batch size
    # and a file's with the blocks it is read in. One k-means++ generator for the batch and
    # a batch-wide stopping test made them depend on it.
    x = torch.randn(4, 300, 3, generator=torch.Generator().manual_seed(0))  # no clear clusters
    w = torch.rand(4, 300, generator=torch.Generator().manual_seed(1))
    labels, centres = cluster.kmeans(x, 2, weight=w, seed=3, whiten=whiten)
    for b in range(4):
        alone, alone_centres = cluster.kmeans(x[b:b + 1], 2, weight=w[b:b + 1], seed=3, whiten=whiten)
        assert torch.equal(labels[b], alone[0]), b
        torch.testing.assert_close(centres[b], alone_centres[0], atol=1e-6, rtol=1e-6)
