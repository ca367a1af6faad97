"""chimera::overlap_add: the overlap-add half of the inverse STFT (after the inverse
real FFT of each frame), fused with the window, the envelope division and the
torch.istft trimming; its backward (the adjoint) is one op too."""
import torch

from . import _registry, reference


def _out_len(n_fft, hop_length, n_frames, center, length):
    if length is not None:
        return length
    full = n_fft + hop_length * (n_frames - 1)
    return torch.sym_max(full - 2 * (n_fft // 2), 0) if center else full


def _fake_forward(frames, window, hop_length, center, length):
    n_frames, n_fft = frames.shape[-2:]
    return frames.new_empty(*frames.shape[:-2], _out_len(n_fft, hop_length, n_frames, center, length))


def _fake_backward(grad, window, hop_length, center, n_frames):
    return grad.new_empty(*grad.shape[:-1], n_frames, window.shape[0])


def _window_grad(fn, data, window, args, grad):
    """Gradient for a trained window: rare, so by autograd through the reference twin
    (differentiable again under create_graph, for gradient penalties)."""
    needs = (False, True) + (False,) * len(args)
    return _registry.reference_vjp(fn, (data, window, *args), needs, (grad,))[1]


def _setup_forward(ctx, inputs, output):
    frames, window, hop_length, center, length = inputs
    ctx.save_for_backward(frames if ctx.needs_input_grad[1] else None, window)
    ctx.args = (hop_length, center, frames.shape[-2], length)


def _backward_forward(ctx, grad):
    frames, window = ctx.saved_tensors
    hop_length, center, n_frames, length = ctx.args
    d_frames = d_window = None
    if ctx.needs_input_grad[0]:
        d_frames = overlap_add_backward(grad, window, hop_length, center, n_frames)
    if ctx.needs_input_grad[1]:
        d_window = _window_grad(reference.overlap_add, frames, window, (hop_length, center, length), grad)
    return d_frames, d_window, None, None, None


def _setup_backward(ctx, inputs, output):
    grad, window, hop_length, center, n_frames = inputs
    ctx.save_for_backward(grad if ctx.needs_input_grad[1] else None, window)
    ctx.args = (hop_length, center, n_frames, grad.shape[-1])


def _backward_backward(ctx, gg):
    grad, window = ctx.saved_tensors
    hop_length, center, n_frames, out_len = ctx.args
    d_grad = d_window = None
    if ctx.needs_input_grad[0]:  # the adjoint of the adjoint is the forward
        d_grad = overlap_add(gg, window, hop_length, center, out_len)
    if ctx.needs_input_grad[1]:
        d_window = _window_grad(reference.overlap_add_backward, grad, window, (hop_length, center, n_frames), gg)
    return d_grad, d_window, None, None, None


overlap_add_backward = _registry.define(
    "overlap_add_backward",
    "(Tensor grad, Tensor window, int hop_length, bool center, int n_frames) -> Tensor",
    reference.overlap_add_backward,
    _fake_backward,
    backward=_backward_backward,
    setup_context=_setup_backward,
)

_overlap_add = _registry.define(
    "overlap_add",
    "(Tensor frames, Tensor window, int hop_length, bool center, int? length) -> Tensor",
    reference.overlap_add,
    _fake_forward,
    backward=_backward_forward,
    setup_context=_setup_forward,
)


def overlap_add(frames, window, hop_length, center=True, length=None):
    """Overlap-add of inverse-FFT frames as in torch.istft.

    frames (..., n_frames, n_fft) real, window (n_fft,), same dtype and device.
    Returns (..., L): Σ_t frames[t]·window placed at t·hop_length, divided by the
    window-sum-square envelope, with n_fft//2 samples dropped at both ends when
    `center`, then cut or zero-padded to `length` when given (None or -1: no length).
    Raises when the envelope vanishes inside the kept samples (NOLA), like torch.istft.
    A NaN or ±inf frame sample reaches exactly the output samples it overlaps.

    dtypes (the same for the kernels, CPU and CUDA, and the reference): float32/float64,
    and float16/bfloat16 summed in float32; the output has the frames' dtype, the gradient
    the incoming gradient's dtype.
    """
    if length is not None and length == -1:
        length = None
    return _overlap_add(frames, window, hop_length, center, length)
