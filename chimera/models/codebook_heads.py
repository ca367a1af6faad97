"""Codebook mask heads (Le Roux et al. 2019, "Phasebook and friends").

Each head maps features (B, T, in_features) to masks (B, C, F, T) for C sources and F
frequencies. A Linear layer gives F·C·K logits per frame, viewed as (B, T, F, C, K) so
chimera.ops.codebook_lookup consumes them with K innermost, without a permute copy; only
the (B, T, F, C) result is permuted (a view) to (B, C, F, T).
"""
import math

import torch
from torch import nn

from ..ops import codebook_lookup


def _check_mode(mode):
    if mode not in ("interpolate", "argmax"):
        raise ValueError(f"mode must be 'interpolate' or 'argmax', got {mode!r}")


class _CodebookLogits(nn.Module):
    """Linear in_features -> F·C·K, reshaped to (B, T, F, C, K)."""

    def __init__(self, in_features, n_freq, n_sources, n_entries):
        super().__init__()
        if min(in_features, n_freq, n_sources, n_entries) < 1:
            raise ValueError(
                f"in_features, n_freq, n_sources and the codebook size must be positive, got {in_features}, "
                f"{n_freq}, {n_sources}, {n_entries}"
            )
        self.n_freq, self.n_sources, self.n_entries = n_freq, n_sources, n_entries
        self.linear = nn.Linear(in_features, n_freq * n_sources * n_entries)

    def forward(self, h):
        if h.dim() != 3 or h.shape[-1] != self.linear.in_features:
            raise ValueError(f"expected features (B, T, {self.linear.in_features}), got {tuple(h.shape)}")
        B, T, _ = h.shape
        return self.linear(h).view(B, T, self.n_freq, self.n_sources, self.n_entries)


def _book_dtype(linear):
    """The codebook's real dtype for a head whose logits come from ``linear``: that of a float64
    model, else float32 (codebook_lookup takes float16/bfloat16 logits with a float32 codebook
    only, so a ``.half()`` model keeps it in float32)."""
    return torch.float64 if linear.weight.dtype == torch.float64 else torch.float32


def _to_bcft(mask):
    return mask.permute(0, 3, 2, 1)  # (B, T, F, C) -> (B, C, F, T)


class MagbookHead(nn.Module):
    """Real mask Σₖ softmax(z)ₖ mₖ over a fixed magbook, {0, 1, 2} by default
    (Chimera++'s convex softmax mask)."""

    def __init__(self, in_features, n_freq, n_sources, magbook=(0.0, 1.0, 2.0)):
        super().__init__()
        magbook = torch.as_tensor(magbook, dtype=torch.float32)
        if magbook.dim() != 1 or magbook.numel() == 0 or magbook.is_complex():
            raise ValueError(f"magbook must be a non-empty 1-D real sequence, got {magbook}")
        self.register_buffer("codebook", magbook)
        self.head = _CodebookLogits(in_features, n_freq, n_sources, magbook.numel())

    @property
    def linear(self):
        return self.head.linear

    def logits(self, h):
        return self.head(h)

    def forward(self, h, mode="interpolate"):
        _check_mode(mode)
        return _to_bcft(codebook_lookup(self.logits(h), self.codebook.to(_book_dtype(self.linear)), mode))


class PhasebookHead(nn.Module):
    """Complex mask |m| · e^{iθ}: the magnitude from a magbook head ({0, 1, 2} by default), the
    phase from a fixed phasebook of K phasors e^{2πik/K} (K = 8 by default). The phasor is the
    softmax-weighted phasor sum divided by its magnitude (a unit phasor; 0 where the sum
    vanishes); with mode="argmax" both parts pick their most likely entry."""

    def __init__(self, in_features, n_freq, n_sources, n_phases=8, magbook=(0.0, 1.0, 2.0)):
        super().__init__()
        if n_phases < 1:
            raise ValueError(f"n_phases must be positive, got {n_phases}")
        self.magnitude = MagbookHead(in_features, n_freq, n_sources, magbook)
        angles = 2 * math.pi * torch.arange(n_phases, dtype=torch.float64) / n_phases
        # Stored as (K, 2) real parts, derived from n_phases and not saved: Module.to(dtype)
        # casts complex buffers to a real dtype, which kept only the cosines of the phasors.
        self.register_buffer("phasebook_real", torch.stack([angles.cos(), angles.sin()], -1), persistent=False)
        self.head = _CodebookLogits(in_features, n_freq, n_sources, n_phases)

    @property
    def phasebook(self):
        """The K unit phasors e^{2πik/K}, complex64 (complex128 in a float64 model)."""
        real = self.phasebook_real.to(_book_dtype(self.head.linear))
        return torch.view_as_complex(real.contiguous())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "phasebook", None)  # saved by earlier versions; derived from n_phases
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, h, mode="interpolate"):
        _check_mode(mode)
        magnitude = self.magnitude(h, mode)
        phasor = codebook_lookup(self.head(h), self.phasebook, mode, normalize=True)
        return magnitude * _to_bcft(phasor)


def combook_init(n_entries):
    """Distinct initial combook entries: 0, then ⌈(K−1)/2⌉ points on the unit circle at
    angles 2πj/n₁ and the rest on the circle of radius 2 at angles offset by half a step,
    2π(j + ½)/n₂, so the rings interleave and no angle (such as ±π) repeats. K = 12 gives 0,
    six unit phasors at multiples of 60° and five points of magnitude 2 at 36° + 72°j."""
    if n_entries < 1:
        raise ValueError(f"n_entries must be positive, got {n_entries}")
    rest = n_entries - 1
    n1 = (rest + 1) // 2
    n2 = rest - n1
    points = [torch.zeros(1, dtype=torch.complex128)]
    if n1:
        a = 2 * math.pi * torch.arange(n1, dtype=torch.float64) / n1
        points.append(torch.polar(torch.ones_like(a), a))
    if n2:
        a = 2 * math.pi * (torch.arange(n2, dtype=torch.float64) + 0.5) / n2
        points.append(torch.polar(2 * torch.ones_like(a), a))
    return torch.cat(points)


class CombookHead(nn.Module):
    """Complex mask Σₖ softmax(z)ₖ cₖ over K learnable complex entries (magnitude and phase at
    once), initialised by combook_init. The parameter is stored as (K, 2) real
    (`codebook_real`) so every optimiser treats it alike; `codebook` is its complex view."""

    def __init__(self, in_features, n_freq, n_sources, n_entries=12):
        super().__init__()
        self.codebook_real = nn.Parameter(torch.view_as_real(combook_init(n_entries)).to(torch.float32).contiguous())
        self.head = _CodebookLogits(in_features, n_freq, n_sources, n_entries)

    @property
    def codebook(self):
        """The K entries, complex64 (complex128 in a float64 model; the parameter of a
        float16/bfloat16 model is read in float32, with its gradient)."""
        return torch.view_as_complex(self.codebook_real.to(_book_dtype(self.head.linear)))

    def logits(self, h):
        return self.head(h)

    def forward(self, h, mode="interpolate"):
        _check_mode(mode)
        return _to_bcft(codebook_lookup(self.logits(h), self.codebook, mode))
