"""Pure-PyTorch twins of every op in chimera.ops: same names, same signatures.

They are the test oracle of the C++/CUDA kernels, and they are registered as the
kernels wherever the extension is absent (or disabled), so everything still runs.
Clarity over speed: these may build one-hot tensors and other temporaries.
"""
import torch


# ---------------------------------------------------------------- deep clustering

def _dense_target(embedding, target, num_classes):
    if target.dtype == torch.long:
        if target.numel() and (target.min() < 0 or target.max() >= num_classes):
            raise RuntimeError(f"affinity_stats: target label out of range [0, {num_classes})")
        return torch.nn.functional.one_hot(target, num_classes).to(torch.float64)
    return target.to(torch.float64)


def _check_affinity_inputs(embedding, target, weight):
    if embedding.dim() != 3:
        raise RuntimeError(f"affinity_stats: embedding must be (B, N, D), got {tuple(embedding.shape)}")
    if tuple(target.shape[:2]) != tuple(embedding.shape[:2]):
        raise RuntimeError(f"affinity_stats: target must be (B, N[, C]), got {tuple(target.shape)}")
    if weight is not None and tuple(weight.shape) != tuple(embedding.shape[:2]):
        raise RuntimeError(f"affinity_stats: weight must be (B, N), got {tuple(weight.shape)}")


def affinity_stats(embedding, target, weight, num_classes):
    """(VᵀWV, VᵀWY, YᵀWY, Σw) per item, in float64."""
    _check_affinity_inputs(embedding, target, weight)
    V = embedding.to(torch.float64)
    Y = _dense_target(embedding, target, num_classes)
    w = torch.ones(V.shape[:2], dtype=torch.float64, device=V.device) if weight is None else weight.to(torch.float64)
    WV = V * w.unsqueeze(-1)
    return (
        V.transpose(1, 2) @ WV,
        WV.transpose(1, 2) @ Y,
        Y.transpose(1, 2) @ (Y * w.unsqueeze(-1)),
        w.sum(-1),
    )


def affinity_stats_backward(grad_vv, grad_vy, embedding, target, weight):
    """dL/dV = W (V (G_vv + G_vvᵀ) + Y G_vyᵀ)."""
    _check_affinity_inputs(embedding, target, weight)
    V = embedding.to(torch.float64)
    Y = _dense_target(embedding, target, grad_vy.shape[-1])
    w = torch.ones(V.shape[:2], dtype=torch.float64, device=V.device) if weight is None else weight.to(torch.float64)
    grad = V @ (grad_vv + grad_vv.transpose(1, 2)) + Y @ grad_vy.transpose(1, 2)
    return (grad * w.unsqueeze(-1)).to(embedding.dtype)
