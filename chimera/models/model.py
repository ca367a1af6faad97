"""The separation model: STFT → log-magnitude features → BLSTM trunk → heads.

The model computes (forward, its STFT and inverse STFT); how its outputs become sources
(mask head or k-means, Wiener filter, MISI) is :class:`chimera.separate.Separator`'s.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from torch import nn

from .. import signal
from .config import ModelConfig, StftConfig
from .features import LogMagnitude
from .embedding_head import EmbeddingHead
from .mask_heads import make_mask_head
from .trunk import BLSTMTrunk


# Waveform dtypes whose STFT is taken in float32.
_HALF = (torch.float16, torch.bfloat16)


def flatten_bins(x: torch.Tensor) -> torch.Tensor:
    """``(..., F, T)`` → ``(..., T·F)`` with frequency fastest: the bin order of
    ``ModelOutput.embedding``. Use it for deep-clustering targets and weights."""
    return x.transpose(-1, -2).reshape(*x.shape[:-2], -1)


def apply_masks(masks: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) real or complex masks times the (B, F, T) complex mixture spectrogram.
    A real mask scales the real and imaginary parts as they are: the product ``masks *
    spec`` would first make a complex copy of the masks (the largest temporary of mask
    inference) for the same values."""
    if masks.is_complex():
        return masks * spec.unsqueeze(1)
    return torch.view_as_complex(torch.view_as_real(spec).unsqueeze(1) * masks.unsqueeze(-1))


@dataclass
class ModelOutput:
    """What :meth:`SeparationModel.forward` returns.

    ``embedding``: ``(B, N, D)`` unit-norm, ``N = T·F`` in the order of :func:`flatten_bins`
    (bin ``n = t·F + f``), or None without a DC head. ``masks``: ``(B, C, F, T)``, real or
    complex (codebook heads); ``estimates = masks · mixture_spec``; both None without a
    mask head. ``length`` is the input length in samples (for the inverse STFT).
    """

    mixture_spec: torch.Tensor
    embedding: torch.Tensor | None
    masks: torch.Tensor | None
    estimates: torch.Tensor | None
    stft: StftConfig
    length: int


# A pytree node, so that torch.export.export(model, ...) can return it: the tensors (or None)
# and the length are its children (the length is the input's, a symbol when the time axis is
# exported dynamic), the STFT settings its context. A context of (stft, length) is that of
# programs saved before the length was a child.
_TENSOR_FIELDS = ("mixture_spec", "embedding", "masks", "estimates")
_CHILDREN = (*_TENSOR_FIELDS, "length")


def _flatten_output(out):
    return [getattr(out, name) for name in _CHILDREN], (out.stft, None)


def _flatten_output_with_keys(out):
    children, context = _flatten_output(out)
    return [(pytree.GetAttrKey(name), child) for name, child in zip(_CHILDREN, children)], context


def _unflatten_output(children, context):
    stft, length = context
    fields = dict(zip(_CHILDREN, children))
    return ModelOutput(**{"length": length, **fields}, stft=stft)


if ModelOutput not in pytree.SUPPORTED_NODES:  # registering a class twice raises
    pytree.register_pytree_node(
        ModelOutput, _flatten_output, _unflatten_output, flatten_with_keys_fn=_flatten_output_with_keys,
        serialized_type_name=f"{__name__}.ModelOutput",
        # JSON for torch.export.save / load
        to_dumpable_context=lambda context: [context[0].to_dict(), context[1]],
        from_dumpable_context=lambda dumped: (StftConfig.from_dict(dumped[0]), dumped[1]))


class SeparationModel(nn.Module):
    """Deep clustering / Chimera / Chimera++ network (see :func:`chimera.models.preset`)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        if not isinstance(config, ModelConfig):
            raise TypeError(f"SeparationModel: config must be a ModelConfig or a dict, got {config!r}")
        self.config = config
        st = config.stft
        n_freq = st.n_freq
        # Derived from the config, so not saved in the state dict.
        self.register_buffer("window", st.window_tensor(dtype=torch.float32), persistent=False)
        self.features = LogMagnitude(n_freq, config.floor_db)
        self.trunk = BLSTMTrunk(n_freq, config.hidden, config.layers, config.dropout, config.residual)
        width = self.trunk.output_size
        self.embedding_head = (
            EmbeddingHead(width, n_freq, config.embedding_dim, config.embedding_activation)
            if config.embedding_dim > 0 else None
        )
        self.mask_head = None
        if config.mask is not None:
            mask_in = width if config.mask_input == "trunk" else n_freq * config.embedding_dim
            self.mask_head = make_mask_head(config.mask, mask_in, n_freq, config.n_sources, **config.mask_options)

    # ------------------------------------------------------------------ properties
    @property
    def stft(self) -> StftConfig:
        return self.config.stft

    @property
    def source_names(self) -> tuple:
        return self.config.source_names

    @property
    def n_sources(self) -> int:
        return self.config.n_sources

    # ------------------------------------------------------------------ signal helpers
    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(..., L)`` waveform → ``(..., F, T)`` complex STFT with the model's settings, in the
        waveform's precision but at least float32: a float16/bfloat16 waveform gives complex64
        (torch's FFT has no bfloat16, no float16 on the CPU, and there is no complex bfloat16)."""
        st = self.stft
        if waveform.shape[-1] <= st.n_fft // 2:
            raise ValueError(
                f"SeparationModel: input of {waveform.shape[-1]} samples is too short for n_fft={st.n_fft} "
                f"(needs more than {st.n_fft // 2})")
        if waveform.dtype in _HALF:
            waveform = waveform.float()  # exact: float32 holds every float16/bfloat16 value
        return signal.stft(waveform, st.n_fft, st.hop_length, self._window(waveform), center=True)

    def waveform(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """``(..., F, T)`` complex → ``(..., length)`` waveform (inverse STFT)."""
        st = self.stft
        return signal.istft(spec, st.n_fft, st.hop_length, self._window(spec), center=True, length=length)

    def _window(self, like: torch.Tensor) -> torch.Tensor:
        dtype = like.real.dtype if like.is_complex() else like.dtype
        if self.window.dtype in _HALF:  # .half()/.bfloat16() rounded the buffer: the exact one
            return self.stft.window_tensor(like.device, dtype)
        return self.window.to(like.device, dtype)

    # ------------------------------------------------------------------ forward
    def forward(self, mixture: torch.Tensor, need_embedding: bool = True) -> ModelOutput:
        """``mixture``: waveform ``(B, L)``, ``L > n_fft // 2``. ``need_embedding=False`` skips the
        embedding head when the masks do not depend on it (mask inference: it is the largest
        layer and its (B, T·F, D) output the largest activation); ``embedding`` is then None.

        dtypes: ``mixture_spec`` and ``estimates`` are complex in the waveform's precision, at
        least float32 (complex64 for a float16/bfloat16 waveform, on every device: see
        :meth:`spectrogram`); ``embedding`` and real ``masks`` are in the model's parameter
        dtype (codebook masks: see :mod:`chimera.models.codebook_heads`).

        ``torch.export.export(model, (wave,), dynamic_shapes=({0: Dim("batch"), 1: Dim("samples",
        min=n_fft // 2 + 1)},))`` gives a program for any batch and length (for inference: each
        BLSTM layer is then one op without a backward). Under ``torch.jit.trace`` (deprecated
        by torch) the result is the tuple of the tensors of :class:`ModelOutput` that are not
        None, in its field order: a trace can return nothing else."""
        if mixture.dim() != 2:
            raise ValueError(
                f"SeparationModel.forward: expected a (batch, samples) waveform, got {tuple(mixture.shape)}")
        if mixture.is_complex() or not mixture.is_floating_point():
            raise TypeError(f"SeparationModel.forward: expected a real floating waveform, got {mixture.dtype}")
        spec = self.spectrogram(mixture)  # (B, F, T)
        B, F, T = spec.shape
        feats = self.features(spec.abs()).to(self.features.mean.dtype)  # float64 input, float32 model
        h = self.trunk(feats)  # (B, T, 2H)
        wanted = need_embedding or self.mask_head is None or self.config.mask_input != "trunk"
        # (B, T, F, D); the (B, T·F, D) embedding and a mask head's (B, T, F·D) input are views
        # of it (reshaping one into the other made torch.export guard on the symbolic frames)
        frames = self.embedding_head(h, frames=True) if self.embedding_head is not None and wanted else None
        embedding = frames.flatten(1, 2) if frames is not None else None
        masks = estimates = None
        if self.mask_head is not None:
            x = h if self.config.mask_input == "trunk" else frames.flatten(2)
            masks = self.mask_head(x)
            if masks.shape != (B, self.n_sources, F, T):
                raise RuntimeError(f"mask head returned {tuple(masks.shape)}, expected {(B, self.n_sources, F, T)}")
            estimates = apply_masks(masks, spec)
        if torch.jit.is_tracing():
            # a trace returns tensors only: no ModelOutput, None, STFT settings or length
            return tuple(t for t in (spec, embedding, masks, estimates) if t is not None)
        return ModelOutput(spec, embedding, masks, estimates, self.stft, mixture.shape[-1])
