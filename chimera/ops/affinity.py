"""chimera::affinity_stats: the Gram statistics behind the deep-clustering losses.

``affinity_stats(embedding, target, weight, num_classes)`` returns, per batch item, the
float64 statistics (VᵀWV, VᵀWY, YᵀWY, Σw, Vᵀw) of the embedding V (B, N, D), the target Y,
either (B, N) int64 class indices (never expanded to one-hot: a bin adds to its label's
column only) or (B, N, C) float, and the weights w (B, N) or None (all ones). Its backward
is one more pass: dL/dV = W (V (G + Gᵀ) + Y Hᵀ + 1 gᵀ) for the gradients G, H, g of
VᵀWV, VᵀWY and Vᵀw. The rare gradients the kernels do not compute (to weights or a dense
target that require grad, double backward) go by autograd through the reference twin.

dtype policy (kernels and ``chimera.ops.reference`` alike, CPU and CUDA): the embedding is
float32, float64, float16 or bfloat16; a dense target and the weights have its dtype;
float16/bfloat16 are computed in float32; the statistics are float64; the gradient has the
embedding's dtype. ``num_classes`` may be a SymInt (torch.compile traces ``target.max() + 1``).
Empty inputs (B, N or D = 0) give empty or zero statistics; NaN and ±inf propagate.
"""
import torch

from . import _registry, reference


def _fake_stats(embedding, target, weight, num_classes):
    B, _, D = embedding.shape
    C = num_classes if target.dtype == torch.long else target.shape[-1]
    new = lambda *shape: embedding.new_empty(shape, dtype=torch.float64)  # noqa: E731
    return new(B, D, D), new(B, D, C), new(B, C, C), new(B), new(B, D)


def _fake_backward(grad_vv, grad_vy, embedding, target, weight, grad_vsum=None):
    return torch.empty_like(embedding, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    embedding, target, weight, num_classes = inputs
    ctx.save_for_backward(embedding, target, weight)
    ctx.num_classes = num_classes


def _backward(ctx, grad_vv, grad_vy, grad_yy, grad_wsum, grad_vsum):
    embedding, target, weight = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = affinity_stats_backward(grad_vv, grad_vy, embedding, target, weight, grad_vsum)
    # A dense target or weights that require grad (rare): by autograd through the twin.
    needs = (False, ctx.needs_input_grad[1], ctx.needs_input_grad[2], False)
    _, d_target, d_weight, _ = _registry.reference_vjp(
        reference.affinity_stats, (embedding, target, weight, ctx.num_classes), needs,
        (grad_vv, grad_vy, grad_yy, grad_wsum, grad_vsum))
    return grad, d_target, d_weight, None


def _setup_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward_backward(ctx, grad):
    """Double backward (gradient penalties, Hessian-vector products), through the twin."""
    return tuple(_registry.reference_vjp(reference.affinity_stats_backward, ctx.saved_tensors,
                                         ctx.needs_input_grad, (grad,)))


affinity_stats_backward = _registry.define(
    "affinity_stats_backward",
    "(Tensor grad_vv, Tensor grad_vy, Tensor embedding, Tensor target, Tensor? weight, Tensor? grad_vsum=None) -> Tensor",
    reference.affinity_stats_backward,
    _fake_backward,
    backward=_backward_backward,
    setup_context=_setup_backward,
)

affinity_stats = _registry.define(
    "affinity_stats",
    "(Tensor embedding, Tensor target, Tensor? weight, SymInt num_classes) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    reference.affinity_stats,
    _fake_stats,
    backward=_backward,
    setup_context=_setup_context,
)
