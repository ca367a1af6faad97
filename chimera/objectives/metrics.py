"""SI-SDR (metric and loss), permutation-invariant matching (PIT), and the L1/L2 distance with
optional PIT that the mask-inference and waveform losses share.

SI-SDR follows Le Roux et al., "SDR – half-baked or well done?", ICASSP 2019.
"""
from __future__ import annotations

import itertools
import math

import torch

from ._common import check_choice, reduce_loss

NORMS = ("l1", "l2")
#: PIT scores all C! permutations in one tensor: 10 sources take 3.6 M of them (0.15 GB per
#: batch item); 11 would take 1.6 GB per item and 12 about 19 GB, enough to kill the process.
MAX_PIT_SOURCES = 10


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
    against) the reference gives −inf (nothing of the target is recovered); NaN only where
    either input holds a NaN (a corrupt estimate must not look like a merely poor one).
    """
    num, den = _si_sdr_parts(estimate.to(torch.float64), reference.to(torch.float64), zero_mean)
    out = 10 * torch.log10(num) - 10 * torch.log10(den)
    return torch.where((num > 0) | num.isnan() | den.isnan(), out, -math.inf)


def si_sdr_loss(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8, zero_mean: bool = False,
                reduction: str = "mean") -> torch.Tensor:
    """Negative SI-SDR (dB) with ``eps`` added to both energies, so it stays finite and
    differentiable for perfect estimates and silent references. Half-precision inputs are
    scored in float32 (energies overflow float16 and ``eps`` underflows it) and the loss is
    returned in their dtype."""
    if not (estimate.is_floating_point() and reference.is_floating_point()):
        # integer samples would square (and overflow) in their own dtype and the loss be truncated
        raise TypeError(f"si_sdr_loss: estimate and reference must be real floating point, got {estimate.dtype} "
                        f"and {reference.dtype} (si_sdr scores any dtype)")
    dtype = torch.promote_types(estimate.dtype, reference.dtype)
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    num, den = _si_sdr_parts(estimate.to(work), reference.to(work), zero_mean)
    loss = -10 * torch.log10((num + eps) / (den + eps))
    return reduce_loss(loss, reduction).to(dtype)


# ----------------------------------------------------------------------------- PIT

def pit_from_matrix(pairwise: torch.Tensor):
    """``pairwise[b, i, j]``: loss of estimate ``i`` against target ``j``. Returns
    ``(loss (B,), perm (B, C))`` minimising the mean over targets of
    ``pairwise[b, perm[b, j], j]``: estimate ``perm[b, j]`` goes with target ``j``."""
    B, C, C2 = pairwise.shape
    if C != C2:
        raise ValueError(f"pit: pairwise loss matrix must be square, got {tuple(pairwise.shape)}")
    if not 1 <= C <= MAX_PIT_SOURCES:  # every one of the C! permutations is scored at once
        raise ValueError(f"pit: needs 1 to {MAX_PIT_SOURCES} sources ({MAX_PIT_SOURCES}! permutations), got {C}")
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


def match_error(pred, target, norm, pit_):
    """Mean |pred − target|^p (``norm`` "l1": p = 1, "l2": p = 2) over everything but the batch,
    in the fixed source order or with PIT, then over the batch: a scalar."""
    check_choice("norm", norm, NORMS)
    if pred.shape != target.shape:
        raise ValueError(f"estimates {tuple(pred.shape)} and targets {tuple(target.shape)} differ in shape")
    err = lambda a, b: (a - b).abs() if norm == "l1" else (a - b).abs().pow(2)  # noqa: E731
    if not pit_:
        return err(pred, target).mean()
    dims = tuple(range(3, pred.dim() + 1))
    pairwise = err(pred.unsqueeze(2), target.unsqueeze(1)).mean(dims)  # (B, C_est, C_tgt)
    return pit_from_matrix(pairwise)[0].mean()
