import math

import pytest
import torch

from chimera import signal
from chimera.models import ModelOutput, SeparationModel, StftConfig, flatten_bins, preset
from chimera.objectives import (
    deep_clustering_loss, deep_lda_loss, whitened_kmeans_loss,
    OBJECTIVES, csa_loss, dc_targets, ideal_binary_labels, msa_loss, objective, permute_sources, pit, pit_from_matrix, si_sdr,
    si_sdr_loss, tpsa_loss, tpsa_target,
)
from chimera.objectives.targets import magnitude_ratio_weights

STFT = StftConfig(sample_rate=8000, n_fft=128, hop_length=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def _tone_and_noise(batch=1, seconds=0.25, sr=8000, seed=0):
    """Two sources that barely overlap in time-frequency: a harmonic tone below 1.2 kHz and
    bursts of noise above 2 kHz."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * sr)
    t = torch.arange(n) / sr
    out = []
    for _ in range(batch):
        f0 = 150 + 100 * torch.rand(1, generator=g).item()
        tone = sum(0.3 / k * torch.sin(2 * math.pi * f0 * k * t) for k in range(1, 5))
        W = torch.fft.rfft(torch.randn(n, generator=g))
        W[: int(2000 * n / sr)] = 0
        bursts = ((t * 8 + torch.rand(1, generator=g)) % 1 < 0.5).float()
        out.append(torch.stack([tone, 0.3 * torch.fft.irfft(W, n) * bursts]))
    return torch.stack(out)


def _specs(x):
    return signal.stft(x, STFT.n_fft, STFT.hop_length, STFT.window_tensor(dtype=x.dtype))


def _oracle_output(sources, masks_from=None):
    """A ModelOutput whose masks are given (default: the ideal complex ratio masks)."""
    mix = sources.sum(1)
    X, S = _specs(mix), _specs(sources)
    masks = S / X.unsqueeze(1) if masks_from is None else masks_from(X, S)
    return ModelOutput(X, None, masks, masks * X.unsqueeze(1), STFT, mix.shape[-1]), mix


# ------------------------------------------------------------------ SI-SDR

def test_si_sdr_hand_computed():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0])
    e = torch.tensor([2.0, -1.0, 0.0, 0.0])  # orthogonal to s: alpha = 1, ||s||² = 30, ||e||² = 5
    assert si_sdr(s + e, s).item() == pytest.approx(10 * math.log10(6.0))
    # alpha = 1, target [1,0,0,0], residual [0,1,1,1]
    assert si_sdr(torch.ones(4), torch.tensor([1.0, 0, 0, 0])).item() == pytest.approx(10 * math.log10(1 / 3))
    # alpha = <est, s>/||s||² = 0.5: target [.5, .5], residual [.5, -.5] -> 0 dB
    assert si_sdr(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(0.0, abs=1e-12)


def test_si_sdr_scale_invariance_and_batching():
    ref, est = torch.randn(3, 2, 500), torch.randn(3, 2, 500)
    est = est + 2 * ref
    base = si_sdr(est, ref)
    assert base.shape == (3, 2)
    torch.testing.assert_close(si_sdr(7.5 * est, ref), base)
    torch.testing.assert_close(si_sdr(est, 0.01 * ref), base)
    torch.testing.assert_close(si_sdr(est[1, 0], ref[1, 0]), base[1, 0])


def test_si_sdr_edge_cases():
    s = torch.randn(100)
    assert si_sdr(s, s).item() == math.inf
    assert si_sdr(4 * s, s).item() == math.inf  # exact scaling (a power of two)
    assert si_sdr(3 * s, s).item() > 120  # float32 rounding of 3·s only
    assert si_sdr(torch.randn(100), torch.zeros(100)).item() == -math.inf  # silent target
    assert si_sdr(torch.zeros(100), s).item() == -math.inf  # silent estimate
    assert si_sdr(torch.zeros(100), torch.zeros(100)).item() == -math.inf  # silent both: not NaN
    bad = s.clone()
    bad[3] = math.nan
    assert math.isnan(si_sdr(bad, s).item()) and math.isnan(si_sdr(s, bad).item())  # a NaN propagates
    x = torch.tensor([1.0, 0.0])
    assert si_sdr(torch.tensor([0.0, 1.0]), x).item() == -math.inf  # orthogonal estimate


def test_si_sdr_zero_mean():
    s = torch.randn(200, dtype=torch.float64)
    s = s - s.mean()
    assert si_sdr(s + 5.0, s, zero_mean=True).item() > 200  # only rounding of the offset is left
    assert si_sdr(s + 5.0, s).item() < 10


def test_si_sdr_loss_is_finite_and_matches_metric():
    ref = torch.randn(2, 300, dtype=torch.float64)
    est = (ref + 0.1 * torch.randn_like(ref)).requires_grad_()
    loss = si_sdr_loss(est, ref, eps=0.0)
    torch.testing.assert_close(loss, -si_sdr(est, ref).mean())
    perfect = ref.clone().requires_grad_()
    silent = torch.zeros_like(ref).requires_grad_()
    for e, r in ((perfect, ref), (est, torch.zeros_like(ref)), (silent, ref)):
        value = si_sdr_loss(e, r)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(e.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_si_sdr_loss_of_half_precision_is_the_float32_loss(dtype):
    """In float16 the energies of a loud signal overflowed (loss inf) and eps = 1e-8 underflowed
    (silent estimate and reference: 0/0 = NaN)."""
    g = torch.Generator().manual_seed(0)
    ref = 10 * torch.randn(2, 8000, generator=g)
    est = ref + 5 * torch.randn(2, 8000, generator=g)
    e, r = est.to(dtype), ref.to(dtype)
    got = si_sdr_loss(e, r)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), si_sdr_loss(e.float(), r.float()), atol=0.05, rtol=0)
    silent = torch.zeros(2, 100, dtype=dtype)
    assert si_sdr_loss(silent, silent).item() == 0.0


def test_si_sdr_loss_refuses_integer_samples():
    """int16 samples were squared in int16 (300² overflowed) and the loss truncated to an int16."""
    pcm = torch.full((1, 100), 300, dtype=torch.int16)
    with pytest.raises(TypeError, match="si_sdr_loss: estimate and reference must be real floating point, got "
                                        "torch.int16 and torch.int16"):
        si_sdr_loss(pcm, pcm)
    assert si_sdr(pcm, pcm).item() == math.inf  # the metric scores them in float64


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objectives_refuse_sources_that_do_not_line_up_with_the_mixture(name):
    """Sources a few samples shorter than the mixture fill the same frames: every objective
    but WA-MISI scored them against the mixture's estimates; a 1-source batch was broadcast
    against both estimates by "si-sdr"."""
    model = SeparationModel(preset("chimerapp", hidden=8, layers=1, stft=STFT))
    sources = torch.randn(2, 2, 800)
    mix = sources.sum(1)
    out = model(mix)
    loss = objective(name)
    assert torch.isfinite(loss(out, mix, sources))
    with pytest.raises(ValueError, match="sources must be waveforms"):
        loss(out, mix, sources[..., :790])
    with pytest.raises(ValueError, match="sources must be waveforms"):
        loss(out, mix, sources[:1])
    with pytest.raises(ValueError, match="the mixture must be"):
        loss(out, mix[..., :790], sources)
    if name not in ("dc", "dcw", "dclda"):  # the DC losses take any number of classes
        with pytest.raises(ValueError, match="2 sources, the batch holds 1"):
            loss(out, mix, sources[:, :1])


# ------------------------------------------------------------------ PIT

def test_pit_finds_the_permutation():
    torch.manual_seed(1)
    targets = torch.randn(4, 3, 200)
    perms = [torch.randperm(3) for _ in range(4)]
    estimates = torch.stack([targets[b, p] for b, p in enumerate(perms)]) + 0.05 * torch.randn(4, 3, 200)
    loss, best = pit(lambda a, b: (a - b).pow(2).mean(-1), estimates, targets)
    for b, p in enumerate(perms):
        # estimates[b, i] = targets[b, p[i]], so target j is matched with estimate p⁻¹[j]
        assert best[b].tolist() == torch.argsort(p).tolist()
    torch.testing.assert_close(permute_sources(estimates, best), targets, atol=0.3, rtol=0)
    assert loss.shape == (4,) and (loss < 0.01).all()


def test_pit_refuses_source_counts_it_cannot_enumerate():
    """12 sources built all 479 M permutations at once (tens of GB: the process was killed);
    0 sources was an IndexError."""
    with pytest.raises(ValueError, match="1 to 10 sources"):
        pit_from_matrix(torch.zeros(2, 0, 0))
    with pytest.raises(ValueError, match="1 to 10 sources"):
        pit_from_matrix(torch.zeros(1, 12, 12))
    loss, perm = pit_from_matrix(torch.tensor([[[3.0]]]))
    assert loss.tolist() == [3.0] and perm.tolist() == [[0]]


def test_pit_from_matrix_minimum_over_all_permutations():
    pairwise = torch.tensor([[[5.0, 1.0, 9.0], [2.0, 7.0, 3.0], [4.0, 8.0, 0.5]]])
    loss, perm = pit_from_matrix(pairwise)
    # target 0 ← estimate 1 (2), target 1 ← estimate 0 (1), target 2 ← estimate 2 (0.5)
    assert perm.tolist() == [[1, 0, 2]]
    assert loss.item() == pytest.approx(3.5 / 3)
    with pytest.raises(ValueError, match="square"):
        pit_from_matrix(torch.zeros(1, 2, 3))


@pytest.mark.parametrize("name", ["msa", "tpsa", "csa", "wa", "si-sdr"])
def test_pit_objective_ignores_source_order(name):
    sources = torch.randn(2, 2, 1200)
    swapped, mix = _oracle_output(sources, lambda X, S: (S / X.unsqueeze(1)).flip(1))
    fixed, pitted = objective(name)(swapped, mix, sources), objective(name, pit=True)(swapped, mix, sources)
    right, _ = _oracle_output(sources)
    assert pitted.item() == pytest.approx(objective(name)(right, mix, sources).item(), abs=1e-4)
    assert fixed.item() > pitted.item() + 0.05


# ------------------------------------------------------------------ MI losses

def test_tpsa_target_definition():
    X = torch.tensor([[[1 + 0j] * 6 + [0j]]])  # (B=1, F=1, T=7)
    S = torch.tensor([[[2j, -1 + 0j, 3 + 0j, 1.5 + 0j, 1 + 1j, 2 * complex(math.cos(2.0), math.sin(2.0)), 1 + 0j]]])
    got = tpsa_target(X, S, gamma=2.0)
    want = torch.tensor([[[[0.0, 0.0, 2.0, 1.5, 1.0, 0.0, 0.0]]]])  # cos(90°)=0, negative→0, 3→γ|X|, silent X→0
    torch.testing.assert_close(got, want)
    assert tpsa_target(X, S, gamma=1.0)[0, 0, 0, 2].item() == pytest.approx(1.0)

    X = torch.randn(2, 9, 11, dtype=torch.complex128)
    S = torch.randn(2, 3, 9, 11, dtype=torch.complex128)
    ref = S.abs() * torch.cos(S.angle() - X.angle().unsqueeze(1))
    ref = torch.minimum(ref.clamp_min(0), 1.5 * X.abs().unsqueeze(1))
    torch.testing.assert_close(tpsa_target(X, S, 1.5), ref)


def test_mi_losses_zero_at_their_targets_and_hand_values():
    X = torch.randn(2, 9, 11, dtype=torch.complex128)
    S = torch.randn(2, 2, 9, 11, dtype=torch.complex128)
    mag = X.abs().unsqueeze(1)
    assert msa_loss(S.abs() / mag, X, S).item() == pytest.approx(0, abs=1e-12)
    assert tpsa_loss(tpsa_target(X, S) / mag, X, S).item() == pytest.approx(0, abs=1e-12)
    assert csa_loss(S / X.unsqueeze(1), X, S).item() == pytest.approx(0, abs=1e-12)
    ones = torch.ones_like(mag).expand(-1, 2, -1, -1)
    l1 = (mag - S.abs()).abs().mean()
    l2 = (mag - S.abs()).pow(2).mean()
    assert msa_loss(ones, X, S).item() == pytest.approx(l1.item())
    assert msa_loss(ones, X, S, norm="l2").item() == pytest.approx(l2.item())
    assert csa_loss(ones, X, S).item() == pytest.approx((X.unsqueeze(1) - S).abs().mean().item())


def test_wa_of_oracle_masks_is_near_zero_and_misi_keeps_it():
    sources = torch.randn(2, 2, 1000, dtype=torch.float64)
    out, mix = _oracle_output(sources)
    assert objective("wa")(out, mix, sources).item() < 1e-6
    assert objective("wa-misi", misi_iters=2)(out, mix, sources).item() < 1e-3


def test_dc_targets_order_matches_embedding_bins():
    B, C, F, T = 1, 2, 5, 4
    S = torch.full((B, C, F, T), 0.1, dtype=torch.complex64)
    S[0, 1, 3, 2] = 5.0  # source 1 dominates only bin (f=3, t=2)
    X = S.sum(1)
    labels, weight = dc_targets(X, S)
    assert labels.shape == (B, T * F) and labels.dtype == torch.long and weight is None
    assert labels.sum().item() == 1 and labels[0, 2 * F + 3].item() == 1
    idx = flatten_bins(torch.arange(F * T).reshape(1, F, T))  # same order as the embedding
    assert idx[0, 2 * F + 3].item() == 3 * T + 2
    _, w = dc_targets(X, S, "mr")
    assert w.shape == (B, T * F) and w[0, 2 * F + 3] == w.max()
    with pytest.raises(ValueError, match="weights"):
        dc_targets(X, S, "bogus")


def test_dc_objectives_are_the_named_losses():
    """"dc" is the classic loss, "dcw" the whitened k-means loss (DC-W), "dclda" deep LDA, each on the ideal
    binary labels with its weights: the names mean what the papers mean."""
    model = SeparationModel(preset("chimerapp", hidden=8, layers=1, stft=STFT))
    sources = torch.randn(2, 2, 1000)
    mix = sources.sum(1)
    out = model(mix)
    specs = signal.stft(sources, STFT.n_fft, STFT.hop_length, STFT.window_tensor("cpu", sources.dtype), center=True)
    labels, w = dc_targets(out.mixture_spec, specs, "mr")
    torch.testing.assert_close(objective("dcw")(out, mix, sources), whitened_kmeans_loss(out.embedding, labels, w))
    torch.testing.assert_close(objective("dc", weights="mr")(out, mix, sources),
                               deep_clustering_loss(out.embedding, labels, w))
    torch.testing.assert_close(objective("dc")(out, mix, sources), deep_clustering_loss(out.embedding, labels))
    assert not torch.allclose(objective("dcw")(out, mix, sources), objective("dc", weights="mr")(out, mix, sources))
    # "dclda": deep LDA (torch-chimera's DC term), magnitude-ratio weights by default
    torch.testing.assert_close(objective("dclda")(out, mix, sources), deep_lda_loss(out.embedding, labels, w))
    torch.testing.assert_close(objective("chimera", dc="dclda", mi="msa", alpha=0.975)(out, mix, sources),
                               0.975 * deep_lda_loss(out.embedding, labels, w) + 0.025 * objective("msa")(out, mix, sources))


def test_chimera_is_the_alpha_combination():
    model = SeparationModel(preset("chimerapp", hidden=8, layers=1, stft=STFT))
    sources = torch.randn(2, 2, 1000)
    mix = sources.sum(1)
    out = model(mix)
    dc, mi = objective("dcw")(out, mix, sources), objective("tpsa", norm="l2")(out, mix, sources)
    got = objective("chimera", alpha=0.9, mi="tpsa", norm="l2")(out, mix, sources)
    torch.testing.assert_close(got, 0.9 * dc + 0.1 * mi)
    chim = objective("chimera", alpha=0.9, mi="tpsa", norm="l2")
    chim(out, mix, sources)
    torch.testing.assert_close(chim.last["dc"], dc.detach())
    torch.testing.assert_close(chim.last["mi"], mi.detach())
    va = objective("chimera", alpha=0.5, dc_weights="va")
    assert va.dc.weights == "va" and va.options["dc_weights"] == "va"
    want = 0.5 * objective("dcw", weights="va")(out, mix, sources) + 0.5 * objective("tpsa")(out, mix, sources)
    torch.testing.assert_close(va(out, mix, sources), want)
    assert objective("chimera").alpha == 0.975
    torch.testing.assert_close(objective("chimera", alpha=1.0)(out, mix, sources), dc)


def test_chimera_takes_one_stft_of_the_sources(monkeypatch):
    # The DC and MI terms share the source spectrograms of a batch (one STFT, not one per term).
    model = SeparationModel(preset("chimerapp", hidden=8, layers=1, stft=STFT))
    sources = torch.randn(2, 2, 1000)
    out = model(sources.sum(1))
    calls, real = [], signal.stft
    monkeypatch.setattr(signal, "stft", lambda x, *a, **k: calls.append(tuple(x.shape)) or real(x, *a, **k))
    objective("chimera", alpha=0.5)(out, sources.sum(1), sources)
    assert calls == [(2, 2, 1000)]


def test_losses_is_the_objectives_api_under_its_public_name():
    from chimera import losses, objectives

    for name in losses.__all__:
        assert getattr(losses, name) is getattr(objectives, name), name


def test_objective_registry_errors():
    with pytest.raises(ValueError, match="unknown objective"):
        objective("mse")
    with pytest.raises(ValueError, match="unknown option"):
        objective("wa", norm="l2")
    with pytest.raises(ValueError, match="norm"):
        objective("msa", norm="l3")
    with pytest.raises(ValueError, match="alpha"):
        objective("chimera", alpha=1.5)
    with pytest.raises(ValueError, match="mi must be"):
        objective("chimera", mi="dc")
    dc_only = SeparationModel(preset("dc", hidden=8, layers=1, stft=STFT))
    sources = torch.randn(1, 2, 800)
    with pytest.raises(ValueError, match="mask head"):
        objective("msa")(dc_only(sources.sum(1)), sources.sum(1), sources)


@pytest.mark.parametrize("name, options, match", [
    ("msa", {"pit": "no"}, "pit must be true or false"),  # was accepted, and turned PIT on
    ("chimera", {"pit": 1}, "pit must be true or false"),
    ("tpsa", {"gamma": "2"}, "gamma must be a positive number"),  # was "'>' not supported between ..."
    ("chimera", {"alpha": "0.5"}, "alpha must be a number in"),
    ("chimera", {"alpha": True}, "alpha must be a number in"),
    ("wa-misi", {"misi_iters": 2.5}, "misi_iters must be an integer"),  # was a TypeError at the first batch
    ("wa-misi", {"misi_iters": True}, "misi_iters must be an integer"),
    ("si-sdr", {"eps": -1.0}, "eps must be a finite number >= 0"),  # was accepted: a wrong (or NaN) loss
    ("si-sdr", {"eps": math.nan}, "eps must be a finite number >= 0"),
    ("si-sdr", {"eps": "1e-8"}, "eps must be a finite number >= 0"),
])
def test_objective_options_of_the_wrong_type_or_range_are_refused(name, options, match):
    with pytest.raises(ValueError, match=f"objective '[a-z-]+': {match}"):
        objective(name, **options)


def test_objective_options_of_the_right_type_are_kept():
    assert objective("chimera", alpha=1, gamma=3, pit=True).options["gamma"] == 3
    assert objective("wa-misi", misi_iters=0).options["misi_iters"] == 0
    assert objective("si-sdr", eps=0).options["eps"] == 0


@pytest.mark.parametrize("loss", [deep_clustering_loss, whitened_kmeans_loss, deep_lda_loss])
def test_dc_losses_of_float16_embeddings_take_weights_of_any_scale(loss):
    """The weights were cast to float16 as they came: magnitudes above 65504 became inf and the
    loss NaN. Each loss is invariant to an item's weight scale; against float64 on the same
    rounded embeddings, an all-zero item still 0."""
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(3, 400, 6, generator=g), dim=-1).half()
    labels = torch.randint(0, 2, (3, 400), generator=g)
    weight = 1e6 * torch.rand(3, 400, generator=g, dtype=torch.float64)
    weight[2] = 0
    got = loss(v, labels, weight, reduction="none")
    want = loss(v.double(), labels, weight, reduction="none")
    assert got.dtype == torch.float16 and got[2].item() == 0
    torch.testing.assert_close(got.double(), want, rtol=4 * torch.finfo(torch.float16).eps, atol=0)


def test_magnitude_ratio_weights_keep_a_nan():
    """A mixture holding a NaN had all-zero magnitude-ratio weights, so its DC loss was 0 (the
    rule for a silent item): a corrupt item looked perfect. A silent one still weighs 0."""
    mag = torch.rand(3, 5, 4, dtype=torch.float64)
    mag[0, 2, 1] = math.nan
    mag[2] = 0
    w = magnitude_ratio_weights(mag)
    assert w[0].isnan().all() and (w[2] == 0).all()
    torch.testing.assert_close(w[1], mag[1].flatten() / mag[1].sum())
    v = torch.nn.functional.normalize(torch.randn(3, 20, 4, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, 2, (3, 20))
    for loss in (deep_clustering_loss, whitened_kmeans_loss, deep_lda_loss):
        value = loss(v, labels, w, reduction="none")
        assert value[0].isnan() and value[1].isfinite() and value[2] == 0, loss.__name__


# ------------------------------------------------------------------ training lowers every objective

@pytest.mark.parametrize("name", OBJECTIVES)
def test_a_few_steps_lower_the_objective(name):
    torch.manual_seed(0)
    model = SeparationModel(preset("chimerapp", hidden=16, layers=1, stft=STFT))
    sources = _tone_and_noise(batch=2)
    mix = sources.sum(1)
    loss_fn = objective(name, misi_iters=2) if name == "wa-misi" else objective(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(24):
        loss = loss_fn(model(mix), mix, sources)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    # DC-W = D - tr(...) >= D - C: what must fall is the excess over that floor.
    D, C = model.config.embedding_dim, 2
    floor = {"dcw": D - C, "chimera": objective("chimera").alpha * (D - C)}.get(name, 0.0)
    assert sum(losses[-3:]) / 3 - floor < 0.9 * (losses[0] - floor), losses


def test_losses_gradcheck_float64():
    X = torch.randn(1, 4, 5, dtype=torch.complex128)
    S = torch.randn(1, 2, 4, 5, dtype=torch.complex128)
    m = torch.rand(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    mc = torch.randn(1, 2, 4, 5, dtype=torch.complex128, requires_grad=True)
    for norm in ("l1", "l2"):
        assert torch.autograd.gradcheck(lambda m: tpsa_loss(m, X, S, norm=norm), (m,))
        assert torch.autograd.gradcheck(lambda m: msa_loss(m, X, S, norm=norm), (m,))
        assert torch.autograd.gradcheck(lambda m: csa_loss(m, X, S, norm=norm, pit=True), (mc,))
    est = torch.randn(2, 3, 40, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(2, 3, 40, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda e: si_sdr_loss(e, ref, zero_mean=True), (est,))


@pytest.mark.parametrize("n_sources", [1, 2, 3, 4])
def test_ideal_binary_labels_are_argmax(n_sources):
    # Against torch's argmax, with ties (it takes the first) and NaNs (the first NaN wins).
    g = torch.Generator().manual_seed(n_sources)
    mags = torch.randint(0, 4, (3, n_sources, 5, 7), generator=g).double()   # many ties
    mags[0, -1, 0, :3] = float("nan")
    mags[1, :, 1, 2] = float("nan")
    labels = ideal_binary_labels(mags)
    assert labels.dtype == torch.int64 and labels.shape == (3, 35)
    assert torch.equal(labels, mags.argmax(1).reshape(3, -1))
    spec = torch.randn(2, n_sources, 6, 4, dtype=torch.complex64, generator=g)
    assert torch.equal(ideal_binary_labels(spec), spec.abs().argmax(1).reshape(2, -1))
