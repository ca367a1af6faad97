"""The band above the model's Nyquist frequency, given back to the sources (Spleeter's mask
extension, done in time).

A model at 16 kHz sees nothing above 8 kHz: resampling its sources up to a 44.1 kHz input's
rate leaves that band out of every output. :class:`HighBandSplit` takes the mixture's own
high band, the residual ``r = x - up(down(x))`` (exactly what the resampling path removed),
and splits it among the sources with one weight per source, channel and model STFT frame:
the source's share of the power in the model's top band (by default its top octave, 4-8 kHz
for a 16 kHz model), interpolated linearly between frame centres. The weights sum to one,
so the sources still add up to the mixture wherever the model's sources do. A source that
holds the top of the model's band in a frame gets the band above it too: sibilants and
breath follow the voice, cymbals the accompaniment (measured per source with and without
it in the model card).

An input below the model's rate has no band above it, but the round trip (up to the model's
rate, back down) still loses the top of the input's band in the resamplers' transitions; the
same residual gives it back, split the same way.

It runs inside :class:`chimera.stream.SeparationStream`, in bounded memory: it keeps only the
input samples whose sources are not out yet, and the weights of the frames they need.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .audio import StreamResampler

#: ``high_band`` choices: split the band above the model's among the sources, or drop it.
HIGH_BAND_MODES = ("split", "drop")
#: The model's top band that decides the split, as fractions of its Nyquist frequency.
DEFAULT_BAND = (0.5, 1.0)
#: Output samples per step of the split (its temporaries: about 100 bytes a sample).
CHUNK = 1 << 15


def check_mode(mode: str) -> str:
    """`mode` if it is one of :data:`HIGH_BAND_MODES`; a ValueError naming them otherwise."""
    if mode not in HIGH_BAND_MODES:
        raise ValueError(f"high_band must be one of {', '.join(HIGH_BAND_MODES)}, got {mode!r}")
    return mode


def needed(mode: str, in_rate: int, model_rate: int, out_rate: int) -> bool:
    """Whether there is a band to give back: the input is resampled for the model and the
    mode asks for it. Above the model's rate that is the band above its Nyquist frequency;
    below it, the top of the input's own band that the resamplers' transitions take off on
    the way up and back down (a white 8 kHz input came back 13.5 dB short without it)."""
    return check_mode(mode) == "split" and in_rate != model_rate and out_rate != model_rate


def band_weights(spec: torch.Tensor, n_fft: int, band=DEFAULT_BAND) -> torch.Tensor:
    """(..., C, F, T) complex source spectra → (..., C, T) weights that sum to one over C:
    each source's share of the power in `band` (fractions of the Nyquist frequency) per
    frame; 1 / C where the band is silent in every source, NaN where its power is NaN."""
    if not 0 <= band[0] < band[1] <= 1:  # else no bins (an even split everywhere) or past Nyquist
        raise ValueError(f"band must be fractions 0 <= low < high <= 1 of the Nyquist frequency, got {band!r}")
    half = n_fft // 2
    lo, hi = int(math.floor(band[0] * half)), int(math.ceil(band[1] * half)) + 1
    power = spec[..., lo:hi, :].abs().square_().sum(-2)
    total = power.sum(-2, keepdim=True)
    n = power.shape[-2]
    tiny = torch.finfo(power.dtype).tiny
    # `total <= tiny`, not `not total > tiny`: a NaN total is no silence (it gave 1 / C)
    return torch.where(total <= tiny, torch.full_like(power, 1.0 / max(n, 1)), power / total.clamp_min(tiny))


class HighBandSplit:
    """Streaming: feed the mixture (:meth:`mixture`), the weights of the model's frames in order
    (:meth:`frames`), and the low-band sources at the output rate (:meth:`sources`); get
    back the full-band sources that are complete.

    in_rate, model_rate, out_rate: of the input, the model, the outputs; channels, n_sources;
    hop, n_fft: the model's STFT (frame t is centred on model sample t * hop); band: see
    :func:`band_weights`.
    """

    def __init__(self, in_rate, model_rate, out_rate, channels, n_sources, hop, n_fft, band=DEFAULT_BAND):
        self.channels, self.n_sources = int(channels), int(n_sources)
        self.n_fft, self.band = int(n_fft), tuple(band)
        self._frames_per_sample = model_rate / out_rate / hop   # model frames per output sample
        self._x = StreamResampler(in_rate, out_rate, channels)    # the mixture at the output rate
        self._low = StreamResampler(model_rate, out_rate, channels)  # the model's mixture, back up
        empty = np.zeros((0, channels), np.float32)
        self._rq = empty                       # the residual from output sample self._done
        self._xq, self._lowq = empty, empty    # either side of it, until the other comes (a few ms)
        self._srcq = np.zeros((0, channels, n_sources), np.float32)
        self._w = np.zeros((0, channels, n_sources), np.float32)  # frame weights from frame self._w_start
        self._w_start = 0
        self._done = 0            # output samples handed out
        self._all_frames = False

    def mixture(self, block, model_block, last=False):
        """(n, channels) input-rate samples and the (n', channels) model-rate samples the model
        got for them (`last`: the resamplers' tails follow)."""
        x, low = self._x.push(block), self._low.push(model_block)
        if last:
            x, low = np.concatenate([x, self._x.finish()]), np.concatenate([low, self._low.finish()])
        x = np.concatenate([self._xq, x]) if self._xq.shape[0] else x
        low = np.concatenate([self._lowq, low]) if self._lowq.shape[0] else low
        n = min(x.shape[0], low.shape[0])  # the residual as soon as both sides have it
        self._rq = np.concatenate([self._rq, x[:n] - low[:n]])
        # a copy: at equal rates x is the caller's block, which the caller may read into again
        self._xq, self._lowq = x[n:].copy(), low[n:]

    def frames(self, spec: torch.Tensor, last=False):
        """(channels, C, F, n) complex source spectra of the next n model frames."""
        w = band_weights(spec, self.n_fft, self.band).to("cpu", torch.float32).numpy()  # (channels, C, n)
        self._w = np.concatenate([self._w, w.transpose(2, 0, 1)])
        self._all_frames = self._all_frames or last

    def sources(self, low: np.ndarray, final: bool) -> np.ndarray:
        """(n, channels, C) float32 output-rate sources without the high band (overwritten) →
        the (m, channels, C) full-band sources that are complete now (with `final`, all of
        them: missing residual at the very end counts as zero)."""
        # `low` is the caller's to give away: the high band is added to it in place
        src = np.concatenate([self._srcq, low]) if self._srcq.shape[0] else low
        n = src.shape[0]
        if not final:
            n = min(n, self._rq.shape[0], self._covered())
        if n <= 0:
            self._srcq = src
            return src[:0]
        r = _take(self._rq, n)
        out = src[:n]
        for a in range(0, n, CHUNK):  # in chunks: the weights' temporaries are 10 x the samples'
            b = min(n, a + CHUNK)
            out[a:b] += self._weights(self._done + a, b - a) * r[a:b, :, None]
        self._srcq, self._rq = src[n:], self._rq[n:]
        self._done += n
        keep = max(0, int(math.floor(self._done * self._frames_per_sample)) - self._w_start)
        self._w, self._w_start = self._w[keep:], self._w_start + keep
        return out

    def _covered(self):
        """Output samples from the start whose two neighbouring frames have weights."""
        have = self._w_start + self._w.shape[0]
        if self._all_frames:
            return 1 << 62
        return max(0, int(math.ceil((have - 1) / self._frames_per_sample)) - self._done)

    def _weights(self, start, n):
        """(n, channels, C) weights of output samples start .. start + n, between frame centres."""
        pos = (start + np.arange(n)) * self._frames_per_sample - self._w_start
        last = self._w.shape[0] - 1  # >= 0: the stream hands over every frame before its samples
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, last)
        i1 = np.minimum(i0 + 1, last)
        frac = np.clip(pos - i0, 0.0, 1.0).astype(np.float32)[:, None, None]
        return (1 - frac) * self._w[i0] + frac * self._w[i1]


def _take(q: np.ndarray, n: int) -> np.ndarray:
    """The first n rows of q, zero-padded when q is shorter."""
    if q.shape[0] >= n:
        return q[:n]
    return np.concatenate([q, np.zeros((n - q.shape[0],) + q.shape[1:], q.dtype)])
