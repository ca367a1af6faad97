"""The deep-clustering embedding head: a unit-norm D-dimensional embedding per bin."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import EMBEDDING_ACTIVATIONS


class _UnitNorm(torch.autograd.Function):
    """``v / max(‖v‖, eps)`` over the last dimension, as ``F.normalize``, with the backward
    in one expression, ``(g - y (y · g)) / ‖v‖`` (``g / eps`` where the floor holds): the
    composite backward of ``F.normalize`` made about eight passes over the (B, T·F, D)
    embeddings, which were a fifth of a full-band training step (benchmarks/RESULTS.md)."""

    @staticmethod
    def forward(ctx, v, eps):
        norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        floored = norm < eps
        norm = norm.clamp_min(eps)
        y = v / norm
        ctx.save_for_backward(y, norm, floored)
        return y

    @staticmethod
    def backward(ctx, g):
        y, norm, floored = ctx.saved_tensors
        along = (g * y).sum(-1, keepdim=True).masked_fill_(floored, 0)
        return (g - y * along) / norm, None


def unit_norm(v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``torch.nn.functional.normalize(v, dim=-1, eps=eps)`` with a fused backward."""
    return _UnitNorm.apply(v, eps)


class EmbeddingHead(nn.Module):
    """Linear → tanh/sigmoid → unit norm per time-frequency bin; ``(B, T, in) → (B, T·F, D)``
    with the frequency index running fastest (bin ``n = t·F + f``)."""

    def __init__(self, in_features: int, n_freq: int, dim: int, activation: str = "tanh"):
        super().__init__()
        if activation not in EMBEDDING_ACTIVATIONS:
            raise ValueError(f"EmbeddingHead: activation {activation!r} not in {EMBEDDING_ACTIVATIONS}")
        self.n_freq, self.dim, self.activation = n_freq, dim, activation
        self.linear = nn.Linear(in_features, n_freq * dim)

    def forward(self, x: torch.Tensor, frames: bool = False) -> torch.Tensor:
        """``frames=True``: the same embeddings as ``(B, T, F, D)``, of which the ``(B, T·F, D)``
        result is a view (a mask head reading them per frame takes ``.flatten(2)``)."""
        if x.dim() != 3:
            raise ValueError(f"EmbeddingHead: expected (B, T, in_features), got {tuple(x.shape)}")
        # (B, T, F, D), flattened last (views): reshaping to T·F rows and back made torch.export
        # guard on a divisibility of the symbolic frame count that it cannot prove
        v = self.linear(x).unflatten(-1, (self.n_freq, self.dim))
        tracing = torch.jit.is_tracing()
        # any input or parameter that needs a gradient (a frozen weight but a trained bias
        # too): the in-place path below would overwrite what the backward needs. A trace takes
        # this path too: torch.jit.trace checks it by tracing again under no_grad, where the
        # graph must be the same
        if v.requires_grad or tracing:
            v = torch.tanh(v) if self.activation == "tanh" else torch.sigmoid(v)
            # F.normalize gives the same values; a trace cannot save a Python autograd.Function
            v = F.normalize(v, dim=-1, eps=1e-8) if tracing else unit_norm(v)
        else:
            # inference: in place, one (B, T·F, D) tensor instead of three (a 10-second stereo
            # segment pair's embeddings are 103 MB each)
            v = v.tanh_() if self.activation == "tanh" else v.sigmoid_()
            v = v.div_(torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min_(1e-8))
        return v if frames else v.flatten(1, 2)
