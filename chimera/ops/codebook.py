"""chimera::codebook_lookup: magbook / phasebook / combook masks (Le Roux et al. 2019).

Each bin and source carries K logits; the mask is the softmax-weighted sum of K codebook
entries, or the entry of the largest logit. The fused kernels read the logits once, never
store the K probabilities, and recompute them in the backward pass.
"""
import torch

from . import _registry, reference

MODES = ("interpolate", "argmax")


def _out_shape(logits, codebook):
    return (*logits.shape[:-1], *codebook.shape[1:])


def _fake_lookup(logits, codebook, argmax, normalize):
    return logits.new_empty(_out_shape(logits, codebook), dtype=codebook.dtype)


def _fake_backward(grad, logits, codebook, argmax, normalize, output_mask):
    grad_logits = torch.empty_like(logits, memory_format=torch.contiguous_format) if output_mask[0] else logits.new_empty(0)
    return grad_logits, torch.empty_like(codebook, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, codebook, argmax, normalize = inputs
    ctx.save_for_backward(logits, codebook)
    ctx.argmax = argmax
    ctx.normalize = normalize


def _backward(ctx, grad):
    logits, codebook = ctx.saved_tensors
    # argmax is piecewise constant in the logits: no logits gradient to compute.
    want = (ctx.needs_input_grad[0] and not ctx.argmax, ctx.needs_input_grad[1])
    if not any(want):
        return None, None, None, None
    grad_logits, grad_codebook = codebook_lookup_backward(
        grad.contiguous(), logits, codebook, ctx.argmax, ctx.normalize, list(want)
    )
    return grad_logits if want[0] else None, grad_codebook if want[1] else None, None, None


def _setup_backward(ctx, inputs, output):
    grad, logits, codebook, argmax, normalize, output_mask = inputs
    ctx.save_for_backward(grad, logits, codebook)
    ctx.flags = (argmax, normalize, output_mask)


def _backward_backward(ctx, gg_logits, gg_codebook):
    """Double backward (gradient penalties, Hessian-vector products), through the twin."""
    inputs = (*ctx.saved_tensors, *ctx.flags)
    return tuple(_registry.reference_vjp(reference.codebook_lookup_backward, inputs, ctx.needs_input_grad,
                                         (gg_logits, gg_codebook)))


codebook_lookup_backward = _registry.define(
    "codebook_lookup_backward",
    "(Tensor grad, Tensor logits, Tensor codebook, bool argmax, bool normalize, bool[2] output_mask) -> (Tensor, Tensor)",
    reference.codebook_lookup_backward,
    _fake_backward,
    backward=_backward_backward,
    setup_context=_setup_backward,
)

codebook_lookup_op = _registry.define(
    "codebook_lookup",
    "(Tensor logits, Tensor codebook, bool argmax, bool normalize) -> Tensor",
    reference.codebook_lookup_real,
    _fake_lookup,
    backward=_backward,
    setup_context=_setup_context,
)


def codebook_lookup(logits, codebook, mode="interpolate", normalize=False):
    """Codebook mask from per-entry logits.

    Args:
        logits: (..., K) float tensor; K lies innermost, so a linear layer's output
            reshaped to (..., K) is consumed without a copy.
        codebook: (K,) float32/float64 or complex64/complex128 (learnable or fixed).
        mode: "interpolate": Σₖ softmax(logits)ₖ · codebookₖ; "argmax": codebook[argmax(logits)]
            (first index on ties like torch.argmax; no gradient to the logits).
        normalize: divide by the magnitude (a unit phasor for a phasebook, ±1 for a real
            codebook); where the magnitude is 0 the result is 0 (torch.sgn's convention), with
            zero gradient, never NaN.

    Softmax: large logits (±1e4) are handled by max subtraction; in a row whose maximum is
    +inf the +inf entries share the weight, an all −inf row is uniform (both have zero
    logits gradient). A NaN logit makes its row NaN in both modes: the output, the row's
    logits gradient and the codebook gradient.

    dtypes (the same for the kernels, CPU and CUDA, and the reference): logits of the
    codebook's real dtype, or float16/bfloat16 logits with a float32/complex64 codebook;
    the arithmetic is in the codebook's real dtype, the output has the codebook's dtype,
    the logits gradient the logits' dtype. float16/bfloat16 codebooks are rejected.

    Returns: (...) with the codebook's dtype (complex for a complex codebook).
    """
    if mode not in MODES:
        raise ValueError(f"codebook_lookup: mode must be one of {MODES}, got {mode!r}")
    if not isinstance(logits, torch.Tensor) or not isinstance(codebook, torch.Tensor):
        raise TypeError("codebook_lookup: logits and codebook must be tensors")
    if codebook.dim() != 1:
        raise ValueError(f"codebook_lookup: codebook must be 1-D (K,), got shape {tuple(codebook.shape)}")
    if logits.dim() < 1 or logits.shape[-1] != codebook.shape[0]:
        raise ValueError(
            f"codebook_lookup: logits last dimension ({tuple(logits.shape)[-1:]}) must equal the codebook size "
            f"K = {codebook.shape[0]}"
        )
    if codebook.shape[0] == 0:
        raise ValueError("codebook_lookup: the codebook is empty (K = 0)")
    reference._codebook_dtype(logits, codebook)  # raises a TypeError naming the mismatch
    argmax = mode == "argmax"
    if codebook.is_complex():
        # A conjugate view (codebook.conj()) has no real view until resolved.
        out = codebook_lookup_op(logits, torch.view_as_real(codebook.resolve_conj()), argmax, normalize)
        return torch.view_as_complex(out)
    return codebook_lookup_op(logits, codebook, argmax, normalize)
