"""Training objectives of the deep clustering family, and the SI-SDR metric.

Mask-inference (MI) losses compare masked mixtures with the sources (Wang et al., "Alternative
objective functions for deep clustering", ICASSP 2018); WA and WA-MISI compare waveforms
(Wang et al., "End-to-end speech separation with unfolded iterative phase reconstruction",
Interspeech 2018); SI-SDR follows Le Roux et al., "SDR – half-baked or well done?", ICASSP 2019.

Conventions: spectrograms ``(B, C, F, T)`` (sources) and ``(B, F, T)`` (mixture), waveforms
``(B, C, L)`` and ``(B, L)``. Spectral losses average |error| (L1) or |error|² (L2) over
sources and time-frequency bins, waveform losses over sources and samples, then over the
batch. ``pit=True`` takes the best source permutation per item (speech); the default keeps
the fixed source order (music: one output per instrument).

:func:`objective` builds the callables ``(output, mixture, sources) -> loss`` used by the
trainer, where ``output`` is a :class:`chimera.models.ModelOutput` and ``mixture``/``sources``
are the waveforms.
"""
from __future__ import annotations

import itertools
import math

import torch

from . import signal


def _losses():
    # Imported on use: chimera.losses re-exports this module, so neither may import the other at load time.
    from . import losses

    return losses

NORMS = ("l1", "l2")


# ----------------------------------------------------------------------------- SI-SDR

def _si_sdr_parts(estimate, reference, zero_mean):
    if estimate.shape[-1] != reference.shape[-1]:
        raise ValueError(f"si_sdr: estimate has {estimate.shape[-1]} samples, reference {reference.shape[-1]}")
    if zero_mean:
        estimate = estimate - estimate.mean(-1, keepdim=True)
        reference = reference - reference.mean(-1, keepdim=True)
    ref_energy = reference.pow(2).sum(-1, keepdim=True)
    dot = (estimate * reference).sum(-1, keepdim=True)
    # A silent reference has no scale to fit; alpha = 0 makes the whole estimate residual.
    alpha = torch.where(ref_energy > 0, dot / torch.where(ref_energy > 0, ref_energy, 1), 0)
    target = alpha * reference
    return target.pow(2).sum(-1), (estimate - target).pow(2).sum(-1)


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, zero_mean: bool = False) -> torch.Tensor:
    """Scale-invariant SDR in dB over the last axis (shapes broadcast), computed in float64.

    SI-SDR = 10 log10(‖α s‖² / ‖α s − ŝ‖²) with α = ⟨ŝ, s⟩ / ‖s‖². Edge cases: a perfect
    estimate gives +inf; a silent reference or an estimate orthogonal to (or silent
    against) the reference gives −inf (nothing of the target is recovered), never NaN.
    """
    num, den = _si_sdr_parts(estimate.to(torch.float64), reference.to(torch.float64), zero_mean)
    out = 10 * torch.log10(num) - 10 * torch.log10(den)
    return torch.where(num > 0, out, -math.inf)


def si_sdr_loss(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8, zero_mean: bool = False,
                reduction: str = "mean") -> torch.Tensor:
    """Negative SI-SDR (dB) with ``eps`` added to both energies, so it stays finite and
    differentiable for perfect estimates and silent references."""
    num, den = _si_sdr_parts(estimate, reference, zero_mean)
    loss = -10 * torch.log10((num + eps) / (den + eps))
    return _reduce(loss, reduction)


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")


# ----------------------------------------------------------------------------- PIT

def pit_from_matrix(pairwise: torch.Tensor):
    """``pairwise[b, i, j]``: loss of estimate ``i`` against target ``j``. Returns
    ``(loss (B,), perm (B, C))`` minimising the mean over targets of
    ``pairwise[b, perm[b, j], j]``: estimate ``perm[b, j]`` goes with target ``j``."""
    B, C, C2 = pairwise.shape
    if C != C2:
        raise ValueError(f"pit: pairwise loss matrix must be square, got {tuple(pairwise.shape)}")
    perms = torch.tensor(list(itertools.permutations(range(C))), device=pairwise.device)  # (P, C)
    cols = torch.arange(C, device=pairwise.device)
    totals = pairwise[:, perms, cols].mean(-1)  # (B, P)
    loss, best = totals.min(-1)
    return loss, perms[best]


def pit(pair_loss, estimates: torch.Tensor, targets: torch.Tensor):
    """Permutation-invariant training: ``pair_loss(estimate, target) -> (B,)`` for one
    source ``(B, ...)``; ``estimates``/``targets`` ``(B, C, ...)``. Returns
    ``(loss (B,), perm (B, C))`` as :func:`pit_from_matrix`; the loss keeps its gradient."""
    if estimates.shape[:2] != targets.shape[:2]:
        raise ValueError(f"pit: estimates {tuple(estimates.shape)} and targets {tuple(targets.shape)} differ in (B, C)")
    C = estimates.shape[1]
    pairwise = torch.stack([torch.stack([pair_loss(estimates[:, i], targets[:, j]) for j in range(C)], -1)
                            for i in range(C)], -2)
    return pit_from_matrix(pairwise)


def permute_sources(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Reorder ``x (B, C, ...)`` so that ``out[b, j] = x[b, perm[b, j]]`` (aligns estimates with targets)."""
    index = perm.reshape(*perm.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)


def _match(pred, target, norm, pit_):
    """Mean |pred − target|^p over everything but the batch, in fixed order or with PIT; → scalar."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
    if pred.shape != target.shape:
        raise ValueError(f"estimates {tuple(pred.shape)} and targets {tuple(target.shape)} differ in shape")
    err = lambda a, b: (a - b).abs() if norm == "l1" else (a - b).abs().pow(2)  # noqa: E731
    if not pit_:
        return err(pred, target).mean()
    dims = tuple(range(3, pred.dim() + 1))
    pairwise = err(pred.unsqueeze(2), target.unsqueeze(1)).mean(dims)  # (B, C_est, C_tgt)
    return pit_from_matrix(pairwise)[0].mean()


# ----------------------------------------------------------------------------- mask inference

def tpsa_target(mixture_spec: torch.Tensor, source_specs: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Truncated phase-sensitive target min(max(|S| cos(θ_S − θ_X), 0), γ|X|) ``(B, C, F, T)``."""
    X = mixture_spec.unsqueeze(1)
    mag = X.abs()
    # |S| cos(θS − θX) = Re(S X*) / |X|; it is 0 where the mixture is silent.
    proj = (source_specs * X.conj()).real / torch.where(mag > 0, mag, 1)
    return torch.minimum(proj.clamp_min(0), gamma * mag)


def msa_loss(masks, mixture_spec, source_specs, norm="l1", pit=False):
    """MI-MSA: ‖|M̂| |X| − |S|‖ (complex masks contribute their magnitude)."""
    return _match(masks.abs() * mixture_spec.abs().unsqueeze(1), source_specs.abs(), norm, pit)


def tpsa_loss(masks, mixture_spec, source_specs, gamma=2.0, norm="l1", pit=False):
    """MI-tPSA: ‖M̂ |X| − T(|S| cos(θ_S − θ_X))‖ with truncation to [0, γ|X|]. Complex masks
    contribute Re(M̂), the part of M̂X along the mixture phase."""
    pred = (masks.real if masks.is_complex() else masks) * mixture_spec.abs().unsqueeze(1)
    return _match(pred, tpsa_target(mixture_spec, source_specs, gamma), norm, pit)


def csa_loss(masks, mixture_spec, source_specs, norm="l1", pit=False):
    """CSA: ‖M̂ X − S‖ on complex spectra."""
    return _match(masks * mixture_spec.unsqueeze(1), source_specs, norm, pit)


def wa_loss(estimates, sources, stft, pit=False):
    """WA: L1 between the iSTFT of the masked mixture ``estimates (B, C, F, T)`` and the
    source waveforms ``(B, C, L)``; ``stft`` is a :class:`chimera.models.StftConfig`."""
    window = stft.window_tensor(estimates.device, estimates.real.dtype)
    y = signal.istft(estimates, stft.n_fft, stft.hop_length, window, center=True, length=sources.shape[-1])
    return _match(y, sources, "l1", pit)


def wa_misi_loss(estimates, mixture, sources, stft, n_iter=5, pit=False):
    """WA-MISI-K: L1 between the sources and the waveforms after ``n_iter`` unfolded MISI
    iterations (differentiable) starting from ``estimates``."""
    window = stft.window_tensor(estimates.device, estimates.real.dtype)
    y = signal.misi(mixture, estimates, n_iter, stft.n_fft, stft.hop_length, window)
    return _match(y, sources, "l1", pit)


# ----------------------------------------------------------------------------- deep clustering

def dc_targets(mixture_spec, source_specs, weights=None):
    """Deep-clustering targets for an embedding in :func:`chimera.models.flatten_bins` order:
    ``(one-hot (B, N, C) float, weight (B, N) or None)``, N = T·F with frequency fastest.
    ``weights``: None, ``"mr"`` (magnitude ratio, DC-W) or ``"va"`` (voice activity)."""
    B, C = source_specs.shape[:2]
    # Work in (B, [C,] T, F) so that a plain reshape gives frequency-fastest bins.
    labels = _losses().ideal_binary_labels(source_specs.abs().transpose(-1, -2)).reshape(B, -1)
    target = torch.nn.functional.one_hot(labels.long(), C).to(source_specs.real.dtype)
    mix_mag = mixture_spec.abs().transpose(-1, -2)
    if weights is None:
        weight = None
    elif weights == "mr":
        weight = _losses().magnitude_ratio_weights(mix_mag).reshape(B, -1)
    elif weights == "va":
        weight = _losses().voice_activity_weights(mix_mag).reshape(B, -1)
    else:
        raise ValueError(f"unknown DC weights {weights!r}; use None, 'mr' or 'va'")
    return target, weight


# ----------------------------------------------------------------------------- registry

def _source_specs(output, sources):
    st = output.stft
    if sources.dim() != 3:
        raise ValueError(f"objective: sources must be waveforms (B, C, L), got {tuple(sources.shape)}")
    window = st.window_tensor(sources.device, sources.dtype)
    return signal.stft(sources, st.n_fft, st.hop_length, window, center=True)


def _need(output, what, name):
    if getattr(output, what) is None:
        head = "embedding (DC) head" if what == "embedding" else "mask head"
        raise ValueError(f"objective {name!r} needs a model with a {head}")


class Objective:
    """``(output, mixture, sources) -> scalar loss``; see :func:`objective`."""

    def __init__(self, name: str, **options):
        self.name, self.options = name, options

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"objective({self.name!r}{', ' if opts else ''}{opts})"


class _DC(Objective):
    def __init__(self, name, weights=None):
        super().__init__(name, weights=weights)
        if weights not in (None, "mr", "va"):
            raise ValueError(f"objective {name!r}: unknown weights {weights!r}; use None, 'mr' or 'va'")
        self.weights = weights

    def __call__(self, output, mixture, sources):
        _need(output, "embedding", self.name)
        target, weight = dc_targets(output.mixture_spec, _source_specs(output, sources), self.weights)
        return _losses().deep_clustering_loss(output.embedding, target.to(output.embedding.dtype), weight)


class _MI(Objective):
    _SPECTRAL = {"msa": msa_loss, "tpsa": tpsa_loss, "csa": csa_loss}

    def __init__(self, name, pit=False, norm="l1", gamma=2.0, misi_iters=5, eps=1e-8):
        opts = dict(pit=pit)
        if name in self._SPECTRAL:
            if norm not in NORMS:
                raise ValueError(f"objective {name!r}: unknown norm {norm!r}; use one of {NORMS}")
            opts["norm"] = norm
        if name == "tpsa":
            if gamma <= 0:
                raise ValueError(f"objective 'tpsa': gamma must be positive, got {gamma}")
            opts["gamma"] = gamma
        if name == "wa-misi":
            if misi_iters < 0:
                raise ValueError(f"objective 'wa-misi': misi_iters must be >= 0, got {misi_iters}")
            opts["misi_iters"] = misi_iters
        if name == "si-sdr":
            opts["eps"] = eps
        super().__init__(name, **opts)

    def __call__(self, output, mixture, sources):
        _need(output, "masks", self.name)
        o, pit_ = self.options, self.options["pit"]
        if self.name in self._SPECTRAL:
            kw = {"gamma": o["gamma"]} if self.name == "tpsa" else {}
            return self._SPECTRAL[self.name](output.masks, output.mixture_spec, _source_specs(output, sources),
                                             norm=o["norm"], pit=pit_, **kw)
        if self.name == "wa":
            return wa_loss(output.estimates, sources, output.stft, pit=pit_)
        if self.name == "wa-misi":
            return wa_misi_loss(output.estimates, mixture, sources, output.stft, o["misi_iters"], pit=pit_)
        # si-sdr
        st = output.stft
        window = st.window_tensor(sources.device, sources.dtype)
        y = signal.istft(output.estimates, st.n_fft, st.hop_length, window, center=True, length=sources.shape[-1])
        if pit_:
            loss, _ = pit(lambda a, b: si_sdr_loss(a, b, o["eps"], reduction="none"), y, sources)
            return loss.mean()
        return si_sdr_loss(y, sources, o["eps"])


class _Chimera(Objective):
    def __init__(self, name, alpha=0.975, mi="tpsa", dc="dcw", dc_weights="default", **mi_options):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"objective 'chimera': alpha must be in [0, 1], got {alpha}")
        if mi not in MI_NAMES:
            raise ValueError(f"objective 'chimera': mi must be one of {MI_NAMES}, got {mi!r}")
        if dc not in ("dc", "dcw"):
            raise ValueError(f"objective 'chimera': dc must be 'dc' or 'dcw', got {dc!r}")
        self.dc = objective(dc) if dc_weights == "default" else objective(dc, weights=dc_weights)
        self.mi = objective(mi, **mi_options)
        super().__init__(name, alpha=alpha, mi=mi, dc=dc, dc_weights=self.dc.weights, **self.mi.options)
        self.alpha = alpha
        self.last = {}  # detached DC and MI terms of the latest call, for logging

    def __call__(self, output, mixture, sources):
        a = self.alpha
        loss, self.last = 0.0, {}
        if a > 0:
            dc = self.dc(output, mixture, sources)
            loss, self.last["dc"] = loss + a * dc, dc.detach()
        if a < 1:
            mi = self.mi(output, mixture, sources)
            loss, self.last["mi"] = loss + (1 - a) * mi, mi.detach()
        return loss


MI_NAMES = ("msa", "tpsa", "csa", "wa", "wa-misi", "si-sdr")
OBJECTIVES = ("dc", "dcw", *MI_NAMES, "chimera")


def objective(name: str, **options) -> Objective:
    """Loss callable ``(output, mixture waveform (B, L), source waveforms (B, C, L)) -> scalar``.

    - ``"dc"`` (no weights; ``weights="va"`` for voice-activity weights) and ``"dcw"``
      (magnitude-ratio weights): deep clustering on ideal binary labels.
    - ``"msa"``, ``"tpsa"`` (``gamma=2.0``), ``"csa"``: MI losses, ``norm="l1"|"l2"``.
    - ``"wa"``; ``"wa-misi"`` (``misi_iters=5``); ``"si-sdr"`` (negative SI-SDR after iSTFT).
    - ``"chimera"``: ``alpha``·DC + (1 − ``alpha``)·MI with ``alpha=0.975`` (Chimera++; the
      torch-chimera recipe uses 0.95), ``mi="tpsa"``, ``dc="dcw"`` (``dc_weights`` overrides its
      weights); other options go to the MI loss. Its ``last`` dict holds the latest DC and MI terms.

    MI losses take ``pit=True`` for permutation-invariant training (default: fixed order).
    """
    if name in ("dc", "dcw"):
        if name == "dcw":
            options.setdefault("weights", "mr")
        _check_options(name, options, ("weights",))
        return _DC(name, **options)
    if name in MI_NAMES:
        allowed = {"msa": ("norm",), "csa": ("norm",), "tpsa": ("norm", "gamma"), "wa": (),
                   "wa-misi": ("misi_iters",), "si-sdr": ("eps",)}[name]
        _check_options(name, options, ("pit", *allowed))
        return _MI(name, **options)
    if name == "chimera":
        return _Chimera(name, **options)
    raise ValueError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")


def _check_options(name, options, allowed):
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"objective {name!r}: unknown option(s) {unknown}; it takes {list(allowed)}")
