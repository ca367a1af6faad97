"""Separate recordings of any length in bounded memory.

The signal, resampled to the model's rate, is cut into segments of `segment` seconds
that overlap by `overlap` seconds, both whole numbers of STFT hops, so every segment's
STFT frames sit on one global frame grid. Each segment's source spectra are weighted
by a linear cross-fade over the shared frames and summed on that grid; frames that no
later segment touches are final and go through a streaming inverse STFT, then back to
the input's rate, then to disk. Nothing kept grows with the length of the input: the
in-memory call and the streamed file call run this same engine.
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

import numpy as np
import soxr
import torch

from . import signal
from .wiener import multichannel_wiener
from .models import SeparationModel


class SeparationError(Exception):
    """A problem with one input or output: the message names the file and the problem."""


def resolve_device(device):
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SeparationError("--device cuda: no CUDA device is available")
    return device


@dataclass
class _Plan:
    hop: int        # STFT hop (samples at the model rate)
    segment: int    # samples per segment, a multiple of hop
    step: int       # samples between segment starts (segment - overlap), a multiple of hop
    edge: int       # frames at each end of a segment that reach into its padding

    @property
    def frames(self):            # frames per segment (center=True)
        return self.segment // self.hop + 1

    @property
    def shared(self):            # frames shared by consecutive segments
        return self.frames - self.step // self.hop

    def fade_in(self):
        """Weight of the later segment over the shared frames; the earlier one gets 1 − it.

        A segment's first and last ``edge`` frames see its padding, not the signal around
        it: they get weight 0, so the cross-faded spectra equal the STFT of the whole signal
        wherever the masks add up to one (joins are then exact), and the ramp runs between.
        """
        n, e = self.shared, self.edge
        if n <= 2 * e:  # overlap too short to skip the edges: a plain ramp
            return (torch.arange(n, dtype=torch.float64) + 0.5) / n
        w = torch.zeros(n, dtype=torch.float64)
        w[n - e:] = 1.0
        m = n - 2 * e
        w[e:n - e] = (torch.arange(m, dtype=torch.float64) + 0.5) / m
        return w


#: Seconds per segment unless told otherwise (the BLSTM sees this much context).
DEFAULT_SEGMENT = 20.0


class Separator:
    """Separate waveforms or audio files with a :class:`SeparationModel`.

    segment, overlap: seconds (rounded to STFT hops); batch_size: segments per forward
    pass (each channel counts as one); method: "mask" or "kmeans" (None: the model's
    default); wiener_iters: multichannel Wiener filter iterations across the channels of
    each segment (:mod:`chimera.wiener`; 0 keeps each channel's own estimates); misi_iters:
    MISI phase-reconstruction iterations per segment (after the Wiener filter).
    """

    def __init__(self, model: SeparationModel, segment=DEFAULT_SEGMENT, overlap=1.0, device="auto", batch_size=4,
                 method=None, misi_iters=0, seed=0, wiener_iters=0):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        st = model.stft
        self.rate = st.sample_rate
        hop = st.hop_length
        seg = max(int(round(segment * self.rate / hop)), 2 * math.ceil(st.n_fft / hop)) * hop
        ovl = int(round(overlap * self.rate / hop)) * hop
        if ovl < 0 or 2 * ovl + hop > seg:  # a frame is shared by two segments at most
            raise ValueError(f"overlap ({overlap} s) must be between 0 and half the segment ({segment} s)")
        self.plan = _Plan(hop, seg, seg - ovl, edge=math.ceil(st.n_fft / 2 / hop))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.method = model.resolve_method(method)
        self.misi_iters = int(misi_iters)
        if wiener_iters < 0:
            raise ValueError(f"wiener_iters must be >= 0, got {wiener_iters}")
        self.wiener_iters = int(wiener_iters)
        self.seed = seed

    @property
    def source_names(self):
        return tuple(self.model.source_names)

    # ------------------------------------------------------------------ public API
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
        """A :class:`SeparationStream` for `length` samples of `channels` channels."""
        return SeparationStream(self, channels, sample_rate, length)

    def separate_file(self, path, out_dir="separated", **options):
        """Separate one audio file into `out_dir/<name>/<source>.wav`; returns the paths.
        See :func:`separate_file` for the options."""
        return separate_file(self, path, out_dir=out_dir, **options)

    # ------------------------------------------------------------------ model calls
    @torch.no_grad()
    def _source_spectra(self, segments, channels=1):
        """(B, segment) model-rate waveforms, `channels` consecutive rows per segment →
        (B, C, F, T) complex source spectra."""
        x = segments.to(self.device, torch.float32)
        out = self.model(x, need_embedding=self.method == "kmeans")
        if self.method == "mask":
            est = out.estimates
        else:
            est = self._kmeans_estimates(out)
        if self.wiener_iters > 0:
            B, C, F, T = est.shape
            est = multichannel_wiener(est.reshape(B // channels, channels, C, F, T),
                                      out.mixture_spec.reshape(B // channels, channels, F, T),
                                      self.wiener_iters).reshape(B, C, F, T)
        if self.misi_iters > 0:
            st = self.model.stft
            _, est = signal.misi(x, est, self.misi_iters, st.n_fft, st.hop_length,
                                 self.model.window.to(x.device, x.dtype), return_spectra=True)
        return est.to(torch.complex128).cpu()

    def _kmeans_estimates(self, out):
        from .cluster import kmeans
        from .losses import voice_activity_weights
        spec = out.mixture_spec
        B, F, T = spec.shape
        C = self.model.n_sources
        weight = voice_activity_weights(spec.abs().transpose(-1, -2)).to(out.embedding.dtype)
        labels, _ = kmeans(out.embedding, C, weight=weight, seed=self.seed)
        masks = torch.nn.functional.one_hot(labels.reshape(B, T, F), C).permute(0, 3, 2, 1).to(spec.real.dtype)
        if out.masks is not None:
            # name the clusters after the mask head's sources they overlap most
            masks = _best_permutation(masks, out.masks.abs().to(masks.dtype))
        return masks * spec.unsqueeze(1)


def _best_permutation(masks, reference):
    """Reorder the C masks of each item (B, C, F, T) to agree best with `reference`."""
    C = masks.shape[1]
    score = torch.einsum("bift,bjft->bij", masks, reference)  # cluster i vs source j
    perms = list(itertools.permutations(range(C)))
    totals = torch.stack([score[:, list(p), list(range(C))].sum(-1) for p in perms], -1)
    best = [perms[i] for i in totals.argmax(-1).tolist()]
    return torch.stack([masks[b, list(p)] for b, p in enumerate(best)])


class SeparationStream:
    """Push (n, channels) float32 blocks at the input rate; get back the separated
    samples that are final as (n, channels, C) blocks at the input rate."""

    def __init__(self, separator: Separator, channels, sample_rate, length):
        if length <= 0:
            raise ValueError("the input has no samples")
        self.sep = separator
        self.channels = channels
        self.in_rate = int(sample_rate)
        self.length = int(length)
        plan = separator.plan
        rate = separator.rate
        self.model_length = self.length if self.in_rate == rate else int(math.ceil(self.length * rate / self.in_rate))
        C = len(separator.source_names)
        self.n_sources = C
        self._down = None if self.in_rate == rate else soxr.ResampleStream(self.in_rate, rate, channels, dtype="float32")
        self._up = None if self.in_rate == rate else soxr.ResampleStream(rate, self.in_rate, channels * C, dtype="float32")
        # segments: the first starts at 0; enough of them to cover the signal
        L = self.model_length
        n_seg = 1 if L <= plan.segment else 1 + math.ceil((L - plan.segment) / plan.step)
        # A lone segment is the signal itself (padded to one n_fft when shorter), so a
        # short input costs no more than its length and equals model.separate.
        st = separator.model.stft
        self.seg_len = max(L, st.n_fft) if n_seg == 1 else plan.segment
        self.n_seg = n_seg
        window = separator.model.window.to(torch.float64)
        self.istft = signal.StreamingISTFT(st.n_fft, plan.hop, window, center=True, length=L)
        self._buffer = np.zeros((0, channels), np.float32)  # model-rate samples from _buffer_start
        self._buffer_start = 0
        self._received = 0       # model-rate samples received
        self._next_seg = 0       # next segment to run
        self._pending = None     # (channels, C, F, shared) weighted spectra of the frames still open
        self._emitted = 0        # input-rate samples handed out

    # -------------------------------------------------------------- feeding
    def push(self, block):
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"expected (n, {self.channels}) blocks, got {block.shape}")
        if not np.isfinite(block).all():
            raise ValueError("the audio contains NaN or Inf samples")
        if self._down is not None:
            block = self._down.resample_chunk(block, last=False)
        yield from self._consume(block, last=False)

    def finish(self):
        tail = np.zeros((0, self.channels), np.float32)
        if self._down is not None:
            tail = self._down.resample_chunk(tail, last=True)
        yield from self._consume(tail, last=True)

    def _consume(self, block, last):
        block = block[: max(0, self.model_length - self._received)]
        self._received += block.shape[0]
        self._buffer = np.concatenate([self._buffer, block]) if block.size else self._buffer
        plan = self.sep.plan
        ready = []
        while self._next_seg + len(ready) < self.n_seg:
            k = self._next_seg + len(ready)
            end = k * plan.step + self.seg_len
            if end > self._received and not last:
                break
            ready.append(k)
            if len(ready) * self.channels >= self.sep.batch_size:
                yield from self._run(ready)
                ready = []
        if ready:
            yield from self._run(ready)
        if last:
            yield from self._flush()

    def _segment(self, k):
        plan = self.sep.plan
        start = k * plan.step - self._buffer_start
        seg = self._buffer[start:start + self.seg_len]
        if seg.shape[0] < self.seg_len:  # past the end: zeros
            seg = np.concatenate([seg, np.zeros((self.seg_len - seg.shape[0], self.channels), np.float32)])
        return seg.T  # (channels, seg_len)

    def _run(self, ks):
        batch = torch.from_numpy(np.stack([self._segment(k) for k in ks]).reshape(-1, self.seg_len))
        spectra = self.sep._source_spectra(batch, self.channels)  # (len(ks) * channels, C, F, T)
        spectra = spectra.reshape(len(ks), self.channels, *spectra.shape[1:])
        for k, spec in zip(ks, spectra):
            yield from self._add_segment(k, spec)
        # drop input that no later segment needs
        keep_from = (ks[-1] + 1) * self.sep.plan.step
        drop = keep_from - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start = keep_from

    def _add_segment(self, k, spec):
        plan = self.sep.plan
        self._next_seg = k + 1
        spec = spec.clone()
        if k > 0:  # cross-fade with the frames the previous segment left open
            fade = plan.fade_in().to(spec.real.dtype)
            n = self._pending.shape[-1]
            spec[..., :n] = spec[..., :n] * fade[:n] + self._pending
        if k + 1 < self.n_seg:
            final = plan.step // plan.hop             # frames no later segment touches
            fade = plan.fade_in().to(spec.real.dtype)
            self._pending = spec[..., final:] * (1 - fade)
            spec = spec[..., :final]
        yield from self._emit(self.istft.push(spec))

    def _flush(self):
        yield from self._emit(self.istft.flush())
        if self._up is not None:
            tail = self._up.resample_chunk(np.zeros((0, self.channels * self.n_sources), np.float32), last=True)
            yield from self._hand_out(tail, final=True)
        else:
            yield from self._hand_out(np.zeros((0, self.channels * self.n_sources), np.float32), final=True)

    def _emit(self, y):
        """y: (channels, C, n) model-rate samples → input-rate (n', channels, C) blocks."""
        y = y.to(torch.float32).numpy()
        flat = y.reshape(self.channels * self.n_sources, -1).T  # (n, channels*C)
        if self._up is not None:
            flat = self._up.resample_chunk(np.ascontiguousarray(flat), last=False)
        yield from self._hand_out(flat, final=False)

    def _hand_out(self, flat, final):
        remaining = self.length - self._emitted
        flat = flat[:remaining]
        if final and flat.shape[0] < remaining:  # the resampler's rounding: pad to the exact length
            flat = np.concatenate([flat, np.zeros((remaining - flat.shape[0], flat.shape[1]), np.float32)])
        self._emitted += flat.shape[0]
        if flat.shape[0]:
            yield flat.reshape(-1, self.channels, self.n_sources)


# ---------------------------------------------------------------------- files

#: Output formats (libsndfile major formats) by file extension.
FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "aiff": "AIFF"}
DEFAULT_SUBTYPE = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS", "aiff": "PCM_16"}


def output_paths(path, source_names, out_dir="separated", filename="{track}/{stem}.{ext}", ext="wav",
                 output_files=None):
    """Where the sources of `path` go: `output_files` in source order, else `filename`
    (fields {track}: the input's name without extension, {stem}: the source name, {ext})
    under `out_dir`."""
    if output_files is not None:
        if len(output_files) != len(source_names):
            raise SeparationError(f"--output-files: {len(output_files)} names given, but the model has "
                                  f"{len(source_names)} sources ({', '.join(source_names)})")
        return [os.fspath(p) for p in output_files]
    track = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return [os.path.join(out_dir, filename.format(track=track, stem=name, ext=ext)) for name in source_names]


def _open_input(path):
    import soundfile as sf
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SeparationError(f"{path}: no such file")
    if os.path.isdir(path):
        raise SeparationError(f"{path}: is a folder, not an audio file")
    if os.path.getsize(path) == 0:
        raise SeparationError(f"{path}: empty file")
    try:
        f = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise SeparationError(f"{path}: not a readable audio file ({_short(exc)})") from None
    if f.frames == 0:
        f.close()
        raise SeparationError(f"{path}: the audio has no samples")
    return f


def _short(exc):
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace("Error opening", "").strip(" :")


def separate_file(separator, path, out_dir="separated", output_files=None, filename="{track}/{stem}.{ext}",
                  ext="wav", subtype=None, clip="clamp", force=False, block_seconds=10.0, progress=False):
    """Separate the audio file `path` and write one file per source, atomically.

    The input is read in blocks and the outputs are written as the samples become final,
    so memory does not grow with the file's length. Outputs have the input's length,
    channel count and sample rate. Existing outputs are kept unless `force`; on any error
    nothing is written. `clip`: "clamp" limits integer formats to [-1, 1]; "none" leaves
    samples as they are (only sensible with a float subtype). Returns the output paths.
    """
    import contextlib

    import soundfile as sf

    if ext not in FORMATS:
        raise SeparationError(f"unsupported output format {ext!r}; choose one of {', '.join(FORMATS)}")
    subtype = subtype or DEFAULT_SUBTYPE[ext]
    if not sf.check_format(FORMATS[ext], subtype):
        raise SeparationError(f"output format {ext} cannot hold subtype {subtype}")
    if clip not in ("clamp", "none"):
        raise SeparationError(f"clip mode must be 'clamp' or 'none', got {clip!r}")
    targets = output_paths(path, separator.source_names, out_dir, filename, ext, output_files)
    if os.path.abspath(os.fspath(path)) in {os.path.abspath(t) for t in targets}:
        raise SeparationError(f"{path}: an output would overwrite the input")
    if not force:
        for t in targets:
            if os.path.exists(t):
                raise SeparationError(f"{t}: exists (use --force to overwrite)")
    created = _missing_parents(targets)
    try:
        with _open_input(path) as source:  # decode it all once before any output exists
            for _ in _read_blocks(path, source, block_seconds):
                pass
        return _separate_open_file(separator, path, targets, ext, subtype, clip, force, block_seconds, progress)
    except BaseException:
        for folder in created:  # leave no empty folders behind for a failed input
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def _missing_parents(targets):
    """Folders that writing `targets` would create, deepest first."""
    missing = set()
    for t in targets:
        folder = os.path.dirname(os.path.abspath(t))
        while folder and not os.path.exists(folder):
            missing.add(folder)
            folder = os.path.dirname(folder)
    return sorted(missing, key=len, reverse=True)


def _read_blocks(path, source, block_seconds):
    """The samples of an open input as (n, channels) float32 blocks; a block that cannot
    be decoded, a short file or a NaN/Inf sample raises SeparationError naming the file."""
    import soundfile as sf
    rate, frames, read = source.samplerate, source.frames, 0
    block = max(1, int(block_seconds * rate))
    while read < frames:
        try:
            data = source.read(min(block, frames - read), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise SeparationError(f"{path}: read failed at sample {read} ({_short(exc)})") from None
        if data.shape[0] == 0:
            raise SeparationError(f"{path}: file ends at sample {read}, its header says {frames}")
        if not np.isfinite(data).all():
            bad = read + int(np.argwhere(~np.isfinite(data))[0, 0])
            raise SeparationError(f"{path}: NaN or Inf sample at {bad / rate:.3f} s (sample {bad})")
        read += data.shape[0]
        yield data


def _separate_open_file(separator, path, targets, ext, subtype, clip, force, block_seconds, progress):
    import contextlib

    import soundfile as sf

    from .atomic import OutputExistsError, atomic_write

    bar = None
    with _open_input(path) as source, contextlib.ExitStack() as outputs:
        rate, channels, frames = source.samplerate, source.channels, source.frames
        try:
            writers = []
            for t in targets:
                f = outputs.enter_context(atomic_write(t, force=force))
                writers.append(outputs.enter_context(
                    sf.SoundFile(f, "w", samplerate=rate, channels=channels, format=FORMATS[ext], subtype=subtype)))
        except (OutputExistsError, OSError) as exc:
            raise SeparationError(str(exc)) from None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=frames, unit="sample", unit_scale=True, desc=os.path.basename(os.fspath(path)),
                       leave=False, dynamic_ncols=True)
        stream = separator.stream(channels, rate, frames)
        def write(out):  # out: (n, channels, C)
            if clip == "clamp":
                out = np.clip(out, -1.0, 1.0)
            for c, w in enumerate(writers):
                w.write(np.ascontiguousarray(out[:, :, c]))

        for data in _read_blocks(path, source, block_seconds):
            for out in stream.push(data):
                write(out)
            if bar is not None:
                bar.update(data.shape[0])
        for out in stream.finish():
            write(out)
        if bar is not None:
            bar.close()
    return targets
