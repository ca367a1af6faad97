"""Multichannel Wiener filter: mixture consistency, the single-channel power-ratio case, and
that it recovers a panned source better than per-channel masks."""
import numpy as np
import pytest
import torch

from chimera.wiener import multichannel_wiener


def _spec(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                         torch.randn(*shape, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_sources_add_up_to_the_mixture(channels):
    mix = _spec(2, channels, 17, 40)
    masks = torch.rand(2, channels, 3, 17, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = multichannel_wiener(masks * mix.unsqueeze(2), mix, iterations=2)
    assert out.shape == (2, channels, 3, 17, 40) and out.dtype == torch.complex128
    torch.testing.assert_close(out.sum(2), mix, rtol=1e-6, atol=1e-6)


def test_one_channel_is_the_power_ratio_mask():
    mix = _spec(1, 9, 30)
    masks = torch.rand(1, 2, 9, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = multichannel_wiener(masks * mix.unsqueeze(1), mix, iterations=1)
    power = (masks * mix.abs().unsqueeze(1)).square()
    expect = power / power.sum(1, keepdim=True) * mix.unsqueeze(1)
    # equal up to the filter's ridge (1e-9 of the mean power), felt only in the weakest bins
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exponent", [0.5, 0.75, 2.0])
def test_exponent_weighs_the_sources_by_their_power_to_it(exponent):
    # One channel: the shares are v_j^p / sum_k v_k^p (p = 0.5: magnitude ratios); the sources
    # still add up to the mixture, with two channels too.
    mix = _spec(1, 9, 30)
    masks = torch.rand(1, 2, 9, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = multichannel_wiener(masks * mix.unsqueeze(1), mix, iterations=1, exponent=exponent)
    power = (masks * mix.abs().unsqueeze(1)).square().pow(exponent)
    expect = power / power.sum(1, keepdim=True) * mix.unsqueeze(1)
    # up to the ridge (1e-9 of the mean of v^p), which p = 2 makes felt in the weakest bins
    audible = power.sum(1, keepdim=True) > 1e-3 * power.sum(1).mean()
    assert audible.float().mean() > 0.8
    torch.testing.assert_close(out[audible.expand_as(out)], expect[audible.expand_as(out)], rtol=1e-5, atol=1e-5)
    stereo = _spec(2, 17, 40)
    est = torch.rand(2, 3, 17, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * stereo.unsqueeze(1)
    out = multichannel_wiener(est, stereo, iterations=2, exponent=exponent)
    if exponent <= 1:  # above 1, v^p spans more decibels and the ridge is felt in the weakest bins
        torch.testing.assert_close(out.sum(1), stereo, rtol=1e-6, atol=1e-6)
    assert (out - multichannel_wiener(est, stereo, iterations=2)).abs().max() > 1e-3  # not the power filter
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="exponent"):
            multichannel_wiener(est, stereo, 1, exponent=bad)


def test_zero_iterations_and_silence_and_bad_shapes():
    est = _spec(2, 2, 5, 6).to(torch.complex64)
    mix = est.sum(1)
    assert multichannel_wiener(est, mix, 0) is est
    out = multichannel_wiener(est, mix, 1)
    assert out.dtype == torch.complex64
    silent = multichannel_wiener(torch.zeros(2, 2, 5, 6, dtype=torch.complex64),
                                 torch.zeros(2, 5, 6, dtype=torch.complex64), 1)
    assert torch.isfinite(torch.view_as_real(silent)).all() and not silent.abs().any()
    with pytest.raises(ValueError, match="do not match"):
        multichannel_wiener(est, mix[..., :3], 1)
    with pytest.raises(ValueError, match=">= 0"):
        multichannel_wiener(est, mix, -1)


def test_recovers_a_panned_source_better_than_per_channel_masks():
    # A source panned hard-left-of-centre (rank-one spatial image) in a diffuse
    # (independent per channel) background with the same power; masks from noisy powers.
    F, T = 64, 400
    g = torch.Generator().manual_seed(3)
    voice = _spec(F, T, seed=4) * (torch.rand(F, T, generator=g, dtype=torch.float64) < 0.3)
    pan = torch.tensor([0.9, 0.436], dtype=torch.complex128)
    vocals = pan[:, None, None] * voice                               # (2, F, T)
    backing = _spec(2, F, T, seed=5) * 0.6
    mix = vocals + backing
    noise = 1 + 0.5 * torch.rand(2, 2, F, T, generator=g, dtype=torch.float64)
    pv, pb = vocals.abs().square() * noise[0], backing.abs().square() * noise[1]
    masks = torch.stack([pv / (pv + pb), pb / (pv + pb)], 1).sqrt()   # (2, 2, F, T)
    est = masks * mix.unsqueeze(1)

    def err(y):
        return float((y[:, 0] - vocals).abs().square().sum() / vocals.abs().square().sum())

    refined = multichannel_wiener(est, mix, 1)
    assert err(refined) < 0.8 * err(est), (err(refined), err(est))
    assert np.isfinite(err(multichannel_wiener(est, mix, 3)))


def test_separator_with_wiener_keeps_the_mixture_and_changes_stereo_estimates(one_thread):
    from test_separate import noise, tiny_model
    from chimera.separate import Separator

    model = tiny_model()
    x = noise(2, 8000 * 3, seed=7)
    x[1] = 0.7 * x[0] + 0.3 * x[1]  # correlated channels, as in a real stereo mix
    plain = Separator(model, segment=5.0, device="cpu", wiener_iters=0).separate(x, 8000)
    wiener = Separator(model, segment=5.0, device="cpu", wiener_iters=1).separate(x, 8000)
    assert wiener.shape == plain.shape == (2, 2, x.shape[1])
    # doubled-sigmoid masks need not add up to one; the filtered sources do (across segment
    # joins too: test_separate.py::test_segment_joins_are_exact_when_the_masks_add_up_to_one)
    torch.testing.assert_close(wiener.sum(0), torch.from_numpy(x), atol=1e-5, rtol=0)  # (C, channels, L)
    assert (wiener - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="wiener_iters"):
        Separator(model, device="cpu", wiener_iters=-1)


def _naive_wiener(est, mix, ridge_rel=1e-9, floor=1e-30):
    """One update of the whole spectrogram at once with torch.linalg.solve (float64): the
    filter's definition, without its blocks or closed forms."""
    y = est.movedim(-4, -1)                                          # (..., C, F, T, I)
    v = y.abs().square().mean(-1)
    cov = torch.einsum("...cfti,...cftk->...cfik", y, y.conj()) / v.sum(-1)[..., None, None]
    mix_cov = torch.einsum("...cft,...cfik->...ftik", v.to(cov.dtype), cov)
    n_ch, F, T = mix.shape[-3:]
    power = torch.einsum("...cft,...cfii->...", v, cov.real)
    ridge = ridge_rel * power / (F * T * n_ch) + floor
    mix_cov = mix_cov + ridge[..., None, None, None, None] * torch.eye(n_ch, dtype=cov.dtype)
    z = torch.linalg.solve(mix_cov, mix.movedim(-3, -1).unsqueeze(-1)).squeeze(-1)  # (..., F, T, I)
    y = torch.einsum("...cft,...cfik,...ftk->...cfti", v.to(cov.dtype), cov, z)
    # each source's share of the ridge, so that the sources add up to the mixture
    share = v / v.sum(-3, keepdim=True) * ridge[..., None, None, None]
    return (y + share[..., None] * z.unsqueeze(-4)).movedim(-1, -4)


@pytest.mark.parametrize("channels", [2, 3])
@pytest.mark.parametrize("block_bins", [1, 7, 32])
def test_one_iteration_is_the_filter_of_its_definition(channels, block_bins):
    # Stereo takes the closed-form 2 x 2 path, three channels the general one; both, over
    # any block split, against the whole-spectrogram solve. A hard-panned source makes some
    # covariances nearly singular (what the ridge is for).
    mix = _spec(2, channels, 45, 33, seed=6)
    masks = torch.rand(2, channels, 3, 45, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    est = masks * mix.unsqueeze(2)
    est[:, 1:, 0] *= 1e-4
    expect = _naive_wiener(est, mix)
    out = multichannel_wiener(est, mix, 1, block_bins=block_bins)
    torch.testing.assert_close(out, expect, rtol=1e-9, atol=1e-9)
    inplace = est.clone()
    assert multichannel_wiener(inplace, mix, 1, block_bins=block_bins, inplace=True) is inplace
    torch.testing.assert_close(inplace, expect, rtol=1e-9, atol=1e-9)


def test_bad_arguments_raise_one_clear_error():
    # A negative block_bins ran no block and returned torch.empty_like (uninitialised
    # memory); 0 failed inside range(); real spectra silently lost their imaginary part.
    est, mix = _spec(2, 3, 5, 6), _spec(2, 5, 6)
    for bins in (0, -1):
        with pytest.raises(ValueError, match="block_bins"):
            multichannel_wiener(est, mix, 1, block_bins=bins)
    with pytest.raises(TypeError, match="complex"):
        multichannel_wiener(est.real, mix, 1)
    with pytest.raises(TypeError, match="complex"):
        multichannel_wiener(est, mix.real, 1)
    with pytest.raises(ValueError, match="iterations"):
        multichannel_wiener(est, mix, 1.5)


@pytest.mark.parametrize("shape", [(2, 3, 0, 6), (2, 3, 5, 0), (0, 2, 3, 5, 6)])
def test_empty_spectrograms_give_empty_results(shape):
    # no bins at all divided the ridge's power by F * T * I = 0 (a ZeroDivisionError)
    est = _spec(*shape)
    mix = est.sum(-3)
    for iterations in (1, 2):
        out = multichannel_wiener(est, mix, iterations)
        assert out.shape == est.shape and out.dtype == est.dtype


@pytest.mark.parametrize("channels,sources,frames", [(8, 2, 2), (16, 2, 3), (4, 1, 2), (2, 1, 1), (3, 2, 1)])
def test_sources_add_up_where_no_source_model_spans_the_mixture(channels, sources, frames):
    # More channels than the sources' spatial models span (a segment with few frames of
    # signal: a 16-channel input of 30 ms; or a single source): the filter's ridge then
    # took the mixture's remaining directions out of every source, and a 16-channel
    # separation missed its input by -32 dB, a 4-channel one with one source by -13 dB.
    mix = _spec(1, channels, 5, frames, seed=3)
    masks = torch.rand(1, channels, sources, 5, frames, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(4))
    for exponent in (1.0, 0.5):
        out = multichannel_wiener(masks * mix.unsqueeze(2), mix, iterations=1, exponent=exponent)
        torch.testing.assert_close(out.sum(2), mix, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_a_very_quiet_mixture_still_adds_up(channels):
    # the ridge's absolute floor (for silent segments) outweighed every source of a mixture
    # around 1e-16: the sources came out as zeros
    mix = _spec(2, channels, 9, 20, seed=5) * 1e-17
    masks = torch.rand(2, channels, 2, 9, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    out = multichannel_wiener(masks * mix.unsqueeze(2), mix, iterations=1)
    torch.testing.assert_close(out.sum(2), mix, rtol=1e-6, atol=1e-22)
