"""Multichannel Wiener filtering of mask-based estimates (a post-process for stereo input).

The model separates each channel on its own. Its estimates give each source a power
spectrogram ``v_j(f, t)`` (mean over channels) and a spatial covariance ``R_j(f)`` (how the
source sits between the channels: a panned voice is nearly rank one, a wide mix is not).
The filter ``Y_j = v_j R_j (Σ_k v_k R_k)^{-1} X`` then re-estimates every source from all
channels of the mixture ``X`` at once: what a panned source cannot contain (energy in the
direction orthogonal to it) goes to the others. Iterating re-estimates ``v`` and ``R`` from
the new sources (the EM of Duong, Vincent & Gribonval 2010, without the posterior
covariance term). The ridge that keeps the inverse stable (``ridge I`` in the mixture's
covariance) is shared among the sources' numerators by their power, so the sources always
add up to the mixture, also where no source's model spans it. With one channel it reduces to
the power-ratio mask ``v_j / Σ_k v_k``.

``exponent`` p replaces ``v_j`` by ``v_j^p`` in the filter: below 1 the shares of a bin are
softer (p = 0.5 weighs the sources by magnitude, not power), above 1 harder.
"""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["check_exponent", "multichannel_wiener"]

# Regularisation of the mixture covariance, relative to its mean power, so silent bins and
# rank-deficient covariances invert stably; small enough not to bias audible bins.
_RIDGE = 1e-9
_FLOOR = 1e-30  # absolute, for all-silent segments (its square must not underflow)


def check_exponent(exponent, name: str = "exponent") -> float:
    """``exponent`` as a float if it is a finite number > 0; a ValueError naming ``name`` otherwise."""
    if not (isinstance(exponent, numbers.Real) and math.isfinite(exponent) and exponent > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {exponent!r}")
    return float(exponent)


def _solve_small(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``a x = b`` for batches of 1 x 1 matrices in closed form (batched LU on millions
    of tiny matrices is far slower); larger ones go to ``torch.linalg.solve``. (Two channels
    never come here: `_stereo_refine` has their closed form.)"""
    if a.shape[-1] == 1:
        return b / a[..., 0, :]
    return torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1)


def _power_and_spatial(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Power ``v`` (..., C, F, T) and spatial covariance ``R`` (..., C, F, I, I) of the source
    STFTs ``y`` (..., C, F, T, I): R_j(f) = sum_t y y^H / sum_t v, unit trace per channel on
    average."""
    v = y.abs().square().mean(-1)
    cov = torch.einsum("...cfti,...cftk->...cfik", y, y.conj())
    return v, cov / v.sum(-1).clamp_min(torch.finfo(torch.float64).tiny)[..., None, None]


def _ridge_shares(v: torch.Tensor, ridge: torch.Tensor) -> torch.Tensor:
    """Each source's part of the ridge, ridge * v_j / sum_k v_k (ridge / C where every v is
    0), (..., C, f, T): with it in the numerators, Y_j = (v_j R_j + s_j I) C^{-1} X, the
    sources add up to X exactly. Without it they missed ridge C^{-1} X, which is X itself
    in the directions that no source's model spans (more channels than the segment has
    frames of signal, or one source: a 16-channel input of 30 ms missed by -32 dB)."""
    total = v.sum(-3, keepdim=True)
    share = torch.where(total > 0, v / total.clamp_min(torch.finfo(v.dtype).tiny), 1.0 / v.shape[-3])
    return share.mul_(ridge[..., None, None, None])


def _refine(v: torch.Tensor, r: torch.Tensor, x: torch.Tensor, ridge: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """One Wiener update Y_j = (v_j R_j + s_j I) (sum_k v_k R_k + ridge I)^{-1} X of a block
    of bins (s_j: :func:`_ridge_shares`)."""
    v = v.to(r.dtype)
    mix_cov = torch.einsum("...cft,...cfik->...ftik", v, r) + ridge[..., None, None, None, None] * eye
    z = _solve_small(mix_cov, x)                          # (..., F, T, I): C^{-1} x
    y = torch.einsum("...cft,...cfik,...ftk->...cfti", v, r, z)
    return y.add_(_ridge_shares(v.real, ridge)[..., None].to(y.dtype) * z.unsqueeze(-4))


# Two channels (stereo, the usual case) in closed form: the 2 x 2 Hermitian covariances
# as their entries r00, r11 (real) and r01 (complex), so a block's temporaries are a few
# arrays of its size instead of einsum's (..., f, T, I, I) products (they were most of the
# page faults of `chimera predict`).
def _stereo_stats(y: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """`_power_and_spatial` for y (..., 2, C, f, T): v (..., C, f, T) and (r00, r11, r01),
    each (..., C, f), in float64 / complex128."""
    y0, y1 = y[..., 0, :, :, :].to(torch.complex128), y[..., 1, :, :, :].to(torch.complex128)
    p0, p1 = y0.abs().square(), y1.abs().square()
    r01 = (y0 * y1.conj()).sum(-1)
    r00, r11 = p0.sum(-1), p1.sum(-1)
    v = p0.add_(p1).div_(2)
    norm = v.sum(-1).clamp_min(torch.finfo(torch.float64).tiny)   # sum_t v: unit trace on average
    return v, (r00.div_(norm), r11.div_(norm), r01.div_(norm))


def _stereo_refine(v: torch.Tensor, r: tuple, x: torch.Tensor, ridge: torch.Tensor):
    """`_refine` for two channels: x (..., 2, f, T) complex128 → the sources' (..., C, f, T)
    images in channel 0 and in channel 1."""
    r00, r11, r01 = r

    def weighted(coef):  # sum over sources of v_j * coef_j: (..., f, T)
        return torch.einsum("...cft,...cf->...ft", v, coef)

    a = weighted(r00).add_(ridge[..., None, None])
    d = weighted(r11).add_(ridge[..., None, None])
    b = torch.complex(weighted(r01.real), weighted(r01.imag))
    det = a * d - b.abs().square()
    x0, x1 = x[..., 0, :, :], x[..., 1, :, :]
    z0 = ((d * x0).sub_(b * x1)).div_(det).unsqueeze(-3)           # C^{-1} x, over sources
    z1 = ((a * x1).sub_(b.conj() * x0)).div_(det).unsqueeze(-3)
    r00, r11, r01 = r00[..., None], r11[..., None], r01[..., None]
    s = _ridge_shares(v, ridge)
    return ((r00 * z0).add_(r01 * z1).mul_(v).add_(s * z0),
            (r01.conj() * z0).add_(r11 * z1).mul_(v).add_(s * z1))


def multichannel_wiener(estimates: torch.Tensor, mixture: torch.Tensor, iterations: int = 1,
                        block_bins: int = 16, inplace: bool = False, exponent: float = 1.0) -> torch.Tensor:
    """Refine source STFTs with a multichannel Wiener filter.

    estimates: ``(..., I, C, F, T)`` complex initial source STFTs of each of I channels;
    mixture: ``(..., I, F, T)`` the mixture STFTs. Returns ``(..., I, C, F, T)`` in the
    estimates' dtype; ``iterations = 0`` returns the estimates unchanged. ``exponent``: of
    the sources' powers in the filter (module docstring), > 0.

    Each frequency bin is filtered on its own (the spatial covariances are per bin), so the
    work runs on blocks of `block_bins` bins in complex128: the temporaries are those of one
    block, not of the whole spectrogram (they were ~9x the estimates' size in complex128).
    Only the ridge couples the bins (it is relative to the mean power over all of them):
    a first pass sums it. Between iterations the sources are kept in the estimates' dtype.
    ``inplace=True`` writes the result into `estimates` (which the caller gives up) instead
    of a new tensor of their size: the statistics of every block are taken before the first
    block is written.
    """
    if not isinstance(iterations, numbers.Integral) or iterations < 0:
        raise ValueError(f"multichannel_wiener: iterations must be a whole number >= 0, got {iterations!r}")
    # block_bins <= 0 ran no block: the result was torch.empty_like's uninitialised memory
    if not isinstance(block_bins, numbers.Integral) or block_bins < 1:
        raise ValueError(f"multichannel_wiener: block_bins must be a whole number >= 1, got {block_bins!r}")
    exponent = check_exponent(exponent, "multichannel_wiener: exponent")
    # real spectra would lose the filter's imaginary part in the copy back (only a warning)
    if not (estimates.is_complex() and mixture.is_complex()):
        raise TypeError(f"multichannel_wiener: expected complex STFTs, got estimates {estimates.dtype} "
                        f"and mixture {mixture.dtype}")
    if estimates.dim() < 4 or mixture.shape != estimates.shape[:-3] + estimates.shape[-2:]:
        raise ValueError(f"multichannel_wiener: estimates (..., I, C, F, T) {tuple(estimates.shape)} and "
                         f"mixture (..., I, F, T) {tuple(mixture.shape)} do not match")
    if iterations == 0 or estimates.numel() == 0:  # nothing to filter (no bins: the ridge's mean is 0 / 0)
        return estimates
    n_ch, F, T = mixture.shape[-3:]
    blocks = [slice(f0, min(F, f0 + block_bins)) for f0 in range(0, F, block_bins)]
    eye = torch.eye(n_ch, dtype=torch.complex128, device=mixture.device)
    y = estimates
    for _ in range(iterations):
        # Pass 1: power and spatial covariance per block, and the mean power of the mixture
        # model over all bins, times and channels (what the ridge is relative to). The powers
        # are kept for pass 2 (float64, every bin of the segment: a few MB; making them again
        # there cost 5-8 % of predict's time for 12 MB of its peak).
        kept, power = [], 0.0
        for sl in blocks:
            if n_ch == 2:
                v, r = _stereo_stats(y[..., sl, :])
                trace = r[0] + r[1]
            else:
                v, r = _power_and_spatial(y[..., sl, :].to(torch.complex128).movedim(-4, -1))
                trace = r.diagonal(dim1=-2, dim2=-1).real.sum(-1)      # (..., C, f)
            if exponent != 1.0:
                v = v.pow_(exponent)
            kept.append((v, r))
            power = power + (v.sum(-1) * trace).sum((-2, -1))          # (...,)
        ridge = _RIDGE * power / (F * T * n_ch) + _FLOOR
        # Pass 2: the update, block by block, into the output (a tensor of our own after
        # the first iteration, so only the first may need a new one).
        out = y if inplace or y is not estimates else torch.empty_like(estimates)
        for sl, (v, r) in zip(blocks, kept):
            x = mixture[..., sl, :].to(torch.complex128)               # (..., I, f, T)
            if n_ch == 2:
                out[..., 0, :, sl, :], out[..., 1, :, sl, :] = _stereo_refine(v, r, x, ridge)
            else:
                out[..., sl, :] = _refine(v, r, x.movedim(-3, -1), ridge, eye).movedim(-1, -4)
        y = out
    return y
