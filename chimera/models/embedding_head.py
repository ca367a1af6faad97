"""The deep-clustering embedding head: a unit-norm D-dimensional embedding per bin."""
from __future__ import annotations

import torch
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        v = self.linear(x).reshape(B, T * self.n_freq, self.dim)
        # any input or parameter that needs a gradient (a frozen weight but a trained bias
        # too): the in-place path below would overwrite what the backward needs
        if v.requires_grad:
            v = torch.tanh(v) if self.activation == "tanh" else torch.sigmoid(v)
            return unit_norm(v)
        # inference: in place, one (B, T·F, D) tensor instead of three (a 10-second stereo
        # segment pair's embeddings are 103 MB each)
        v = v.tanh_() if self.activation == "tanh" else v.sigmoid_()
        return v.div_(torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min_(1e-8))
