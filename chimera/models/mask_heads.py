"""Mask-inference heads: :class:`MaskHead` (real masks from a bounded activation) here,
the codebook heads in :mod:`chimera.models.codebook_heads`, and :func:`make_mask_head`,
which builds any of them by name.

Every head reads frame-wise features ``(B, T, in_features)`` and gives masks
``(B, C, F, T)``; the embedding head is in :mod:`chimera.models.embedding_head`.
"""
from __future__ import annotations

import torch
from torch import nn

from .codebook_heads import CombookHead, MagbookHead, PhasebookHead
from .config import MASK_KINDS

_CODEBOOK_HEADS = {"magbook": MagbookHead, "phasebook": PhasebookHead, "combook": CombookHead}


# Each activation takes `inplace`: with no graph to keep (inference), the mask is made in
# the linear layer's output, not in a second tensor of its size.
def _sigmoid(z, inplace):
    return z.sigmoid_() if inplace else torch.sigmoid(z)


def _doubled_sigmoid(z, inplace):
    return z.sigmoid_().mul_(2.0) if inplace else 2.0 * torch.sigmoid(z)


def _clipped_relu(z, inplace):
    return z.clamp_(0.0, 2.0) if inplace else z.clamp(0.0, 2.0)


class MaskHead(nn.Module):
    """Real masks ``(B, C, F, T)`` from a linear layer and a bounded activation.

    ``sigmoid`` ∈ [0, 1]; ``softmax`` over sources (masks sum to one); ``doubled_sigmoid``
    2σ ∈ [0, 2]; ``clipped_relu`` min(max(z, 0), 2) ∈ [0, 2] — the last two can reach the
    phase-sensitive targets above one (Wang et al. 2018).
    """

    _ACTIVATIONS = {"sigmoid": _sigmoid, "doubled_sigmoid": _doubled_sigmoid, "clipped_relu": _clipped_relu}

    def __init__(self, in_features: int, n_freq: int, n_sources: int, kind: str = "sigmoid"):
        super().__init__()
        if kind not in ("softmax", *self._ACTIVATIONS):
            raise ValueError(f"MaskHead: unknown kind {kind!r}")
        self.n_freq, self.n_sources, self.kind = n_freq, n_sources, kind
        self.linear = nn.Linear(in_features, n_freq * n_sources)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        z = self.linear(x).reshape(B, T, self.n_freq, self.n_sources).permute(0, 3, 2, 1)
        if self.kind == "softmax":
            return z.softmax(dim=1)
        # a trace is checked by tracing again under no_grad: it keeps to the out-of-place path
        return self._ACTIVATIONS[self.kind](z, inplace=not (z.requires_grad or torch.jit.is_tracing()))


def make_mask_head(kind: str, in_features: int, n_freq: int, n_sources: int, **options) -> nn.Module:
    """Mask head by name: the real heads above, or the codebook heads of
    :mod:`chimera.models.codebook_heads` (``magbook``, ``phasebook``, ``combook``; Le Roux
    et al. 2019), which receive ``options`` (``magbook=(0, 1, 2)``; ``n_phases=8``;
    ``n_entries=12``)."""
    if kind in MaskHead._ACTIVATIONS or kind == "softmax":
        if options:
            raise ValueError(f"make_mask_head: mask {kind!r} takes no options, got {sorted(options)}")
        return MaskHead(in_features, n_freq, n_sources, kind)
    if kind in _CODEBOOK_HEADS:
        return _CODEBOOK_HEADS[kind](in_features, n_freq, n_sources, **options)
    raise ValueError(f"make_mask_head: unknown mask {kind!r}; choose one of {MASK_KINDS}")
