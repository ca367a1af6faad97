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


# ---------------------------------------------------------------- overlap-add inverse STFT

_NOLA_TOLERANCE = 1e-11


def _ola_trim(n_fft, hop_length, n_frames, center, length):
    """(start, out_len, full): what torch.istft keeps of the full overlap-add."""
    full = n_fft + hop_length * (n_frames - 1)
    start = n_fft // 2 if center else 0
    if length is None or length == -1:
        out_len = max(full - 2 * start, 0) if center else full
    else:
        out_len = length
    return start, out_len, full


def _ola_check(name, data, window, hop_length, length=None):
    if window.dim() != 1:
        raise RuntimeError(f"{name}: window must be 1-D (n_fft,), got shape {tuple(window.shape)}")
    if window.dtype != data.dtype:
        raise RuntimeError(f"{name}: window dtype {window.dtype} differs from the data dtype {data.dtype}")
    if window.device != data.device:
        raise RuntimeError(f"{name}: window is on {window.device} but the data is on {data.device}")
    if not 0 < hop_length <= window.shape[0]:
        raise RuntimeError(f"{name}: hop_length must be in [1, n_fft={window.shape[0]}], got {hop_length}")
    if length is not None and length < 0:
        raise RuntimeError(f"{name}: length must be >= 0 or None, got {length}")


def _ola_envelope(window, hop_length, n_frames, start, end, name):
    """Window-sum-square envelope over full-signal positions [start, end), by a plain
    overlap-add of window², with torch.istft's NOLA check."""
    n_fft = window.shape[0]
    full = n_fft + hop_length * (n_frames - 1)
    env = torch.nn.functional.fold(
        window.square().expand(1, n_frames, n_fft).transpose(1, 2),
        output_size=(1, full), kernel_size=(1, n_fft), stride=(1, hop_length),
    ).reshape(full)[start:end]
    if env.numel():
        lowest, where = env.abs().min(0)
        if lowest < _NOLA_TOLERANCE:
            raise RuntimeError(
                f"{name}: the window-sum-square envelope is {lowest.item():g} (below 1e-11) at output sample "
                f"{where.item()}, so the signal cannot be recovered there: window and hop_length={hop_length} "
                "violate the NOLA condition (torch.istft rejects this too). Use center=True, a window that is "
                "non-zero at its ends, or a smaller hop_length."
            )
    return env


def overlap_add(frames, window, hop_length, center, length):
    """Σ_t frames[t] · window shifted by t·hop, divided by Σ_t window² shifted likewise,
    trimmed like torch.istft: (..., n_frames, n_fft) -> (..., L)."""
    if frames.dim() < 2:
        raise RuntimeError(f"overlap_add: frames must be (..., n_frames, n_fft), got shape {tuple(frames.shape)}")
    if not frames.dtype.is_floating_point:
        raise RuntimeError(f"overlap_add: frames must be real floating point, got {frames.dtype}")
    n_frames, n_fft = frames.shape[-2:]
    if n_frames == 0 or n_fft == 0:
        raise RuntimeError(f"overlap_add: need at least one frame of at least one sample, got {tuple(frames.shape)}")
    if window.dim() == 1 and window.shape[0] != n_fft:
        raise RuntimeError(f"overlap_add: window has {window.shape[0]} samples but the frames have n_fft={n_fft}")
    _ola_check("overlap_add", frames, window, hop_length, length)
    start, out_len, full = _ola_trim(n_fft, hop_length, n_frames, center, length)
    end = min(start + out_len, full)
    batch = frames.shape[:-2]
    cols = (frames * window).reshape(-1, n_frames, n_fft).transpose(1, 2)
    y = torch.nn.functional.fold(cols, output_size=(1, full), kernel_size=(1, n_fft), stride=(1, hop_length))
    y = y.reshape(-1, full)[:, start:max(end, start)]
    y = y / _ola_envelope(window, hop_length, n_frames, start, max(end, start), "overlap_add")
    y = torch.nn.functional.pad(y, (0, out_len - y.shape[-1]))  # zero tail, like torch.istft
    return y.reshape(*batch, out_len)


def overlap_add_backward(grad, window, hop_length, center, n_frames):
    """Adjoint of overlap_add in `frames`: d frames[t, k] = window[k] · g[t·hop + k − start] / env."""
    if grad.dim() < 1 or not grad.dtype.is_floating_point:
        raise RuntimeError(f"overlap_add_backward: grad must be a real floating-point (..., length) tensor")
    if n_frames <= 0:
        raise RuntimeError(f"overlap_add_backward: n_frames must be positive, got {n_frames}")
    _ola_check("overlap_add_backward", grad, window, hop_length)
    n_fft = window.shape[0]
    out_len = grad.shape[-1]
    start, _, full = _ola_trim(n_fft, hop_length, n_frames, center, out_len)
    end = max(min(start + out_len, full), start)
    q = grad.new_zeros(*grad.shape[:-1], full)
    q[..., start:end] = grad[..., : end - start] / _ola_envelope(
        window, hop_length, n_frames, start, end, "overlap_add_backward")
    return q.unfold(-1, n_fft, hop_length) * window
