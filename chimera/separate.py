"""Separate waveforms and audio files with a trained model: the inference policy.

The model computes (forward, STFT, inverse STFT); :class:`Separator` decides how its
outputs become sources (the mask head, or k-means on the embeddings through
:func:`chimera.cluster.kmeans_masks`; then the multichannel Wiener filter; then MISI) in
one place, :meth:`Separator.source_spectra`. Everything runs through it: ``predict`` and
``evaluate`` segment-by-segment through a :class:`~chimera.stream.SeparationStream`, the
trainer's validation batch-wise through :meth:`Separator.separate_batch`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from . import signal
from .atomic import atomic_write
from .audio import AudioError, check_output_format, open_audio, read_blocks
from .cluster import kmeans_masks
from .losses import voice_activity_weights
from .models import SeparationModel, flatten_bins
from .stream import SegmentPlan, SeparationStream
from .wiener import multichannel_wiener

log = logging.getLogger(__name__)

#: Seconds per segment unless told otherwise (the BLSTM sees this much context).
DEFAULT_SEGMENT = 20.0
METHODS = ("mask", "kmeans")


def resolve_device(device):
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA device is available")
    return device


def resolve_method(model: SeparationModel, method: str | None) -> str:
    """The separation method to use: None means the mask head when there is one."""
    if method is None:
        method = "mask" if model.mask_head is not None else "kmeans"
    if method not in METHODS:
        raise ValueError(f"separate: unknown method {method!r}; use 'mask' or 'kmeans'")
    if method == "mask" and model.mask_head is None:
        raise ValueError("separate: this model has no mask head; use method='kmeans'")
    if method == "kmeans" and model.embedding_head is None:
        raise ValueError("separate: this model has no embedding head; use method='mask'")
    return method


class Separator:
    """Separate waveforms or audio files with a :class:`SeparationModel`.

    segment, overlap: seconds (rounded to STFT hops); batch_size: segments per forward
    pass (each channel counts as one); method: "mask" or "kmeans" (None: the mask head
    when the model has one); wiener_iters: multichannel Wiener filter iterations across
    the channels of each segment (:mod:`chimera.wiener`; 0 keeps each channel's own
    estimates); misi_iters: MISI phase-reconstruction iterations per segment (after the
    Wiener filter); seed: of the k-means initialisation. The model is moved to `device`.
    """

    def __init__(self, model: SeparationModel, segment=DEFAULT_SEGMENT, overlap=1.0, device="auto", batch_size=4,
                 method=None, misi_iters=0, seed=0, wiener_iters=0):
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.plan = SegmentPlan.from_seconds(model.stft, segment, overlap, batch_size)
        self.method = resolve_method(model, method)
        if misi_iters < 0:
            raise ValueError(f"misi_iters must be >= 0, got {misi_iters}")
        if wiener_iters < 0:
            raise ValueError(f"wiener_iters must be >= 0, got {wiener_iters}")
        self.misi_iters = int(misi_iters)
        self.wiener_iters = int(wiener_iters)
        self.seed = seed
        log.debug("Separator on %s: method %s, Wiener %d, MISI %d, segments of %d samples every %d, batches of %d",
                  self.device, self.method, self.wiener_iters, self.misi_iters, self.plan.segment, self.plan.step,
                  self.plan.batch)

    @property
    def source_names(self):
        return tuple(self.model.source_names)

    @property
    def rate(self):
        """The model's sample rate."""
        return self.model.stft.sample_rate

    # ------------------------------------------------------------------ the policy
    @torch.no_grad()
    def source_spectra(self, mixture, channels=1):
        """(B, L) model-rate waveforms, `channels` consecutive rows per multichannel item →
        (B, C, F, T) complex source spectra on the Separator's device. The model runs in
        eval mode (dropout off) and gets its previous mode back."""
        model = self.model
        x = mixture.to(self.device, model.features.mean.dtype)
        was_training = model.training
        model.eval()
        try:
            out = model(x, need_embedding=self.method == "kmeans")
        finally:
            model.train(was_training)
        est = out.estimates if self.method == "mask" else self._kmeans_estimates(out)
        if self.wiener_iters > 0:
            B, C, F, T = est.shape
            est = multichannel_wiener(est.reshape(B // channels, channels, C, F, T),
                                      out.mixture_spec.reshape(B // channels, channels, F, T),
                                      self.wiener_iters).reshape(B, C, F, T)
        if self.misi_iters > 0:
            st = model.stft
            _, est = signal.misi(x, est, self.misi_iters, st.n_fft, st.hop_length,
                                 model.window.to(x.device, x.dtype), return_spectra=True)
        return est

    def _kmeans_estimates(self, out):
        """Binary k-means masks on the embeddings of the bins that are not silent, named
        after the mask head's sources they overlap most when the model has one."""
        spec = out.mixture_spec
        B, F, T = spec.shape
        weight = voice_activity_weights(flatten_bins(spec.abs())).to(out.embedding.dtype)
        reference = None if out.masks is None else out.masks.abs().transpose(-1, -2)  # (B, C, T, F)
        masks = kmeans_masks(out.embedding, self.model.n_sources, shape=(T, F), weight=weight, reference=reference,
                             seed=self.seed).transpose(-1, -2)
        return masks.to(spec.real.dtype) * spec.unsqueeze(1)

    # ------------------------------------------------------------------ public API
    def separate_batch(self, mixture, channels=1):
        """(..., L) mixtures at the model's rate → (..., C, L) sources, in the input's dtype
        and on its device: each mixture in one forward pass (no segments, no resampling),
        through the same :meth:`source_spectra` as :meth:`separate`. With the Wiener filter,
        each `channels` consecutive mixtures (e.g. an input of shape (B, channels, L)) are
        the channels of one recording."""
        if mixture.is_complex() or not mixture.is_floating_point():
            raise TypeError(f"separate_batch: expected a real floating waveform, got {mixture.dtype}")
        lead, L = mixture.shape[:-1], mixture.shape[-1]
        flat = mixture.reshape(-1, L)
        if flat.shape[0] % channels:
            raise ValueError(f"separate_batch: {flat.shape[0]} mixtures are not groups of {channels} channels")
        y = self.model.waveform(self.source_spectra(flat, channels), L)
        return y.reshape(*lead, self.model.n_sources, L).to(mixture.device, mixture.dtype)

    def separate(self, waveform, sample_rate):
        """(channels, L) or (L,) at `sample_rate` → (channels, C, L) or (C, L) float32."""
        x = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
        mono = x.dim() == 1
        x = x.reshape(1, -1) if mono else x
        if x.dim() != 2:
            raise ValueError(f"waveform must be (channels, samples) or (samples,), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("waveform contains NaN or Inf samples")
        stream = self.stream(x.shape[0], sample_rate, x.shape[1])
        parts = list(stream.push(x.numpy().T)) + list(stream.finish())
        out = np.concatenate(parts, axis=0) if parts else np.zeros((0, x.shape[0], len(self.source_names)), np.float32)
        out = torch.from_numpy(np.ascontiguousarray(out.transpose(1, 2, 0)))  # (channels, C, L)
        return out[0] if mono else out

    def stream(self, channels, sample_rate, length):
        """A :class:`~chimera.stream.SeparationStream` for `length` samples of `channels` channels."""
        return SeparationStream(self.source_spectra, self.plan, self.model.stft, self.model.n_sources, channels,
                                sample_rate, length)

    def separate_file(self, path, out_dir="separated", **options):
        """Separate one audio file into `out_dir/<name>/<source>.wav`; returns the paths.
        See :func:`separate_file` for the options."""
        return separate_file(self, path, out_dir=out_dir, **options)


# ---------------------------------------------------------------------- files

def output_paths(path, source_names, out_dir="separated", filename="{track}/{stem}.{ext}", ext="wav",
                 output_files=None):
    """Where the sources of `path` go: `output_files` in source order, else `filename`
    (fields {track}: the input's name without extension, {stem}: the source name, {ext})
    under `out_dir`."""
    if output_files is not None:
        if len(output_files) != len(source_names):
            raise ValueError(f"--output-files: {len(output_files)} names given, but the model has "
                             f"{len(source_names)} sources ({', '.join(source_names)})")
        return [os.fspath(p) for p in output_files]
    track = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return [os.path.join(out_dir, filename.format(track=track, stem=name, ext=ext)) for name in source_names]


def separate_file(separator, path, out_dir="separated", output_files=None, filename="{track}/{stem}.{ext}",
                  ext="wav", subtype=None, clip="clamp", force=False, block_seconds=10.0, progress=False):
    """Separate the audio file `path` and write one file per source, atomically.

    The input is read in blocks and the outputs are written as the samples become final,
    so memory does not grow with the file's length. Outputs have the input's length,
    channel count and sample rate. Existing outputs are kept unless `force`; on any error
    nothing is written. `clip`: "clamp" limits integer formats to [-1, 1]; "none" leaves
    samples as they are (only sensible with a float subtype). Returns the output paths.
    A problem with the input or an output raises :class:`~chimera.audio.AudioError`.
    """
    _, subtype = check_output_format(ext, subtype)
    if clip not in ("clamp", "none"):
        raise ValueError(f"clip mode must be 'clamp' or 'none', got {clip!r}")
    targets = output_paths(path, separator.source_names, out_dir, filename, ext, output_files)
    if os.path.abspath(os.fspath(path)) in {os.path.abspath(t) for t in targets}:
        raise AudioError.at(path, "an output would overwrite the input")
    if not force:
        for t in targets:
            if os.path.exists(t):
                raise AudioError.at(t, "exists (use --force to overwrite)")
    created = _missing_parents(targets)
    start = time.perf_counter()
    try:
        with open_audio(path) as source:  # decode it all once before any output exists
            block = max(1, int(block_seconds * source.samplerate))
            for _ in read_blocks(source, block):
                pass
            seconds = source.frames / source.samplerate
        _separate_open_file(separator, path, targets, ext, subtype, clip, force, block_seconds, progress)
    except BaseException:
        for folder in created:  # leave no empty folders behind for a failed input
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    elapsed = time.perf_counter() - start
    log.info("%s: %.1f s of audio in %.1f s (%.1fx real time) -> %s", path, seconds, elapsed,
             seconds / max(elapsed, 1e-9), ", ".join(targets))
    return targets


def _missing_parents(targets):
    """Folders that writing `targets` would create, deepest first."""
    missing = set()
    for t in targets:
        folder = os.path.dirname(os.path.abspath(t))
        while folder and not os.path.exists(folder):
            missing.add(folder)
            folder = os.path.dirname(folder)
    return sorted(missing, key=len, reverse=True)


def _separate_open_file(separator, path, targets, ext, subtype, clip, force, block_seconds, progress):
    major, _ = check_output_format(ext, subtype)
    with open_audio(path) as source, contextlib.ExitStack() as outputs:
        rate, channels, frames = source.samplerate, source.channels, source.frames
        try:
            writers = []
            for t in targets:
                f = outputs.enter_context(atomic_write(t, force=force))
                writers.append(outputs.enter_context(
                    sf.SoundFile(f, "w", samplerate=rate, channels=channels, format=major, subtype=subtype)))
        except OSError as exc:  # OutputExistsError (a FileExistsError) included: it names the file
            raise AudioError(str(exc), path=exc.filename) from None
        bar = outputs.enter_context(tqdm(total=frames, unit="sample", unit_scale=True, leave=False,
                                         desc=os.path.basename(os.fspath(path)), dynamic_ncols=True,
                                         disable=not progress))
        stream = separator.stream(channels, rate, frames)

        def write(out):  # out: (n, channels, C)
            if clip == "clamp":
                out = np.clip(out, -1.0, 1.0)
            for c, w in enumerate(writers):
                w.write(np.ascontiguousarray(out[:, :, c]))

        for data in read_blocks(source, max(1, int(block_seconds * rate))):
            for out in stream.push(data):
                write(out)
            bar.update(data.shape[0])
        for out in stream.finish():
            write(out)
