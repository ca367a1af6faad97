"""STFT / inverse STFT with the fused overlap-add op, a streaming inverse STFT for
long files, and MISI phase reconstruction.

Spectra are complex, onesided, not normalised, shaped (..., n_fft // 2 + 1, n_frames),
exactly like ``torch.stft(..., return_complex=True)``; ``istft`` agrees with
``torch.istft`` (same trimming for ``center``/``length``, same NOLA rejection) also
for spectra that are not the STFT of any signal (masked ones).
"""
import math

import torch

from .ops import overlap_add, reference

__all__ = ["stft", "istft", "StreamingISTFT", "misi", "inconsistency"]


def _window(window, n_fft, dtype, device):
    if window is None:  # torch's default: rectangular
        return torch.ones(n_fft, dtype=dtype, device=device)
    if window.dim() != 1 or window.shape[0] != n_fft:
        raise ValueError(f"window must be 1-D with n_fft={n_fft} samples, got shape {tuple(window.shape)}")
    return window.to(dtype=dtype, device=device)


def _hop(hop_length, n_fft):
    hop = n_fft // 4 if hop_length is None else int(hop_length)
    if not 0 < hop <= n_fft:
        raise ValueError(f"hop_length must be in [1, n_fft={n_fft}], got {hop_length}")
    return hop


def stft(x, n_fft, hop_length=None, window=None, center=True):
    """Complex onesided STFT of real signals x (..., L) -> (..., n_fft // 2 + 1, n_frames).

    torch.stft with its defaults (reflect padding of n_fft // 2 when `center`, not
    normalised), for any number of leading dimensions (an empty batch too). A
    signal too short for one frame (or for the reflect padding) raises a ValueError."""
    if not x.is_floating_point() or x.dim() < 1:
        raise ValueError(f"stft: x must be real floating point (..., L), got {x.dtype} of shape {tuple(x.shape)}")
    hop = _hop(hop_length, n_fft)
    L = x.shape[-1]
    if (L <= n_fft // 2) if center else (L < n_fft):
        raise ValueError(f"stft: a signal of {L} samples is too short for n_fft={n_fft} with center={center} (needs "
                         f"{'more than ' + str(n_fft // 2) if center else 'at least ' + str(n_fft)})")
    w = _window(window, n_fft, x.dtype, x.device)
    if not x.numel():
        # torch.stft refuses an empty batch; an empty view of x (not new zeros) keeps the
        # result in autograd's graph, so that a loss over it still has a backward
        empty = x[..., :1, None].expand(*x.shape[:-1], n_fft // 2 + 1, _n_frames(L, n_fft, hop, center))
        return torch.complex(empty, empty)
    spec = torch.stft(x.reshape(-1, L), n_fft, hop, window=w, center=center, pad_mode="reflect",
                      normalized=False, onesided=True, return_complex=True)
    return spec.reshape(*x.shape[:-1], *spec.shape[-2:])


def istft(spec, n_fft, hop_length=None, window=None, center=True, length=None):
    """Inverse of `stft` for complex spec (..., n_fft // 2 + 1, n_frames) -> (..., L).

    torch.fft.irfft of each frame, then chimera.ops.overlap_add (window, overlap-add,
    envelope division and trimming in one pass, and one pass backward)."""
    if not spec.is_complex():
        raise ValueError(f"istft: spec must be complex (..., n_fft // 2 + 1, n_frames), got {spec.dtype}")
    if spec.dim() < 2 or spec.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"istft: spec must be (..., n_fft // 2 + 1 = {n_fft // 2 + 1}, n_frames) for n_fft={n_fft}, "
                         f"got shape {tuple(spec.shape)}")
    if spec.shape[-1] == 0:
        raise ValueError("istft: spec has no frames")
    hop = _hop(hop_length, n_fft)
    # Along dim -2 the FFT (MKL, pocketfft) writes the frames contiguous as
    # (..., n_frames, n_fft) with no transposing copy of the spectrum, and its backward
    # reads overlap_add_backward's contiguous gradient without a copy too.
    frames = _irfft_frames(spec, n_fft)
    w = _window(window, n_fft, frames.dtype, frames.device)
    return overlap_add(frames, w, hop, center, length)


def _irfft_frames(spec, n_fft):
    """(..., F, T) complex -> (..., T, n_fft) real frames (the FFT fails on an empty batch)."""
    if spec.numel() == 0:  # an empty view of spec, not new zeros: it stays in autograd's graph
        return spec.real[..., :1, :].transpose(-1, -2).expand(*spec.shape[:-2], spec.shape[-1], n_fft)
    return torch.fft.irfft(spec, n=n_fft, dim=-2).transpose(-1, -2)


def inconsistency(spec, n_fft, hop_length=None, window=None, center=True):
    """Spectral inconsistency ‖STFT(iSTFT(S)) − S‖ / ‖S‖ over the last two dims: 0 for
    the STFT of a signal, larger the further S is from any STFT."""
    y = istft(spec, n_fft, hop_length, window, center)
    back = stft(y, n_fft, hop_length, window, center)
    T = min(back.shape[-1], spec.shape[-1])
    num = (back[..., :T] - spec[..., :T]).abs().square().sum((-2, -1))
    return (num / spec.abs().square().sum((-2, -1)).clamp_min(1e-30)).sqrt()


class StreamingISTFT:
    """Inverse STFT of a spectrogram fed in chunks of any number of frames.

    ``push(chunk)`` takes (..., n_fft // 2 + 1, T_chunk) and returns the samples that
    no later frame can change; ``flush()`` returns the rest and resets the stream.
    The concatenated output equals ``istft(whole_spectrogram, n_fft, hop_length,
    window, center, length)`` (up to float rounding, ~1e-7 relative in float32).

    Trimming: with ``center`` the first n_fft // 2 samples of the stream are
    dropped as they are produced, and the last n_fft // 2 when flushing, exactly as
    the one-shot call trims; ``length`` (when given) caps the total output and
    ``flush`` zero-pads up to it.

    State between calls: the n_fft − hop_length samples still open to later frames,
    kept as un-normalised overlap-add sums; the envelope is recomputed from the
    window and the frame count (it depends on nothing else).
    """

    def __init__(self, n_fft, hop_length=None, window=None, center=True, length=None):
        self.n_fft = int(n_fft)
        self.hop = _hop(hop_length, self.n_fft)
        self.window = window
        self.center = bool(center)
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0 or None, got {length}")
        if self.center and length is None and 2 * self.hop > self.n_fft:
            # The last n_fft // 2 samples are trimmed, but only n_fft - hop are held back.
            raise ValueError(f"StreamingISTFT: center=True without length needs hop_length <= n_fft / 2, got "
                             f"hop_length={self.hop} for n_fft={self.n_fft}")
        self.length = length
        self._reset()

    def _reset(self):
        self._frames = 0      # frames seen so far
        self._next = 0        # full-signal position of the next sample not returned yet
        self._open = None     # (..., n_fft - hop) un-normalised sums at [frames*hop, frames*hop + n_fft - hop)
        self._returned = 0    # samples returned so far
        self._like = None     # a tensor with the stream's batch shape, dtype and device

    @property
    def _start(self):
        return self.n_fft // 2 if self.center else 0

    def _envelope(self, positions, n_frames, w):
        """Envelope at full-signal positions (1-D long tensor) for a stream of n_frames."""
        env = torch.zeros(positions.shape, dtype=w.dtype, device=w.device)
        wsq = w.square()
        last = positions // self.hop
        for m in range(math.ceil(self.n_fft / self.hop) + 1):
            t = last - m
            k = positions - t * self.hop
            ok = (t >= 0) & (t < n_frames) & (k < self.n_fft)
            env += torch.where(ok, wsq[k.clamp(0, self.n_fft - 1)], torch.zeros((), dtype=w.dtype, device=w.device))
        return env

    def _checked_envelope(self, first, n, n_frames, w):
        """(envelope, kept) at full-signal positions first + [0, n), with the NOLA check on
        the samples that will be returned (numbered from the start of the stream's output)."""
        pos = torch.arange(first, first + n, device=w.device)
        env = self._envelope(pos, n_frames, w)
        kept = pos >= self._start
        if self.length is not None:
            kept &= pos < self._start + self.length
        reference.check_nola("StreamingISTFT", env[kept], max(first, self._start) - self._start, self.hop)
        return env, kept

    def _normalise(self, num, first, n_frames, w):
        """num (..., n) at full-signal positions first + [0, n) divided by the envelope."""
        env, kept = self._checked_envelope(first, num.shape[-1], n_frames, w)
        return num / torch.where(kept, env, torch.ones((), dtype=env.dtype, device=env.device))

    def _emit(self, y, first):
        """Return the part of y (full-signal positions first + [0, n)) that is kept."""
        lo = max(self._start, first)
        hi = first + y.shape[-1]
        if self.length is not None:
            hi = min(hi, self._start + self.length)
        out = y[..., max(lo - first, 0):max(hi - first, 0)]
        self._returned += out.shape[-1]
        return out

    def push(self, chunk):
        """Add spectrogram frames (..., n_fft // 2 + 1, T_chunk); return the final samples."""
        if not chunk.is_complex() or chunk.dim() < 2 or chunk.shape[-2] != self.n_fft // 2 + 1:
            raise ValueError(f"push: chunk must be complex (..., n_fft // 2 + 1 = {self.n_fft // 2 + 1}, T), got "
                             f"{chunk.dtype} of shape {tuple(chunk.shape)}")
        n_new = chunk.shape[-1]
        if self._like is not None and chunk.shape[:-2] != self._like.shape[:-1]:
            raise ValueError(f"push: chunk batch shape {tuple(chunk.shape[:-2])} differs from the stream's "
                             f"{tuple(self._like.shape[:-1])}")
        self._like = chunk.real.new_empty(*chunk.shape[:-2], 0)
        if n_new == 0:
            return self._like
        frames = _irfft_frames(chunk, self.n_fft)  # (..., T_chunk, n_fft)
        w = _window(self.window, self.n_fft, frames.dtype, frames.device)
        n_fft, hop = self.n_fft, self.hop
        overlap = n_fft - hop
        base = self._frames * hop                     # full-signal position of local position 0
        final = n_new * hop                           # local [0, final) is final after this chunk
        open_ = self._open if self._open is not None else frames.new_zeros(*frames.shape[:-2], overlap)
        # Local [0, head) by hand: it sums the open samples and the first frames, and its
        # chunk-local envelope differs from the stream's. The op does [head, final).
        head = min(final, max(overlap, n_fft // 2))
        total = self._frames + n_new
        parts = []
        if head > 0:
            num = frames.new_zeros(*frames.shape[:-2], head)
            num[..., :min(head, overlap)] += open_[..., :min(head, overlap)]
            for t in range(min(n_new, (head - 1) // hop + 1)):
                a, b = t * hop, min(t * hop + n_fft, head)
                num[..., a:b] += frames[..., t, : b - a] * w[: b - a]
            parts.append(self._normalise(num, base, total, w))
        # Samples past `length` are never returned: not computed either, so that (like the
        # one-shot istft) their envelope is not checked and a finished stream costs nothing.
        stop = final if self.length is None else min(final, max(head, self._start + self.length - base))
        if stop > head:
            # Chunk-local center=True starts at n_fft // 2 <= head; positions >= overlap
            # see all their frames inside the chunk, so the local envelope is the stream's.
            try:
                y = overlap_add(frames, w, hop, True, stop - n_fft // 2)
            except RuntimeError:
                # the op numbers samples from the chunk's own centred start: find where
                # the stream's envelope vanishes and say so in the stream's numbering
                self._checked_envelope(base + head, stop - head, total, w)
                raise
            parts.append(y[..., head - n_fft // 2:])
        # New open samples: local [final, final + overlap).
        new_open = frames.new_zeros(*frames.shape[:-2], overlap)
        if final < overlap:
            new_open[..., : overlap - final] += open_[..., final:]
        for t in range(max(0, n_new - math.ceil(n_fft / hop) + 1), n_new):
            a = t * hop - final                       # frame start relative to `final` (<= 0)
            lo = max(0, a)
            hi = min(overlap, a + n_fft)
            if hi > lo:
                new_open[..., lo:hi] += frames[..., t, lo - a:hi - a] * w[lo - a:hi - a]
        self._open = new_open
        self._frames = total
        if not parts:  # all past `length`
            parts.append(frames.new_zeros(*frames.shape[:-2], 0))
        y = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
        out = self._emit(y, base)
        self._next = base + final
        return out

    def flush(self):
        """Return the remaining samples (zero-padded up to `length` when given) and reset; a
        ValueError when no frames were pushed since the last reset."""
        if self._frames == 0:
            # like istft of the whole (empty) spectrogram; with nothing pushed the output's
            # batch shape, dtype and device are unknown too
            self._reset()
            raise ValueError("StreamingISTFT.flush: no frames were pushed (istft: spec has no frames)")
        w = _window(self.window, self.n_fft, self._open.dtype, self._open.device)
        full = self.n_fft + self.hop * (self._frames - 1)
        tail = self._open
        if self.center and self.length is None:
            tail = tail[..., : max(0, full - self._start - self._next)]
        y = self._normalise(tail, self._next, self._frames, w)
        out = self._emit(y, self._next)
        if self.length is not None and self._returned < self.length:
            out = torch.nn.functional.pad(out, (0, self.length - self._returned))
        self._reset()
        return out


def _phasor(z):
    """z / |z| (1 where z = 0), differentiable everywhere. Real and imaginary parts are
    divided separately: torch's complex-by-real division squares the divisor, which
    underflows for subnormal magnitudes (|z| ~ 1e-39 in float32, met in near-silent bins of
    MISI's STFTs) and gave inf and NaN. NaN stays NaN (`mag > 0` is false for it too: a NaN
    mixture came back finite)."""
    mag = z.abs()
    zero = mag == 0
    safe = torch.where(zero, torch.ones_like(mag), mag)
    return torch.where(zero, torch.ones_like(z), torch.complex(z.real / safe, z.imag / safe))


def _n_frames(length, n_fft, hop_length, center):
    """Frames of `stft` on a signal of `length` samples."""
    hop = _hop(hop_length, n_fft)
    padded = length + 2 * (n_fft // 2) if center else length
    return max(0, (padded - n_fft) // hop + 1)


def misi(mixture, estimates, n_iter, n_fft, hop_length=None, window=None, center=True, *,
         mixture_consistent=False, return_spectra=False):
    """Multiple Input Spectrogram Inversion (Gunawan & Sen 2010), unfolded as in Wang et
    al. 2018 so that gradients flow through all iterations.

    mixture (..., L) real; estimates (..., C, F, T): complex spectra (their magnitudes
    are kept, their phases start the iterations) or real magnitudes (started from the
    mixture's phase). Each iteration: ŝ_c = iSTFT(|Ŝ_c| e^{jθ_c}), δ = y − Σ_c ŝ_c,
    θ_c ← ∠STFT(ŝ_c + δ / C). Returns the waveforms (..., C, L) after n_iter updates;
    with ``mixture_consistent`` the residual δ / C is added to each so that they sum
    to the mixture exactly; with ``return_spectra`` also their (consistent) STFTs. The
    waveforms' dtype is the real one that the mixture's and the estimates' dtypes promote to.
    """
    if estimates.dim() < 3:
        raise ValueError(f"misi: estimates must be (..., C, F, T), got shape {tuple(estimates.shape)}")
    if mixture.shape[:-1] != estimates.shape[:-3]:
        raise ValueError(f"misi: mixture batch shape {tuple(mixture.shape[:-1])} does not match the estimates' "
                         f"{tuple(estimates.shape[:-3])}")
    if n_iter < 0:
        raise ValueError(f"misi: n_iter must be >= 0, got {n_iter}")
    # One dtype for every n_iter (the STFTs of the iterations promote to it; n_iter=0 did not):
    # that of the two inputs' promotion, as for torch's own ops.
    estimates = estimates.to(torch.promote_types(estimates.dtype, mixture.dtype))
    mixture = mixture.to(estimates.real.dtype)
    C = estimates.shape[-3]
    L = mixture.shape[-1]
    y = mixture.unsqueeze(-2)
    if estimates.is_complex():
        mag, phase = estimates.abs(), _phasor(estimates)
    else:
        mag = estimates
        phase = _phasor(stft(mixture, n_fft, hop_length, window, center)).unsqueeze(-3)
    # Complex estimates are checked too: more frames broke the loop with a broadcasting
    # error, fewer were cut from every STFT after the first.
    n_frames = phase.shape[-1] if not estimates.is_complex() else _n_frames(L, n_fft, hop_length, center)
    if n_frames != mag.shape[-1]:
        raise ValueError(f"misi: estimates have {mag.shape[-1]} frames but the mixture STFT has {n_frames}")
    for i in range(n_iter + 1):
        s = istft(mag * phase, n_fft, hop_length, window, center, length=L)
        delta = (y - s.sum(-2, keepdim=True)) / C
        if i == n_iter:
            break
        phase = _phasor(stft(s + delta, n_fft, hop_length, window, center))[..., : mag.shape[-1]]
    if mixture_consistent:
        s = s + delta
    if return_spectra:
        return s, stft(s, n_fft, hop_length, window, center)
    return s
