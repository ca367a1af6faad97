"""Input features: floored log-magnitude, normalised per frequency with stored statistics."""
from __future__ import annotations

import torch
from torch import nn

# Absolute floor (linear magnitude) so that an all-silent input still gives finite features.
_ABS_FLOOR = 1e-8


class LogMagnitude(nn.Module):
    """``(B, F, T)`` magnitude → ``(B, T, F)`` normalised log-magnitude (dB).

    Bins are floored at ``floor_db`` below the utterance's loudest bin (and at an absolute
    1e-8), so silence and zero padding never produce the -400 dB outliers of ``log(1e-20)``.
    ``mean``/``std`` (per frequency, in dB) are buffers, saved with the model; they start
    as 0 / 1 (identity) until :func:`fit_statistics` sets them.
    """

    def __init__(self, n_freq: int, floor_db: float = -80.0):
        super().__init__()
        self.n_freq = n_freq
        self.floor_db = float(floor_db)
        self.register_buffer("mean", torch.zeros(n_freq))
        self.register_buffer("std", torch.ones(n_freq))

    def log_magnitude(self, mag: torch.Tensor) -> torch.Tensor:
        if mag.shape[-2] != self.n_freq:
            raise ValueError(f"LogMagnitude: expected {self.n_freq} frequency bins, got shape {tuple(mag.shape)}")
        peak = mag.detach().flatten(-2).amax(-1).clamp_min(_ABS_FLOOR)[..., None, None]
        floor = peak * 10.0 ** (self.floor_db / 20.0)
        return 20.0 * torch.log10(torch.maximum(mag, floor))

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        logmag = self.log_magnitude(mag).transpose(-1, -2)
        return (logmag - self.mean) / self.std


@torch.no_grad()
def fit_statistics(model, mixtures, min_std: float = 1e-3):
    """Set the per-frequency feature mean/std of ``model`` from mixture waveforms.

    ``mixtures``: an iterable of waveform batches ``(B, L)`` (or ``(L,)``), e.g. a data
    loader's mixtures; statistics are pooled over every frame. Returns ``(mean, std)``.
    """
    features: LogMagnitude = model.features
    count = 0
    total = torch.zeros(features.n_freq, dtype=torch.float64)
    total_sq = torch.zeros(features.n_freq, dtype=torch.float64)
    for wav in mixtures:
        wav = torch.as_tensor(wav)
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        # at least float32: a half model's STFT is taken in float32, from the unrounded waveform
        spec = model.spectrogram(wav.to(model.window.device, torch.promote_types(features.mean.dtype, torch.float32)))
        logmag = features.log_magnitude(spec.abs()).to(torch.float64).cpu()  # (B, F, T)
        total += logmag.sum((0, 2))
        total_sq += logmag.pow(2).sum((0, 2))
        count += logmag.shape[0] * logmag.shape[2]
    if count == 0:
        raise ValueError("fit_statistics: no mixtures were given")
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt().clamp_min(min_std)
    features.mean.copy_(mean.to(features.mean))
    features.std.copy_(std.to(features.std))
    return features.mean.clone(), features.std.clone()
