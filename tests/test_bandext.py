"""The band above the model's Nyquist frequency (chimera.bandext): split among the sources by
their share of the model's top band, so that the outputs carry the input's whole band and
still add up to it; streamed in bounded memory, whatever the block sizes."""
import numpy as np
import pytest
import torch

from chimera import signal
from chimera.audio import resample
from chimera.bandext import band_weights, needed
from chimera.models import StftConfig
from chimera.separate import Separator
from chimera.stream import SegmentPlan, SeparationStream
from test_separate import noise as white
from test_separate import tiny_model

STFT = StftConfig(sample_rate=8000, n_fft=256, hop_length=64, window="sqrt_hann")


def band_power(y, rate, lo, hi=None):
    """Energy of `y` (..., L) between lo and hi Hz."""
    spec = np.fft.rfft(np.asarray(y, np.float64), axis=-1)
    f = np.fft.rfftfreq(np.shape(y)[-1], 1 / rate)
    keep = (f >= lo) & (f < (hi or np.inf))
    return float((np.abs(spec[..., keep]) ** 2).sum())


def rel_db(err, ref):
    return 10 * np.log10(max(float((np.asarray(err, np.float64) ** 2).sum()), 1e-30)
                         / float((np.asarray(ref, np.float64) ** 2).sum()))


def test_band_weights_are_each_sources_share_of_the_top_band_power():
    g = torch.Generator().manual_seed(0)
    spec = torch.randn(2, 3, 129, 7, dtype=torch.complex64, generator=g)
    spec[..., 5] = 0  # a frame silent in every source: an even split
    w = band_weights(spec, 256, band=(0.5, 1.0))
    power = (spec[..., 64:129, :].abs() ** 2).sum(-2).double()
    want = power / power.sum(-2, keepdim=True)
    want[..., 5] = 1 / 3
    torch.testing.assert_close(w.double(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w.sum(-2), torch.ones(2, 7))


def test_band_weights_propagate_nan():
    # A NaN spectrum counted as a silent band: an even split, as if nothing were wrong.
    spec = torch.ones(2, 3, 129, 4, dtype=torch.complex64)
    spec[0, 1, 100, 2] = float("nan")
    w = band_weights(spec, 256)
    assert w[0, :, 2].isnan().all()
    nan = w.isnan()
    nan[0, :, 2] = False
    assert not nan.any()
    torch.testing.assert_close(w[1], torch.full((3, 4), 1 / 3))


def test_needed_when_the_input_is_resampled_and_when_asked():
    assert needed("split", 44100, 16000, 44100)
    assert needed("split", 8000, 16000, 8000)  # the resamplers' transitions, given back
    assert not needed("drop", 44100, 16000, 44100)
    assert not needed("split", 16000, 16000, 16000)
    with pytest.raises(ValueError, match="high_band"):
        needed("keep", 44100, 16000, 44100)


@pytest.mark.parametrize("wiener", [0, 1])
def test_sources_carry_the_whole_band_and_add_up_to_the_input(wiener):
    # masks that add up to one (softmax, or after the Wiener filter): the sources add up to
    # the model-rate mixture, and the split high band to the rest of the input
    model = tiny_model(name="chimera" if wiener == 0 else "chimerapp")
    x = white(2, 44100 * 3 + 77, seed=1)
    split = Separator(model, segment=1.0, overlap=0.25, device="cpu", wiener_iters=wiener).separate(x, 44100)
    drop = Separator(model, segment=1.0, overlap=0.25, device="cpu", wiener_iters=wiener,
                     high_band="drop").separate(x, 44100)
    assert split.shape == drop.shape == (2, 2, x.shape[1])
    assert rel_db(split.sum(0).numpy() - x, x) < -60
    high = band_power(x, 44100, 4200)  # above the 8 kHz model's band (and its resampler's transition)
    assert band_power(split.sum(0).numpy(), 44100, 4200) == pytest.approx(high, rel=1e-3)
    assert band_power(drop.numpy(), 44100, 4200) < 1e-6 * high
    # what split adds is the residual of the resampling path, whole
    residual = x - resample(resample(x.T, 44100, 8000), 8000, 44100).T
    assert rel_db((split - drop).sum(0).numpy() - residual, residual) < -60


@pytest.mark.parametrize("rate", [6000, 5512])
def test_an_input_below_the_models_rate_comes_back_whole(rate):
    # the 8 kHz model on a 6 kHz input: up and back down loses the top of the input's band
    # in the resamplers' transitions; the split gives that residual back, so the sources add
    # up to the input (white noise: that band holds its share of the energy)
    model = tiny_model(name="chimerapp")
    x = white(2, rate * 3 + 11, seed=2)
    split = Separator(model, segment=1.0, overlap=0.25, device="cpu").separate(x, rate)
    drop = Separator(model, segment=1.0, overlap=0.25, device="cpu", high_band="drop").separate(x, rate)
    assert split.shape == drop.shape == (2, 2, x.shape[1])
    assert rel_db(split.sum(0).numpy() - x, x) < -60
    residual = x - resample(resample(x.T, rate, 8000), 8000, rate).T
    assert rel_db(residual, x) > -30  # what the round trip loses is not negligible
    assert rel_db((split - drop).sum(0).numpy() - residual, residual) < -60


def top_band_owner(batch, channels):
    """Fake source spectra: a frame goes to source 0 when the top octave of the model's band
    holds at least a tenth of its power, else to source 1."""
    win = STFT.window_tensor(dtype=batch.dtype)
    spec = signal.stft(batch, STFT.n_fft, STFT.hop_length, win)          # (B, F, T)
    power = spec.abs().square()
    share = power[:, 64:, :].sum(1) / power.sum(1).clamp_min(1e-20)       # (B, T)
    first = (share > 0.1).to(spec.real.dtype)
    masks = torch.stack([first, 1 - first], 1).unsqueeze(2)               # (B, 2, 1, T)
    return masks * spec.unsqueeze(1)


def lowpass_noise(n, rate, cutoff, seed):
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    spec[np.fft.rfftfreq(n, 1 / rate) > cutoff] = 0
    return np.fft.irfft(spec, n)


def highpass_noise(n, rate, cutoff, seed):
    return np.random.default_rng(seed).standard_normal(n) - lowpass_noise(n, rate, cutoff, seed)


def run_stream(x, rate, blocks, out_rate=None, high_band="split", segment=1.0, overlap=0.25):
    plan = SegmentPlan.from_seconds(STFT, segment, overlap, batch=2)
    stream = SeparationStream(top_band_owner, plan, STFT, 2, x.shape[0], rate, x.shape[1], out_rate=out_rate,
                              high_band=high_band)
    parts, peak, start = [], 0, 0
    for size in blocks:
        parts += list(stream.push(x[:, start:start + size].T))
        start += size
        if stream._ext is not None:
            ext = stream._ext  # what it keeps, in output-rate samples: the residual, and the frames' weights
            frames = ext._w.shape[0] * STFT.hop_length * stream.out_rate / STFT.sample_rate
            peak = max(peak, ext._rq.shape[0] + ext._xq.shape[0], frames)
    parts += list(stream.push(x[:, start:].T)) + list(stream.finish())
    return np.concatenate(parts).transpose(2, 1, 0), peak  # (C, channels, L)


def test_the_high_band_follows_the_source_that_holds_the_top_of_the_models_band():
    rate, half = 44100, 44100 * 2
    # first half: noise over the whole band (source 0 holds the top octave of the model's
    # band); second half: noise below 2 kHz (source 1 holds that octave, though it is near
    # silent) plus noise above 5 kHz
    first = lowpass_noise(half, rate, 20000, 1)
    second = lowpass_noise(half, rate, 1500, 2) + 0.3 * highpass_noise(half, rate, 5000, 3)
    x = (0.05 * np.concatenate([first, second])[None]).astype(np.float32)
    y, _ = run_stream(x, rate, [4410] * 30)
    edge = rate // 4  # away from the change of owner and its interpolation
    a, b = slice(0, half - edge), slice(half + edge, 2 * half)
    hi = 4500
    assert band_power(y[1, 0, a], rate, hi) < 1e-3 * band_power(x[0, a], rate, hi)
    assert band_power(y[0, 0, b], rate, hi) < 1e-3 * band_power(x[0, b], rate, hi)
    assert band_power(y[0, 0, a], rate, hi) == pytest.approx(band_power(x[0, a], rate, hi), rel=0.02)
    assert band_power(y[1, 0, b], rate, hi) == pytest.approx(band_power(x[0, b], rate, hi), rel=0.02)


@pytest.mark.parametrize("out_rate", [None, 48000])
def test_blocks_do_not_matter_and_memory_does_not_grow(out_rate):
    rate = 44100
    x = white(2, rate * 12 + 5, seed=7)
    one, _ = run_stream(x, rate, [x.shape[1]], out_rate=out_rate)
    small, peak = run_stream(x, rate, [1000] * 500, out_rate=out_rate)
    np.testing.assert_allclose(small, one, atol=1e-6, rtol=0)
    # what the split keeps waits for one segment of sources at most, not for the whole input
    assert peak < 2.5 * rate
    ref = x if out_rate is None else resample(x.T, rate, out_rate).T
    n = min(one.shape[-1], ref.shape[-1])  # the stream rounds the length up, soxr down
    assert abs(one.shape[-1] - ref.shape[-1]) <= 1
    assert rel_db(one.sum(0)[:, :n] - ref[:, :n], ref) < -50


def test_separator_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="high_band"):
        Separator(tiny_model(), device="cpu", high_band="accompaniment")


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_every_length_adds_up_to_the_input_to_its_last_sample(rate):
    # The resampler down to the model's rate rounds its length, which could leave the model's
    # signal a sample or two short of the input's duration: the last output samples then
    # lost their share of the input (a third of all lengths; a 1-sample input came back as
    # zeros). Lengths from one sample to one segment and a bit, each must add up.
    model = tiny_model(name="chimerapp")
    sep = Separator(model, segment=1.0, overlap=0.25, device="cpu")
    for n in [1, 2, 3, 5, 100, 257, *range(rate + 1, rate + 8)]:
        x = white(2, n, seed=n)
        y = sep.separate(x, rate).numpy()
        assert y.shape == (2, 2, n)
        assert rel_db(y.sum(0) - x, x) < -60, n
        assert np.abs(y.sum(0) - x)[:, -1].max() < 1e-4 * np.abs(x).max(), n


def test_a_reused_input_buffer_does_not_change_the_output():
    # A caller that reads each block into the same buffer (as audio callbacks do): the split
    # kept a view of the block's tail (the input waiting for the model's side of the residual),
    # and the next read overwrote it.
    rate, size = 44100, 1000
    x = white(2, rate * 3 + 5, seed=7)
    plan = SegmentPlan.from_seconds(STFT, 1.0, 0.25, batch=2)

    def run(reuse):
        stream = SeparationStream(top_band_owner, plan, STFT, 2, 2, rate, x.shape[1])
        buf, parts = np.empty((size, 2), np.float32), []
        for start in range(0, x.shape[1], size):
            block = np.ascontiguousarray(x[:, start:start + size].T)
            if reuse and block.shape[0] == size:
                buf[:] = block
                block = buf
            parts += list(stream.push(block))
            buf[:] = np.nan  # the caller's next read
        return np.concatenate(parts + list(stream.finish()))

    np.testing.assert_array_equal(run(reuse=True), run(reuse=False))


def test_the_stream_refuses_what_it_would_get_wrong():
    # complex blocks lost their imaginary part (a warning), integer PCM was taken as floats
    # (1000 for 1000 / 32768), samples past `length` were dropped and a stream finished short
    # was padded with separated silence, all without a word
    plan = SegmentPlan.from_seconds(STFT, 1.0, 0.25, batch=2)

    def stream(length=8000):
        return SeparationStream(top_band_owner, plan, STFT, 2, 1, 8000, length)
    for block in (np.ones((100, 1), np.complex64), np.full((100, 1), 1000, np.int16), np.ones((100, 1), bool)):
        with pytest.raises(TypeError, match="float"):
            list(stream().push(block))
    s = stream(100)
    with pytest.raises(ValueError, match="100 samples"):
        list(s.push(np.zeros((60, 1), np.float32))) + list(s.push(np.zeros((60, 1), np.float32)))
    s = stream(100)
    list(s.push(np.zeros((60, 1), np.float32)))
    with pytest.raises(ValueError, match="60 of its 100 samples"):
        list(s.finish())


def test_band_and_plan_numbers_are_checked():
    # a band upside down or past Nyquist sliced no bins: an even split everywhere, silently
    spec = torch.ones(1, 2, 129, 3, dtype=torch.complex64)
    for band in ((0.9, 0.1), (-0.5, 1.0), (0.5, 1.5), (0.5, float("nan"))):
        with pytest.raises(ValueError, match="band"):
            band_weights(spec, 256, band)
    # a fractional batch was truncated (1.5 ran as 1), None failed in a comparison, and a
    # NumPy float32 segment was "not a positive number of seconds"
    for batch in (1.5, None, True, 0):
        with pytest.raises(ValueError, match="batch_size"):
            SegmentPlan.from_seconds(STFT, 1.0, 0.25, batch)
    assert SegmentPlan.from_seconds(STFT, np.float32(1.0), np.float32(0.25), np.int64(2)) == \
        SegmentPlan.from_seconds(STFT, 1.0, 0.25, 2)
