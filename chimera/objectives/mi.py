"""Mask-inference (MI) losses: MI-MSA, MI-tPSA and CSA (Wang, Le Roux & Hershey, "Alternative
objective functions for deep clustering", ICASSP 2018).

Spectrograms are ``(B, C, F, T)`` (sources, masks) and ``(B, F, T)`` (mixture); the losses
average |error| (L1) or |error|² (L2) over sources and bins, then over the batch, in the fixed
source order or, with ``pit=True``, the best permutation per item.
"""
import torch

from .metrics import match_error


def tpsa_target(mixture_spec: torch.Tensor, source_specs: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Truncated phase-sensitive target min(max(|S| cos(θ_S − θ_X), 0), γ|X|) ``(B, C, F, T)``."""
    X = mixture_spec.unsqueeze(1)
    mag = X.abs()
    # |S| cos(θS − θX) = Re(S X*) / |X|; it is 0 where the mixture is silent.
    proj = (source_specs * X.conj()).real / torch.where(mag > 0, mag, 1)
    return torch.minimum(proj.clamp_min(0), gamma * mag)


def msa_loss(masks, mixture_spec, source_specs, norm="l1", pit=False):
    """MI-MSA: ‖|M̂| |X| − |S|‖ (complex masks contribute their magnitude)."""
    return match_error(masks.abs() * mixture_spec.abs().unsqueeze(1), source_specs.abs(), norm, pit)


def tpsa_loss(masks, mixture_spec, source_specs, gamma=2.0, norm="l1", pit=False):
    """MI-tPSA: ‖M̂ |X| − T(|S| cos(θ_S − θ_X))‖ with truncation to [0, γ|X|]. Complex masks
    contribute Re(M̂), the part of M̂X along the mixture phase."""
    pred = (masks.real if masks.is_complex() else masks) * mixture_spec.abs().unsqueeze(1)
    return match_error(pred, tpsa_target(mixture_spec, source_specs, gamma), norm, pit)


def csa_loss(masks, mixture_spec, source_specs, norm="l1", pit=False):
    """CSA: ‖M̂ X − S‖ on complex spectra."""
    return match_error(masks * mixture_spec.unsqueeze(1), source_specs, norm, pit)
