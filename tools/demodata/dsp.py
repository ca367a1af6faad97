"""Signal helpers of the data tool: zero-phase FFT filters, bandwidth extension, vibrato,
fades, levels and the exact int16 quantisation of a pair of stems."""
from __future__ import annotations

import numpy as np


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def _shape_spectrum(x: np.ndarray, sr: int, gain_of_freq) -> np.ndarray:
    """Multiply the spectrum of ``x`` (along axis 0) by ``gain_of_freq(f)``: zero phase."""
    n = x.shape[0]
    nfft = 1 << max(1, int(np.ceil(np.log2(n))))
    f = np.fft.rfftfreq(nfft, 1.0 / sr)
    X = np.fft.rfft(x, n=nfft, axis=0)
    X *= gain_of_freq(f).reshape((-1,) + (1,) * (x.ndim - 1))
    return np.fft.irfft(X, n=nfft, axis=0)[:n].astype(np.float32)


def fft_filter(x: np.ndarray, sr: int, cutoff: float, kind: str, width: float = 0.08) -> np.ndarray:
    """Zero-phase low/high-pass along axis 0: a raised-cosine transition of ``width * cutoff``
    centred on ``cutoff`` applied to the spectrum (no scipy needed)."""
    if kind not in ("lowpass", "highpass"):
        raise ValueError(f"unknown filter kind {kind!r}")
    half = 0.5 * width * cutoff

    def gain(f):
        ramp = np.clip((f - (cutoff - half)) / (2 * half), 0.0, 1.0)
        up = 0.5 - 0.5 * np.cos(np.pi * ramp)  # 0 below, 1 above the transition
        return up if kind == "highpass" else 1.0 - up

    return _shape_spectrum(x, sr, gain)


def tilt(x: np.ndarray, sr: int, db_per_octave: float, pivot_hz: float = 1000.0) -> np.ndarray:
    """A spectral tilt of ``db_per_octave`` around ``pivot_hz`` (a microphone's or a room's
    colour), limited to +-12 dB."""
    def gain(f):
        octaves = np.log2(np.maximum(f, 20.0) / pivot_hz)
        return 10 ** (np.clip(db_per_octave * octaves, -12.0, 12.0) / 20)

    return _shape_spectrum(x, sr, gain)


def _smooth_envelope(x: np.ndarray, sr: int, ms: float = 5.0) -> np.ndarray:
    n = max(1, int(sr * ms / 1000))
    return np.convolve(np.abs(x), np.ones(n) / n, mode="same").astype(np.float32)


def bandwidth_extend(x: np.ndarray, sr: int, native_nyquist: float, rel_db: float,
                     noise_share: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Add a high band above a band-limited voice's native Nyquist, ``rel_db`` below it.

    Two components, both co-modulated with the voice as real high bands are: harmonics of
    ``x * |x|`` (the voiced part) and, for ``noise_share`` of the band's energy, white noise
    under the envelope of the voice's top octave (sibilants and breath live there), tilted
    down by 6 dB per octave above the Nyquist."""
    if native_nyquist >= 0.45 * sr:
        return x
    cut = native_nyquist * 1.02
    peak = float(np.max(np.abs(x))) + 1e-9
    harmonic = fft_filter((x / peak) * np.abs(x / peak), sr, cut, "highpass")
    hb = harmonic / rms(harmonic)
    if noise_share > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        env = _smooth_envelope(fft_filter(x, sr, 0.5 * native_nyquist, "highpass"), sr)
        noise = env * rng.standard_normal(x.shape[0]).astype(np.float32)
        tilt = lambda f: np.minimum(1.0, cut / np.maximum(f, 1.0))  # noqa: E731
        noise = fft_filter(_shape_spectrum(noise, sr, tilt), sr, cut, "highpass")
        hb = np.sqrt(1 - noise_share) * hb + np.sqrt(noise_share) * noise / rms(noise)
    g = rms(x) * 10 ** (rel_db / 20) / rms(hb)
    return (x + g * hb).astype(np.float32)


def vibrato(x: np.ndarray, sr: int, rate_hz: float, depth_semitones: float) -> np.ndarray:
    """Vibrato by a sinusoidally modulated delay line (pitch deviation = depth_semitones)."""
    t = np.arange(x.shape[0]) / sr
    # Delay d(t) = D sin(2 pi f t) gives a pitch ratio 1 - d'(t); choose D for the given depth.
    dev = 2 ** (depth_semitones / 12) - 1
    D = dev / (2 * np.pi * rate_hz)
    pos = (t - D * np.sin(2 * np.pi * rate_hz * t) - D) * sr
    return np.interp(pos, np.arange(x.shape[0]), x, left=0.0, right=0.0).astype(np.float32)


def fade(x: np.ndarray, sr: int, ms: float = 10.0) -> np.ndarray:
    n = min(x.shape[0] // 2, int(sr * ms / 1000))
    if n > 0:
        ramp = np.linspace(0, 1, n, dtype=np.float32)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def trim_silence(x: np.ndarray, sr: int, threshold: float = 1e-3) -> np.ndarray:
    """Cut leading/trailing samples below ``threshold`` (keeping 20 ms), so gaps are ours."""
    nz = np.flatnonzero(np.abs(x) > threshold)
    if not nz.size:
        return x
    return x[max(0, nz[0] - sr // 50): nz[-1] + sr // 50]


def quantise_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int16 stems and their exact int16 sum (caller keeps |a + b| < 1)."""
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("stems hold NaN/Inf (a silent track normalised?)")  # NaN casts to 0 or INT_MIN
    qa = np.round(a * 32767).astype(np.int32)
    qb = np.round(b * 32767).astype(np.int32)
    qm = qa + qb
    if np.abs(qm).max() > 32767:
        raise AssertionError("mixture would clip; normalisation failed")
    return qa.astype(np.int16), qb.astype(np.int16), qm.astype(np.int16)


def _hann(n_fft: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)


def _frame_count(n: int, n_fft: int, hop: int) -> int:
    """Frames ``_stft`` gives for ``n`` samples (padded by ``n_fft`` before, ``n_fft + hop`` after)."""
    return 1 + (n + n_fft + hop) // hop


def _stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Frames of a periodic-Hann STFT (frames, bins); ``x`` padded by ``n_fft`` at both ends."""
    xp = np.pad(x.astype(np.float64), (n_fft, n_fft + hop))
    idx = np.arange(n_fft)[None, :] + hop * np.arange(_frame_count(x.shape[0], n_fft, hop))[:, None]
    return np.fft.rfft(xp[idx] * _hann(n_fft), axis=1)


def _istft(X: np.ndarray, n_fft: int, hop: int, n: int) -> np.ndarray:
    """Weighted overlap-add inverse of ``_stft`` (Hann analysis and synthesis)."""
    w = _hann(n_fft)
    frames = np.fft.irfft(X, n=n_fft, axis=1) * w
    length = hop * (X.shape[0] - 1) + n_fft
    y = np.zeros(length)
    norm = np.zeros(length)
    for i, f in enumerate(frames):
        y[i * hop: i * hop + n_fft] += f
        norm[i * hop: i * hop + n_fft] += w * w
    return (y / np.maximum(norm, 1e-8))[n_fft: n_fft + n]


def spectral_envelope(log_mag: np.ndarray, lifter: int) -> np.ndarray:
    """Cepstrally smoothed log magnitude (frames, bins): the first ``lifter`` quefrencies."""
    n_fft = 2 * (log_mag.shape[1] - 1)
    c = np.fft.irfft(log_mag, n=n_fft, axis=1)
    c[:, lifter: n_fft - lifter + 1] = 0.0
    return np.fft.rfft(c, axis=1).real


def formant_warp(x: np.ndarray, sr: int, low: np.ndarray, high: np.ndarray, pivot_hz: float = 1000.0,
                 n_fft: int = 2048, max_gain_db: float = 24.0) -> np.ndarray:
    """Move the formants of a voice without moving its pitch: another vowel or singer.

    The spectral envelope (cepstrum liftered below the period of a 600 Hz pitch: the training
    registers reach 660 Hz, harmonies lie below) is warped
    along frequency, by ``low[t]`` below ``pivot_hz`` (the first formant) and ``high[t]`` above
    it (the second and higher), per STFT frame ``t`` (arrays of the frame count, see
    ``formant_frames``), and the fine structure (the harmonics) is kept: each bin is scaled
    by new envelope / old envelope, limited to ``max_gain_db``."""
    hop = n_fft // 4
    X = _stft(x, n_fft, hop)
    if low.shape[0] != X.shape[0] or high.shape[0] != X.shape[0]:
        raise ValueError(f"formant_warp: {X.shape[0]} frames, factors for {low.shape[0]} and {high.shape[0]}")
    f = np.fft.rfftfreq(n_fft, 1.0 / sr)
    env = spectral_envelope(np.log(np.abs(X) + 1e-7), lifter=int(sr / 600))
    gain = np.empty_like(env)
    for t in range(X.shape[0]):
        # Output frequency -> source frequency: pivot_hz moves to low*pivot_hz, above it by high.
        out_knots = [0.0, low[t] * pivot_hz, low[t] * pivot_hz + high[t] * (f[-1] - pivot_hz)]
        src = np.interp(f, out_knots, [0.0, pivot_hz, f[-1]])
        gain[t] = np.interp(src, f, env[t]) - env[t]
    gain = np.clip(gain, -max_gain_db / 8.686, max_gain_db / 8.686)  # dB -> nepers
    y = _istft(X * np.exp(gain), n_fft, hop, x.shape[0])
    return (y * rms(x) / rms(y)).astype(np.float32)


def formant_frames(rng: np.random.Generator, n: int, n_fft: int = 2048, spread: float = 1.25,
                   seconds: tuple[float, float] = (0.3, 1.2), sr: int = 44100) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame warp factors for ``formant_warp`` of ``n`` samples: a new (low, high) pair,
    log-uniform in [1/spread, spread], every 0.3-1.2 s, glided between (vowels change)."""
    hop = n_fft // 4
    frames = _frame_count(n, n_fft, hop)
    t_knots, t = [0.0], 0.0
    while t < frames:
        t += rng.uniform(*seconds) * sr / hop
        t_knots.append(t)
    k = len(t_knots)
    lo = np.exp(rng.uniform(-np.log(spread), np.log(spread), k))
    hi = np.exp(rng.uniform(-np.log(spread), np.log(spread), k))
    grid = np.arange(frames)
    return np.interp(grid, t_knots, lo), np.interp(grid, t_knots, hi)
