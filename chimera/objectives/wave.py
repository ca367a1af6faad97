"""Waveform losses: WA and WA-MISI-K (Wang, Le Roux, Wang & Hershey, "End-to-end speech separation
with unfolded iterative phase reconstruction", Interspeech 2018), and negative SI-SDR.

``estimates`` are masked mixtures ``(B, C, F, T)``; ``sources`` waveforms ``(B, C, L)``; ``stft``
a :class:`chimera.models.StftConfig`. Errors average over sources and samples, then the batch.
"""
from .. import signal
from . import metrics
from .metrics import match_error, si_sdr_loss


def _waveforms(estimates, stft, length):
    window = stft.window_tensor(estimates.device, estimates.real.dtype)
    return signal.istft(estimates, stft.n_fft, stft.hop_length, window, center=True, length=length)


def wa_loss(estimates, sources, stft, pit=False):
    """WA: L1 between the iSTFT of the masked mixture ``estimates`` and the sources."""
    return match_error(_waveforms(estimates, stft, sources.shape[-1]), sources, "l1", pit)


def wa_misi_loss(estimates, mixture, sources, stft, n_iter=5, pit=False):
    """WA-MISI-K: L1 between the sources and the waveforms after ``n_iter`` unfolded MISI
    iterations (differentiable) starting from ``estimates``."""
    window = stft.window_tensor(estimates.device, estimates.real.dtype)
    y = signal.misi(mixture, estimates, n_iter, stft.n_fft, stft.hop_length, window)
    return match_error(y, sources, "l1", pit)


def wave_si_sdr_loss(estimates, sources, stft, eps=1e-8, pit=False):
    """Negative SI-SDR (dB, see :func:`~chimera.objectives.si_sdr_loss`) of the iSTFT of
    ``estimates`` against the sources, averaged over sources and the batch."""
    y = _waveforms(estimates, stft, sources.shape[-1])
    if y.shape != sources.shape:  # si_sdr_loss broadcasts: one source would be scored against every estimate
        raise ValueError(f"estimates {tuple(y.shape)} and targets {tuple(sources.shape)} differ in shape")
    if pit:
        return metrics.pit(lambda a, b: si_sdr_loss(a, b, eps, reduction="none"), y, sources)[0].mean()
    return si_sdr_loss(y, sources, eps)

