"""Inputs and float64 truths shared by the affinity_stats and deep-clustering loss tests."""
import contextlib
import types

import torch

from chimera.objectives import dc
from chimera.ops import reference

TARGETS = ("index", "onehot", "soft")


def make(B=2, N=57, D=5, C=3, dtype=torch.float64, weighted=True, target="index", seed=0):
    """Unit-norm embeddings (B, N, D), a target of the given form with C classes, weights or None."""
    g = torch.Generator().manual_seed(seed)
    V = torch.nn.functional.normalize(torch.randn(B, N, D, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    labels = torch.randint(0, C, (B, N), generator=g)
    if target == "index":
        Y = labels
    elif target == "onehot":
        Y = torch.nn.functional.one_hot(labels, C).to(dtype)
    else:  # soft: rows sum to 1
        Y = torch.softmax(torch.randn(B, N, C, generator=g, dtype=torch.float64) * 2, -1).to(dtype)
    w = torch.rand(B, N, generator=g, dtype=torch.float64).to(dtype) if weighted else None
    return V, Y, w


def dense(Y, C):
    """The float64 (B, N, C) form of a target."""
    return torch.nn.functional.one_hot(Y, C).double() if Y.dtype == torch.long else Y.double()


def f64(x):
    """A float tensor in float64 (int64 targets and None unchanged)."""
    return x if x is None or not x.is_floating_point() else x.double()


@contextlib.contextmanager
def losses_on_reference():
    """Run the DC losses on chimera.ops.reference.affinity_stats, differentiated by autograd:
    an independent truth for the fused forward and backward kernels."""
    fused = dc.ops
    dc.ops = types.SimpleNamespace(affinity_stats=reference.affinity_stats)
    try:
        yield
    finally:
        dc.ops = fused


def classes(x):
    """Where a tensor is NaN, +inf, -inf, finite: what 'propagates' compares."""
    return torch.stack([torch.isnan(x), torch.isposinf(x), torch.isneginf(x)])
