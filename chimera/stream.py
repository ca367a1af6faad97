"""Separate a signal of any length in bounded memory, block by block.

The signal, resampled to the model's rate, is cut into segments of ``plan.segment``
samples that overlap by ``plan.segment - plan.step``, both whole numbers of STFT hops, so
every segment's STFT frames sit on one global frame grid. Each segment's source spectra
are weighted by a linear cross-fade over the shared frames and summed on that grid;
frames that no later segment touches are final and go through a streaming inverse STFT,
then back to the input's rate, where :mod:`chimera.bandext` adds the band above the
model's Nyquist frequency. Nothing kept grows with the length of the input.

Where the inverse STFT runs: on the device and in the precision of the spectra (the
Separator's device, float32). On a GPU the fused ``overlap_add`` kernel then runs there and
only the final waveforms (4 bytes a sample and source) cross to the host, not the spectra
((n_fft / 2 + 1) / hop complex values a sample: about 2 for the bundled model's 512 / 128,
so 32 bytes in complex128, the precision this inverse used to run in on the host). What it keeps between segments is
one overlap of spectra, about 1 MB for the bundled model on a stereo input. float32 is
enough: on the demo stems the waveforms differ from a float64 inverse by at most 9e-8,
less than one 24-bit PCM step (1.2e-7) and far below the model's own error.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from . import bandext, signal
from .audio import StreamResampler
from .models import StftConfig


@dataclass
class SegmentPlan:
    hop: int        # STFT hop (samples at the model rate)
    segment: int    # samples per segment, a multiple of hop
    step: int       # samples between segment starts (segment - overlap), a multiple of hop
    edge: int       # frames at each end of a segment that reach into its padding
    batch: int      # rows (segments x channels) per call of the spectra function, at least

    @classmethod
    def from_seconds(cls, stft: StftConfig, segment: float, overlap: float, batch: int) -> "SegmentPlan":
        """Segments of `segment` seconds overlapping by `overlap`, rounded to STFT hops (at
        least two frames' worth, so a segment always has inner frames). The overlap is at
        least 2 * edge hops (one n_fft for the usual n_fft / hop), even when 0 is asked:
        joins are exact only where the shared frames reach past the edge frames of both
        segments, which see a segment's padding instead of the signal around it (a shorter
        overlap clicked at every join, up to -24 dB of error)."""
        # numbers.Real: NumPy's float32 too; bool is no number of seconds (True ran as 1 s)
        if not (_is_number(segment, numbers.Real) and math.isfinite(segment) and segment > 0):
            raise ValueError(f"segment must be a positive number of seconds, got {segment!r}")
        if not (_is_number(overlap, numbers.Real) and math.isfinite(overlap)):
            raise ValueError(f"overlap must be a number of seconds, got {overlap!r}")
        if not (_is_number(batch, numbers.Integral) and batch >= 1):  # int(1.5) ran as 1
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch!r}")
        rate, hop = stft.sample_rate, stft.hop_length
        edge = math.ceil(stft.n_fft / 2 / hop)
        seg = max(int(round(segment * rate / hop)), 2 * math.ceil(stft.n_fft / hop)) * hop
        ovl = int(round(overlap * rate / hop)) * hop
        if ovl < 0 or 2 * ovl + hop > seg:  # a frame is shared by two segments at most
            raise ValueError(f"overlap ({overlap} s) must be between 0 and half the segment: at most "
                             f"{math.floor((seg - hop) // 2 // hop * hop / rate * 1000) / 1000:g} s for a {seg / rate:.3g}-s segment")
        ovl = max(ovl, 2 * edge * hop)
        seg = max(seg, 2 * ovl + hop)
        return cls(hop, seg, seg - ovl, edge=edge, batch=int(batch))

    @property
    def frames(self):            # frames per segment (center=True)
        return self.segment // self.hop + 1

    @property
    def shared(self):            # frames shared by consecutive segments
        return self.frames - self.step // self.hop

    def fade_in(self):
        """Weight of the later segment over the shared frames; the earlier one gets 1 − it.

        A segment's first and last ``edge`` frames see its padding, not the signal around
        it: they get weight 0, so the cross-faded spectra equal the STFT of the whole signal
        wherever the masks add up to one (joins are then exact), and the ramp runs between.
        """
        n, e = self.shared, self.edge
        if n <= 2 * e:  # from_seconds never plans this: the joins would not be exact
            raise ValueError(f"a plan whose segments share {n} frames cannot skip {e} edge frames at each end")
        w = torch.zeros(n, dtype=torch.float64)
        w[n - e:] = 1.0
        m = n - 2 * e
        w[e:n - e] = (torch.arange(m, dtype=torch.float64) + 0.5) / m
        return w


class SeparationStream:
    """Push (n, channels) float32 blocks at the input rate; get back the separated
    samples that are final as (n, channels, C) blocks at ``out_rate`` (default: the input
    rate; another rate for an output format that cannot hold the input's).

    ``spectra(segments, channels)`` maps (B, segment) model-rate waveforms, ``channels``
    consecutive rows per segment, to their (B, C, F, T) complex source spectra (the
    Separator's :meth:`~chimera.separate.Separator.source_spectra`); ``plan`` cuts the
    signal; ``stft`` is the model's STFT, inverted here. ``high_band``: "split" gives the
    band above the model's Nyquist frequency back to the sources (:mod:`chimera.bandext`),
    "drop" leaves it out.
    """

    def __init__(self, spectra, plan: SegmentPlan, stft: StftConfig, n_sources, channels, sample_rate, length,
                 out_rate=None, high_band="split"):
        if length <= 0:
            raise ValueError("the input has no samples")
        self.spectra, self.plan, self.stft = spectra, plan, stft
        self.channels = channels
        self.n_sources = n_sources
        self.in_rate = int(sample_rate)
        self.length = int(length)
        self.out_rate = self.in_rate if out_rate is None else int(out_rate)
        rate = stft.sample_rate
        self.model_length = _length_at(self.length, self.in_rate, rate)
        self.out_length = _length_at(self.length, self.in_rate, self.out_rate)
        self._down = StreamResampler(self.in_rate, rate, channels)
        self._up = StreamResampler(rate, self.out_rate, channels * n_sources)
        self._ext = None
        if bandext.needed(high_band, self.in_rate, rate, self.out_rate):
            self._ext = bandext.HighBandSplit(self.in_rate, rate, self.out_rate, channels, n_sources,
                                              stft.hop_length, stft.n_fft)
        # segments: the first starts at 0; enough of them to cover the signal
        L = self.model_length
        self.n_seg = 1 if L <= plan.segment else 1 + math.ceil((L - plan.segment) / plan.step)
        # A lone segment is the signal itself (padded to one n_fft when shorter), so a
        # short input costs no more than its length and equals Separator.separate_batch.
        self.seg_len = max(L, stft.n_fft) if self.n_seg == 1 else plan.segment
        self._istft = None       # made with the first spectra, on their device (module docstring)
        self._fade = None        # plan.fade_in() on that device
        self._buffer = np.zeros((0, channels), np.float32)  # model-rate samples from _buffer_start
        self._buffer_start = 0
        self._received = 0       # model-rate samples received
        self._next_seg = 0       # next segment to run
        self._pending = None     # (channels, C, F, shared) weighted spectra of the frames still open
        self._emitted = 0        # output-rate samples of the model's sources produced
        self._pushed = 0         # input samples pushed

    # -------------------------------------------------------------- feeding
    def push(self, block):
        block = _as_block(block, self.channels)
        if not np.isfinite(block).all():
            raise ValueError("the audio contains NaN or Inf samples")
        self._pushed += block.shape[0]
        if self._pushed > self.length:  # the samples past it were dropped
            raise ValueError(f"the stream was made for {self.length} samples, got {self._pushed}")
        model_block = self._trim(self._down.push(block))
        if self._ext is not None:
            self._ext.mixture(block, model_block)
        yield from self._consume(model_block, last=False)

    def finish(self):
        if self._pushed < self.length:  # the rest would be separated silence
            raise ValueError(f"finish: the stream got {self._pushed} of its {self.length} samples")
        model_block = self._trim(self._down.finish())
        short = self.model_length - self._received - model_block.shape[0]
        if short > 0:  # the resampler rounds its length: the model's signal is model_length long
            model_block = np.concatenate([model_block, np.zeros((short, self.channels), np.float32)])
        if self._ext is not None:
            self._ext.mixture(np.zeros((0, self.channels), np.float32), model_block, last=True)
        yield from self._consume(model_block, last=True)

    def _trim(self, block):
        """The model-rate samples of `block` within the signal (the resampler may give more)."""
        return block[: max(0, self.model_length - self._received)]

    def _consume(self, block, last):
        self._received += block.shape[0]
        self._buffer = np.concatenate([self._buffer, block]) if block.size else self._buffer
        ready = []
        while self._next_seg + len(ready) < self.n_seg:
            k = self._next_seg + len(ready)
            end = k * self.plan.step + self.seg_len
            if end > self._received and not last:
                break
            ready.append(k)
            if len(ready) * self.channels >= self.plan.batch:
                yield from self._run(ready)
                ready = []
        if ready:
            yield from self._run(ready)
        if last:
            yield from self._flush()

    def _segment(self, k):
        start = k * self.plan.step - self._buffer_start
        seg = self._buffer[start:start + self.seg_len]
        if seg.shape[0] < self.seg_len:  # past the end: zeros
            seg = np.concatenate([seg, np.zeros((self.seg_len - seg.shape[0], self.channels), np.float32)])
        return seg.T  # (channels, seg_len)

    def _run(self, ks):
        batch = torch.from_numpy(np.stack([self._segment(k) for k in ks]).reshape(-1, self.seg_len))
        spectra = self.spectra(batch, self.channels)  # (len(ks) * channels, C, F, T)
        spectra = spectra.reshape(len(ks), self.channels, *spectra.shape[1:])
        for k, spec in zip(ks, spectra):
            yield from self._add_segment(k, spec)
        # drop input that no later segment needs
        keep_from = (ks[-1] + 1) * self.plan.step
        drop = keep_from - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start = keep_from

    def _add_segment(self, k, spec):
        plan = self.plan
        if self._istft is None:
            st = self.stft
            window = st.window_tensor(device=spec.device, dtype=spec.real.dtype)
            self._istft = signal.StreamingISTFT(st.n_fft, plan.hop, window, center=True, length=self.model_length)
            self._fade = plan.fade_in().to(spec.device, spec.real.dtype)
        self._next_seg = k + 1
        spec = spec.clone()
        if k > 0:  # cross-fade with the frames the previous segment left open
            n = self._pending.shape[-1]
            spec[..., :n] = spec[..., :n] * self._fade[:n] + self._pending
        if k + 1 < self.n_seg:
            final = plan.step // plan.hop             # frames no later segment touches
            self._pending = spec[..., final:] * (1 - self._fade)
            spec = spec[..., :final]
        if self._ext is not None:
            self._ext.frames(spec, last=k + 1 == self.n_seg)
        yield from self._emit(self._istft.push(spec))

    def _flush(self):
        yield from self._emit(self._istft.flush())
        yield from self._hand_out(self._up.finish(), final=True)

    def _emit(self, y):
        """y: (channels, C, n) model-rate samples → output-rate (n', channels, C) blocks."""
        flat = y.to(device="cpu", dtype=torch.float32).numpy().reshape(self.channels * self.n_sources, -1).T
        yield from self._hand_out(self._up.push(flat), final=False)

    def _hand_out(self, flat, final):
        remaining = self.out_length - self._emitted
        flat = flat[:remaining]
        if final and flat.shape[0] < remaining:  # the resampler's rounding: pad to the exact length
            flat = np.concatenate([flat, np.zeros((remaining - flat.shape[0], flat.shape[1]), np.float32)])
        self._emitted += flat.shape[0]
        out = flat.reshape(-1, self.channels, self.n_sources)
        if self._ext is not None:
            out = self._ext.sources(out, final)
        if out.shape[0]:
            yield out


def _is_number(value, kind):
    return isinstance(value, kind) and not isinstance(value, bool)


def _as_block(block, channels):
    """`block` as an (n, `channels`) float32 array; a TypeError or ValueError saying what is
    wrong with it otherwise."""
    block = np.asarray(block)
    if block.dtype.kind != "f":  # the cast dropped a complex block's imaginary part, took int16 as floats
        raise TypeError(f"expected float samples in [-1, 1], got {block.dtype} "
                        "(divide integer PCM by its full scale, e.g. 32768 for int16)")
    if block.ndim != 2 or block.shape[1] != channels:
        raise ValueError(f"expected (n, {channels}) blocks, got {block.shape}")
    return block.astype(np.float32, copy=False)


def _length_at(length, rate, new_rate):
    """Samples that `length` samples at `rate` last at `new_rate` (rounded up)."""
    return length if rate == new_rate else int(math.ceil(length * new_rate / rate))


class ChannelGroups:
    """Streams over consecutive groups of the channels, as one stream: push (n, channels)
    blocks, get (n, channels, C) blocks. What one call of the spectra function holds is
    then one group's segment, however many channels the input has."""

    def __init__(self, streams):
        self.streams = list(streams)
        self._bounds = np.cumsum([0] + [s.channels for s in self.streams])

    def push(self, block):
        block = _as_block(block, self._bounds[-1])
        yield from self._join([s.push(block[:, a:b]) for s, a, b in zip(self.streams, self._bounds, self._bounds[1:])])

    def finish(self):
        yield from self._join([s.finish() for s in self.streams])

    def _join(self, parts):
        """Each group's output of one push, side by side (they are the same length: how
        much is final depends on the lengths pushed, not on the samples)."""
        outs = [np.concatenate(list(p) or [np.zeros((0, s.channels, s.n_sources), np.float32)])
                for p, s in zip(parts, self.streams)]
        if len({o.shape[0] for o in outs}) != 1:
            raise RuntimeError(f"channel groups out of step: {[o.shape[0] for o in outs]} samples")
        if outs[0].shape[0]:
            yield np.concatenate(outs, axis=1)
