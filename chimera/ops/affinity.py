"""chimera::affinity_stats: the Gram statistics behind the deep-clustering losses."""
import torch

from . import _registry, reference


def _fake_stats(embedding, target, weight, num_classes):
    B, _, D = embedding.shape
    C = num_classes if target.dtype == torch.long else target.shape[-1]
    new = lambda *shape: embedding.new_empty(shape, dtype=torch.float64)  # noqa: E731
    return new(B, D, D), new(B, D, C), new(B, C, C), new(B)


def _fake_backward(grad_vv, grad_vy, embedding, target, weight):
    return torch.empty_like(embedding)


def _setup_context(ctx, inputs, output):
    embedding, target, weight, _ = inputs
    ctx.save_for_backward(embedding, target, weight)


def _backward(ctx, grad_vv, grad_vy, grad_yy, grad_wsum):
    embedding, target, weight = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = affinity_stats_backward(grad_vv, grad_vy, embedding, target, weight)
    return grad, None, None, None


affinity_stats_backward = _registry.define(
    "affinity_stats_backward",
    "(Tensor grad_vv, Tensor grad_vy, Tensor embedding, Tensor target, Tensor? weight) -> Tensor",
    reference.affinity_stats_backward,
    _fake_backward,
)

affinity_stats = _registry.define(
    "affinity_stats",
    "(Tensor embedding, Tensor target, Tensor? weight, int num_classes) -> (Tensor, Tensor, Tensor, Tensor)",
    reference.affinity_stats,
    _fake_stats,
    backward=_backward,
    setup_context=_setup_context,
)
