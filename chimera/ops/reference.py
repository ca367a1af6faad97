"""Pure-PyTorch twins of every op in chimera.ops: same names, same signatures.

They are the test oracle of the C++/CUDA kernels, and they are registered as the
kernels wherever the extension is absent (or disabled), so everything still runs.
Clarity over speed: these may build one-hot tensors and other temporaries.
"""
import math

import torch


# ---------------------------------------------------------------- deep clustering

def _has_data(t):
    """False for the fake tensors of torch.compile's tracing (the backward formulas run these
    twins there): value checks are skipped, the op's kernel made them on the real data."""
    return not torch._subclasses.fake_tensor.is_fake(t)


_AFFINITY_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_affinity_inputs(name, embedding, target, weight, num_classes):
    """The checks of csrc/common/affinity_host.h (shapes, the dtype policy, label range)."""
    if embedding.dim() != 3:
        raise RuntimeError(f"{name}: embedding must be (B, N, D), got {tuple(embedding.shape)}")
    if embedding.dtype not in _AFFINITY_DTYPES:
        raise RuntimeError(f"{name}: embedding must be float32, float64, float16 or bfloat16, got {embedding.dtype}")
    B, N, _ = embedding.shape
    if target.dtype != torch.long and not target.dtype.is_floating_point and not target.dtype.is_complex:
        raise RuntimeError(f"{name}: an index target must be int64 (torch.long) class indices, got {target.dtype}")
    if target.dtype == torch.long:
        if tuple(target.shape) != (B, N):
            raise RuntimeError(f"{name}: index target must be (B, N) = ({B}, {N}), got {tuple(target.shape)}")
        if num_classes <= 0:
            raise RuntimeError(f"{name}: num_classes must be positive for an index target, got {num_classes}")
        if target.numel() and _has_data(target) and (target.min() < 0 or target.max() >= num_classes):
            raise RuntimeError(f"{name}: target label out of range [0, {num_classes})")
    else:
        if target.dim() != 3 or tuple(target.shape[:2]) != (B, N):
            raise RuntimeError(f"{name}: dense target must be (B, N, C), got {tuple(target.shape)}")
        if target.dtype != embedding.dtype:
            raise RuntimeError(f"{name}: dense target dtype {target.dtype} differs from embedding dtype {embedding.dtype}")
        if num_classes > 0 and num_classes != target.shape[-1]:
            raise RuntimeError(f"{name}: num_classes={num_classes} but the target has {target.shape[-1]} classes")
    if weight is not None:
        if tuple(weight.shape) != (B, N):
            raise RuntimeError(f"{name}: weight must be (B, N), got {tuple(weight.shape)}")
        if weight.dtype != embedding.dtype:
            raise RuntimeError(f"{name}: weight dtype {weight.dtype} differs from embedding dtype {embedding.dtype}")


def _weights64(embedding, weight):
    if weight is None:
        return torch.ones(embedding.shape[:2], dtype=torch.float64, device=embedding.device)
    return weight.to(torch.float64)


def affinity_stats(embedding, target, weight, num_classes):
    """(VᵀWV, VᵀWY, YᵀWY, Σw, Vᵀw) per item, in float64. An index target adds each bin to
    its label's column only (a gather/scatter, not a product with a one-hot: a NaN stays in
    its class), so YᵀWY is diagonal."""
    _check_affinity_inputs("affinity_stats", embedding, target, weight, num_classes)
    V = embedding.to(torch.float64)
    w = _weights64(embedding, weight)
    WV = V * w.unsqueeze(-1)
    if target.dtype == torch.long:
        B, N, D = V.shape
        vy = V.new_zeros(B, num_classes, D).scatter_add_(1, target.unsqueeze(-1).expand(B, N, D), WV).transpose(1, 2).contiguous()
        yy = torch.diag_embed(w.new_zeros(B, num_classes).scatter_add_(1, target, w))
    else:
        Y = target.to(torch.float64)
        vy = WV.transpose(1, 2) @ Y
        yy = Y.transpose(1, 2) @ (Y * w.unsqueeze(-1))
    # Vᵀ(WV) rounds (i, j) and (j, i) differently; the kernels' VᵀWV is exactly symmetric.
    vv = V.transpose(1, 2) @ WV
    return (vv + vv.transpose(1, 2)) / 2, vy, yy, w.sum(-1), WV.sum(1)


def affinity_stats_backward(grad_vv, grad_vy, embedding, target, weight, grad_vsum=None):
    """dL/dV = W (V (G_vv + G_vvᵀ) + Y G_vyᵀ + 1 g_vsumᵀ); for an index target Y G_vyᵀ is
    the label's row of G_vyᵀ (a gather)."""
    _check_affinity_inputs("affinity_stats_backward", embedding, target, weight,
                           grad_vy.shape[-1] if target.dtype == torch.long else -1)
    V = embedding.to(torch.float64)
    w = _weights64(embedding, weight)
    H = grad_vy.to(torch.float64).transpose(1, 2)  # (B, C, D)
    grad = V @ (grad_vv + grad_vv.transpose(1, 2)).to(torch.float64)
    if target.dtype == torch.long:
        grad = grad + H.gather(1, target.unsqueeze(-1).expand(*target.shape, V.shape[-1]))
    else:
        grad = grad + target.to(torch.float64) @ H
    if grad_vsum is not None:
        if tuple(grad_vsum.shape) != (V.shape[0], V.shape[2]):
            raise RuntimeError(f"affinity_stats_backward: grad_vsum must be (B, D) = ({V.shape[0]}, {V.shape[2]}), "
                               f"got {tuple(grad_vsum.shape)}")
        grad = grad + grad_vsum.to(torch.float64).unsqueeze(1)
    return (grad * w.unsqueeze(-1)).to(embedding.dtype)


# ---------------------------------------------------------------- overlap-add inverse STFT

# torch.istft's NOLA tolerance; the kernels' copy is kNolaTolerance in csrc/common/overlap_add.h
# (tests/test_signal.py checks that both reject the same windows).
NOLA_TOLERANCE = 1e-11


def check_nola(name, env, first_sample, hop_length):
    """torch.istft's NOLA check: raise when the window-sum-square envelope `env` (at output
    samples first_sample + [0, len(env))) vanishes, where the signal cannot be recovered."""
    if env.numel() == 0 or not _has_data(env):
        return
    lowest, where = env.abs().min(0)
    if lowest < NOLA_TOLERANCE:
        raise RuntimeError(
            f"{name}: the window-sum-square envelope is {lowest.item():g} (below {NOLA_TOLERANCE:g}) at output "
            f"sample {first_sample + where.item()}, so the signal cannot be recovered there: window and "
            f"hop_length={hop_length} violate the NOLA condition (torch.istft rejects this too). Use center=True, "
            "a window that is non-zero at its ends, or a smaller hop_length."
        )


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
    check_nola(name, env, 0, hop_length)
    return env


def _accumulation_dtype(dtype):
    """float16 / bfloat16 data are computed in float32 (like the kernels' opmath type)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


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
    dtype = frames.dtype
    frames, window = frames.to(_accumulation_dtype(dtype)), window.to(_accumulation_dtype(dtype))
    cols = (frames * window).reshape(-1, n_frames, n_fft).transpose(1, 2)
    y = torch.nn.functional.fold(cols, output_size=(1, full), kernel_size=(1, n_fft), stride=(1, hop_length))
    y = y.reshape(-1, full)[:, start:max(end, start)]
    y = y / _ola_envelope(window, hop_length, n_frames, start, max(end, start), "overlap_add")
    y = torch.nn.functional.pad(y, (0, out_len - y.shape[-1]))  # zero tail, like torch.istft
    return y.reshape(*batch, out_len).to(dtype)


def overlap_add_backward(grad, window, hop_length, center, n_frames):
    """Adjoint of overlap_add in `frames`: d frames[t, k] = window[k] · g[t·hop + k − start] / env."""
    if grad.dim() < 1 or not grad.dtype.is_floating_point:
        raise RuntimeError("overlap_add_backward: grad must be a real floating-point (..., length) tensor")
    if n_frames <= 0:
        raise RuntimeError(f"overlap_add_backward: n_frames must be positive, got {n_frames}")
    _ola_check("overlap_add_backward", grad, window, hop_length)
    n_fft = window.shape[0]
    out_len = grad.shape[-1]
    start, _, full = _ola_trim(n_fft, hop_length, n_frames, center, out_len)
    end = max(min(start + out_len, full), start)
    dtype = grad.dtype
    grad, window = grad.to(_accumulation_dtype(dtype)), window.to(_accumulation_dtype(dtype))
    q = grad.new_zeros(*grad.shape[:-1], full)
    q[..., start:end] = grad[..., : end - start] / _ola_envelope(
        window, hop_length, n_frames, start, end, "overlap_add_backward")
    return (q.unfold(-1, n_fft, hop_length) * window).to(dtype)


# ---------------------------------------------------------------- codebook masks

def _codebook_softmax(logits):
    """Softmax over the last dimension that is finite wherever the logits are not NaN:
    rows whose maximum is +inf share the mass among their +inf entries, all -inf rows
    are uniform. Such rows are constant in the logits (zero gradient)."""
    m = logits.amax(-1, keepdim=True)
    infinite = torch.isinf(m)
    indicator = torch.where(logits == m, 0.0, float("-inf")).to(logits.dtype)
    return torch.softmax(torch.where(infinite, indicator, logits), dim=-1), infinite


def _codebook_dtype(logits, codebook):
    real = codebook.real.dtype if codebook.is_complex() else codebook.dtype
    if real not in (torch.float32, torch.float64):
        raise TypeError(f"codebook_lookup: codebook must be float32/float64 or complex64/complex128, got {codebook.dtype}")
    if not logits.is_floating_point():
        raise TypeError(f"codebook_lookup: logits must be a floating tensor, got {logits.dtype}")
    if logits.dtype != real and not (real == torch.float32 and logits.dtype in (torch.float16, torch.bfloat16)):
        raise TypeError(
            f"codebook_lookup: logits dtype {logits.dtype} does not match codebook dtype {codebook.dtype} "
            "(float16/bfloat16 logits need a float32/complex64 codebook)"
        )
    return real


def _argmax_pick(logits):
    """torch.argmax over the last dimension (first index on ties, a NaN counts as the
    maximum) and whether the row holds a NaN (then its output is NaN)."""
    idx = logits.argmax(-1)
    return idx, logits.gather(-1, idx.unsqueeze(-1)).squeeze(-1).isnan()


def codebook_lookup(logits, codebook, mode="interpolate", normalize=False):
    """Σₖ softmax(logits)ₖ · codebookₖ (mode "interpolate") or codebook[argmax(logits)]
    (mode "argmax", first index on ties) over the last dimension of `logits` (..., K);
    `codebook` is (K,) real or complex. normalize=True divides by the magnitude, giving 0
    where the magnitude is 0 (torch.sgn's convention). A row with a NaN logit gives NaN
    in both modes."""
    if mode not in ("interpolate", "argmax"):
        raise ValueError(f"codebook_lookup: mode must be 'interpolate' or 'argmax', got {mode!r}")
    if codebook.dim() != 1 or logits.dim() < 1 or logits.shape[-1] != codebook.shape[0] or codebook.shape[0] == 0:
        raise ValueError(
            f"codebook_lookup: need logits (..., K) and codebook (K,) with K >= 1, got {tuple(logits.shape)} "
            f"and {tuple(codebook.shape)}"
        )
    real = _codebook_dtype(logits, codebook)
    codebook = codebook.resolve_conj()  # view_as_real rejects a conjugate view
    if mode == "argmax":
        idx, nan_row = _argmax_pick(logits)
        nan = complex(math.nan, math.nan) if codebook.is_complex() else math.nan
        y = torch.where(nan_row, torch.tensor(nan, dtype=codebook.dtype, device=codebook.device), codebook[idx])
    else:
        p, _ = _codebook_softmax(logits.to(real))
        if codebook.is_complex():  # real weights times (re, im): a NaN part stays in its part
            y = torch.view_as_complex((p.unsqueeze(-1) * torch.view_as_real(codebook)).sum(-2))
        else:
            y = (p * codebook).sum(-1)
    if not normalize:
        return y
    return torch.sgn(y) if y.is_complex() else torch.where(y.isnan(), y, torch.sign(y))  # torch.sign(NaN) is 0


def codebook_lookup_real(logits, codebook, argmax, normalize):
    """Twin of torch.ops.chimera.codebook_lookup: the codebook is (K,) real or (K, 2), a
    complex codebook viewed as real; the output is logits.shape[:-1] + codebook.shape[1:]."""
    if codebook.dim() == 2 and codebook.shape[-1] == 2:
        out = codebook_lookup(logits, torch.view_as_complex(codebook.contiguous()), "argmax" if argmax else "interpolate",
                              normalize)
        return torch.view_as_real(out).clone()
    if codebook.dim() != 1:
        raise RuntimeError(f"codebook_lookup: codebook must be (K,) or (K, 2), got {tuple(codebook.shape)}")
    return codebook_lookup(logits, codebook, "argmax" if argmax else "interpolate", normalize).clone()


def codebook_lookup_backward(grad, logits, codebook, argmax, normalize, output_mask):
    """Twin of torch.ops.chimera.codebook_lookup_backward, with the formulas spelt out:
    gy = (g − u (u·g)) / |y| through the normalisation (0 at |y| = 0), s_k = gy·c_k,
    d logits = p ⊙ (s − Σ p s) (0 for argmax and for rows with an infinite maximum),
    d codebook = Σ_rows p ⊗ gy (argmax: gy added to the picked entry, NaN from a NaN row)."""
    K = codebook.shape[0]
    cb = codebook.reshape(K, -1)
    D = cb.shape[1]
    g = grad.reshape(*logits.shape[:-1], D)
    if argmax:
        idx, nan_row = _argmax_pick(logits)
        y = cb[idx]
    else:
        p, infinite = _codebook_softmax(logits.to(cb.dtype))
        y = p @ cb
    if normalize:
        n = y.abs() if D == 1 else torch.hypot(y[..., 0], y[..., 1]).unsqueeze(-1)
        safe = torch.where(n == 0, torch.ones_like(n), n)  # NaN stays NaN
        u = y / safe
        gy = torch.where(n == 0, torch.zeros_like(g), (g - u * (u * g).sum(-1, keepdim=True)) / safe)
    else:
        gy = g
    if argmax:
        gy = torch.where(nan_row.unsqueeze(-1), torch.full_like(gy, float("nan")), gy)
    if not output_mask[0]:
        grad_logits = logits.new_empty(0)
    elif argmax:
        grad_logits = torch.zeros_like(logits)
    else:
        s = gy @ cb.T
        grad_logits = p * (s - (p * s).sum(-1, keepdim=True))
        grad_logits = torch.where(infinite, torch.zeros_like(grad_logits), grad_logits).to(logits.dtype)
    if not output_mask[1]:
        grad_codebook = torch.zeros_like(codebook)
    elif argmax:
        grad_codebook = torch.zeros_like(cb).index_add_(0, idx.reshape(-1), gy.reshape(-1, D)).reshape(codebook.shape)
    else:
        grad_codebook = (p.reshape(-1, K).T @ gy.reshape(-1, D)).reshape(codebook.shape)
    return grad_logits, grad_codebook
