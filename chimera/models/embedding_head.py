"""The deep-clustering embedding head: a unit-norm D-dimensional embedding per bin."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as Fn

from .config import EMBEDDING_ACTIVATIONS


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
        v = self.linear(x)
        v = torch.tanh(v) if self.activation == "tanh" else torch.sigmoid(v)
        return Fn.normalize(v.reshape(B, T * self.n_freq, self.dim), dim=-1, eps=1e-8)
