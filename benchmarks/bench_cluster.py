"""k-means on deep-clustering embeddings (chimera.cluster.kmeans), what `--method kmeans`
runs on every segment: its stopping rule (centres still, relative to the spread) against
the same iterations run until the labels repeat (tol=0, capped at 50 iterations).

Full shape (CHIMERA_BENCH_FULL=1): one 10-second stereo segment of the bundled model, 2
channels x 1,251 frames x 257 bins, D = 20, two clusters, weights as the activity weights
give. Default: 200 frames. The data are two overlapping unit-norm blobs: they settle in
about 26 iterations, while real embeddings never do (a few boundary bins swap back and
forth), so the speed-up on a song is larger than here (benchmarks/RESULTS.md). A second
benchmark reports the resident memory k-means adds over its input, beside the size of the
embeddings (it used to add one copy of them, from `2 * x @ c` in the k-means++ seeding).
"""
import pytest
import torch

from chimera.cluster import kmeans

from benchutil import FULL, peak_rss_delta_mb, record_speedup

FRAMES = 1251 if FULL else 200
BATCH, BINS, DIM = 2, 257, 20
ROUNDS = 5 if FULL else 10


def make_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    n = FRAMES * BINS
    centres = torch.randn(BATCH, 2, DIM, generator=g)
    truth = torch.randint(0, 2, (BATCH, n), generator=g)
    points = centres.gather(1, truth[..., None].expand(-1, -1, DIM)) * 0.3 + torch.randn(BATCH, n, DIM, generator=g)
    return torch.nn.functional.normalize(points, dim=-1), torch.rand(BATCH, n, generator=g)


@pytest.mark.parametrize("rule", ["relative-tol", "labels-repeat"])
def test_kmeans(benchmark, rule):
    x, w = make_inputs()
    benchmark.group = f"k-means {BATCH}x{FRAMES}x{BINS} D={DIM}"
    tol = 1e-4 if rule == "relative-tol" else 0.0
    labels, _ = benchmark.pedantic(kmeans, args=(x, 2), kwargs=dict(weight=w, tol=tol), rounds=ROUNDS,
                                   warmup_rounds=1)
    if rule == "relative-tol":
        exact, _ = kmeans(x, 2, weight=w, tol=0.0)
        assert (labels != exact).float().mean() < 0.01
        record_speedup(benchmark, lambda: kmeans(x, 2, weight=w), lambda: kmeans(x, 2, weight=w, tol=0.0),
                       "the same k-means run until the labels repeat", ROUNDS)


def test_kmeans_peak_memory(benchmark):
    benchmark.group = f"k-means peak RSS {BATCH}x{FRAMES}x{BINS} D={DIM} (MiB in extra_info)"
    setup = """
        import bench_cluster as b
        from chimera.cluster import kmeans
        x, w = b.make_inputs()
        kmeans(x[:, :1000], 2, weight=w[:, :1000])
    """
    peak = benchmark.pedantic(lambda: peak_rss_delta_mb(setup, "kmeans(x, 2, weight=w)"), rounds=1, iterations=1)
    embeddings = BATCH * FRAMES * BINS * DIM * 4 / 2**20
    benchmark.extra_info.update(extra_peak_rss_mib=round(peak, 1), embeddings_mib=round(embeddings, 1))
    print(f"\nk-means: extra peak RSS {peak:.1f} MiB over embeddings of {embeddings:.1f} MiB")
