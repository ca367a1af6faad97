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


def test_masks_from_labels():
    labels = torch.tensor([[0, 1, 1, 0, 2, 2]])
    masks = cluster.masks_from_labels(labels, 3, shape=(2, 3))
    assert masks.shape == (1, 3, 2, 3)
    assert (masks.sum(1) == 1).all()
    assert masks[0, 1].flatten().tolist() == [0, 1, 1, 0, 0, 0]


def test_too_few_points():
    with pytest.raises(ValueError, match="clusters"):
        cluster.kmeans(torch.randn(1, 2, 3), 3)
