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
import math
import numbers
import os
import time

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from . import bandext, pretrained, signal
from .atomic import PARTIAL_PREFIX, OutputExistsError, atomic_writes, folders_to_make, remove_empty_folders
from .audio import AudioError, _reason, check_output_channels, check_output_format, open_audio, output_rate, read_blocks
from .cluster import kmeans_masks
from .losses import voice_activity_weights
from .models import SeparationModel, apply_masks, flatten_bins
from .parallel import signals_deferred
from .stream import ChannelGroups, SegmentPlan, SeparationStream, _is_number
from .wiener import check_exponent, multichannel_wiener

log = logging.getLogger(__name__)

# The Separator's defaults, which the command line uses too (one place for both).
#: Seconds per segment (the BLSTM sees this much context). Chosen on the demo data's validation
#: split (tools/choose_segment.py; the model card): with step 4's weights 6 / 10 / 15 / 20 s gave
#: 5.02 / 5.32 / 5.08 / 4.76 dB vocals and 5.77 / 5.97 / 5.88 / 5.70 dB accompaniment SI-SDR
#: improvement on 45 s tracks; with step 5, 5.35 / 5.13 / 5.14 / 5.07 and 5.78 / 5.90 / 6.01 /
#: 5.76 dB; with step 6, 5.26 / 5.29 / 5.24 / 5.30 and 5.85 / 5.80 / 5.87 / 5.79 dB, the mean of
#: both within 0.01 dB from 6 to 20 s; with the bundled step 7, 4.92 / 5.14 / 4.25 / 4.71 and
#: 5.47 / 5.58 / 5.42 / 5.26 dB: 10 s stays.
DEFAULT_SEGMENT = 10.0
#: Seconds of cross-fade between segments.
DEFAULT_OVERLAP = 1.0
#: Segments (x channels) per forward pass.
DEFAULT_BATCH_SIZE = 4
#: Multichannel Wiener iterations across the channels of a recording (chimera.wiener; 0 = each
#: channel's own masks): one iteration gains 0.6 / 0.4 dB vocals / accompaniment SI-SDRi on the
#: stereo validation split (the model card's step-4 table).
DEFAULT_WIENER_ITERS = 1
#: The most channels the Wiener filter runs across; more are each filtered as a mono recording
#: is (MONO_WIENER_EXPONENT), in groups of this many. Its cost grows with the cube of the channels
#: (a solve per bin): with the bundled model on 2 CPU threads, 10 s of 2 / 16 / 32 channels took
#: 0.12 / 4.4 / 16 s (the filter 0.03 / 3.8 / 15 s) and 0.4 / 1.1 / 2.7 GB; 1 s of 64 channels
#: took 8 s; a file claiming 1000 channels did not finish in 5 minutes. 16 channels hold the
#: largest common layouts (9.1.6, third-order ambisonics).
MAX_WIENER_CHANNELS = 16
#: The lowest input rate separated (Hz). A few formats of old went down to 4 kHz; below it not
#: even the telephone band (300-3400 Hz) is there, and the work grows as the rate falls (a 1 Hz
#: header makes every sample a second of audio): such a rate is a damaged header.
MIN_RATE = 4000
#: The highest rate separated (Hz): 13 times the highest PCM rate in use (768 kHz), above the
#: PCM ffmpeg decodes DSD1024 to (5.6448 MHz). The resampler back from the model's rate
#: flushes a tail that grows with the rate and the channels: for 1000 samples, 60 MB more
#: at libsndfile's limit (2**31 - 1 Hz) on one channel and 1 GB on 16, 280 MB at 10**10 Hz
#: on one, more than 5 GB at 10**11 Hz; at this bound 30 MB on 16. A higher rate is a
#: damaged header, or no audio recording (a radio's IQ samples).
MAX_RATE = 10_000_000
#: With one channel the filter has no spatial model: it only shares each bin of the mixture
#: among the sources, so that they add up to it (the model's masks alone do not: on the 60
#: validation tracks downmixed to mono, step 7's sources missed the mixture by -20.8 dB, median).
#: Shares by magnitude (this exponent) kept the masks' scores there: vocals / accompaniment
#: SI-SDR improvement 5.16 / 6.05 dB against 5.24 / 5.97 unshared and 4.74 / 5.81 by power
#: (exponent 1), every source alone still below -29 dB in the other output (benchmarks/RESULTS.md).
MONO_WIENER_EXPONENT = 0.5
#: Exponent of the sources' powers in that filter (chimera.wiener). On the demo data's validation
#: split with step 4's weights (the model card) 0.5 / 0.75 / 1 / 1.5 gave 5.43 / 5.38 / 5.32 /
#: 5.24 dB vocals and 6.23 / 6.23 / 5.97 / 5.66 dB accompaniment SI-SDR improvement, an
#: instrumental alone leaking -22.41 / -23.06 / -23.23 / -23.17 dB into the vocals and a voice
#: alone -37.19 / -42.84 / -47.01 / -53.80 dB into the accompaniment.
DEFAULT_WIENER_EXPONENT = 1.0
#: MISI phase-reconstruction iterations. On the 60 validation tracks with step 7's weights
#: (tools/choose_checkpoint.py --misi; the model card) 0 / 1 / 3 gave 5.54 / 5.49 / 5.45 dB
#: vocals and 5.64 / 5.51 / 5.44 dB accompaniment SI-SDR improvement: the model was not
#: trained through MISI, and its mixture phase serves it better.
DEFAULT_MISI_ITERS = 0
#: The band above the model's Nyquist frequency (an input at a higher rate than the model's;
#: at a lower one, the top of its band that the resampling round trip loses): "split" among
#: the sources by their share of the model's top octave (chimera.bandext), or "drop". Split,
#: the bundled model's outputs carry the whole band and add up to the input.
DEFAULT_HIGH_BAND = "split"
HIGH_BAND_MODES = bandext.HIGH_BAND_MODES
METHODS = ("mask", "kmeans")
#: Output subtypes of integers: libsndfile clips what lies beyond full scale there, which a
#: warning says (as for a clamp), with ``clip="none"`` too.
INTEGER_SUBTYPES = ("PCM_", "ALAC_", "DPCM_", "DWVW_")
#: Output file names under the output folder, and the fields they may use.
DEFAULT_FILENAME = "{track}/{stem}.{ext}"
FILENAME_FIELDS = ("track", "trackext", "stem", "ext", "relpath")


def parse_device(device, given=None) -> torch.device:
    """``torch.device(device)``; a ValueError naming the choices for a name torch does not know
    (torch's words on "gpu" name none), said as `given` (what the user wrote) if not None.
    What ``--device`` is checked with when parsed, too."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{device if given is None else given!r} is not a device; "
                         "use auto, cpu, cuda or cuda:N") from None


def resolve_device(device):
    """`device` as a torch.device ("auto" or None: the first GPU, else the CPU; an index: that
    GPU); a ValueError for a name torch does not know or a GPU that is not there."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # torch's "accelerator" index: said as the GPU it is
    device = parse_device(f"cuda:{device}" if _is_number(device, numbers.Integral) else device, given=device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        # found only when the model moves there, as a CUDA traceback ("invalid device ordinal")
        raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
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


#: A (rows, columns) array with more rows than columns is taken for (samples, channels), the
#: transpose of what separate() wants, once it has more rows than this: fewer may be a very
#: short recording with that many channels (a 1-sample stereo signal is (2, 1)).
MAX_CHANNELS_GUESS = 8


def _as_waveform(waveform) -> torch.Tensor:
    """`waveform` as a float32 CPU tensor of shape (channels, L) or (L,), detached; a
    ValueError/TypeError saying what is wrong with it otherwise."""
    if isinstance(waveform, torch.Tensor):
        x = waveform.detach()
    else:
        a = np.asarray(waveform)
        if a.dtype.kind == "f":  # any NumPy layout: reversed views, big-endian files' arrays
            a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))
        x = torch.as_tensor(a) if a.dtype.kind in "fiub" else None
    if x is None or not x.is_floating_point():  # integer PCM, bool, complex, objects
        raise TypeError(f"separate: expected float samples in [-1, 1], got {x.dtype if x is not None else a.dtype} "
                        "(divide integer PCM by its full scale, e.g. 32768 for int16)")
    if x.dim() not in (1, 2):
        raise ValueError(f"separate: expected (channels, samples) or (samples,), got shape {tuple(x.shape)}")
    if x.shape[-1] == 0:
        raise ValueError(f"separate: the input has no samples (shape {tuple(x.shape)})")
    if x.dim() == 2 and x.shape[0] > max(x.shape[1], MAX_CHANNELS_GUESS):
        raise ValueError(f"separate: shape {tuple(x.shape)} has more channels than samples; expected "
                         "(channels, samples); soundfile.read gives (samples, channels): pass its transpose (x.T)")
    return x.to("cpu", torch.float32)


def _check_rate(sample_rate, lowest=MIN_RATE) -> int:
    """A sample rate in Hz as an int: a whole number (44100 or 44100.0) from `lowest` to
    :data:`MAX_RATE`. The one check of rates: the Python API's, and a file's header
    (:func:`_check_header`) before any work."""
    if not isinstance(sample_rate, numbers.Real) or isinstance(sample_rate, bool):
        raise ValueError(f"separate: sample_rate must be a number of Hz, got a {type(sample_rate).__name__} "
                         "(arguments swapped? separate(waveform, sample_rate))")
    # not finite first: int(inf) raised OverflowError, int(nan) "cannot convert float NaN"
    if not math.isfinite(sample_rate) or sample_rate <= 0 or sample_rate != int(sample_rate):
        raise ValueError(f"separate: sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    rate = int(sample_rate)
    if rate < lowest:
        raise ValueError(f"sample rate {rate} Hz is below {lowest} Hz, the lowest chimera separates "
                         "(a damaged header?)")
    if rate > MAX_RATE:  # the resampler's flush grew without bound (10**11 Hz: gigabytes)
        raise ValueError(f"sample rate {rate} Hz is above {MAX_RATE} Hz, the highest chimera separates "
                         "(a damaged header?)")
    return rate


class Separator:
    """Separate waveforms or audio files with a :class:`SeparationModel`.

    segment, overlap: seconds (rounded to STFT hops; the overlap at most half the segment,
    and at least one n_fft of the model, to which a shorter one, 0 included, is raised);
    device: "auto" (the first GPU, else the CPU), "cpu", "cuda" or "cuda:N", or a
    torch.device; batch_size: segments per forward pass (each channel counts as one);
    method: "mask" or "kmeans" (None: the mask head when the model has one); wiener_iters:
    multichannel Wiener filter iterations across the channels of each segment of a
    multichannel recording (:mod:`chimera.wiener`; 0 keeps each channel's own estimates; on
    a mono recording any number > 0 shares each bin among the sources by magnitude,
    :data:`MONO_WIENER_EXPONENT`; with more than :data:`MAX_WIENER_CHANNELS` channels, each
    channel alone is so filtered); misi_iters: MISI phase-reconstruction iterations per
    segment (after the Wiener filter); seed: of the k-means initialisation; high_band:
    "split" or "drop" the band of an input above the model's Nyquist frequency
    (:mod:`chimera.bandext`); wiener_exponent: of the sources' powers in the Wiener filter
    across channels (below 1 softer shares, above 1 harder). The model is moved to `device`.
    """

    def __init__(self, model: SeparationModel, segment=DEFAULT_SEGMENT, overlap=DEFAULT_OVERLAP, device="auto",
                 batch_size=DEFAULT_BATCH_SIZE, method=None, misi_iters=DEFAULT_MISI_ITERS, seed=0,
                 wiener_iters=DEFAULT_WIENER_ITERS, high_band=DEFAULT_HIGH_BAND,
                 wiener_exponent=DEFAULT_WIENER_EXPONENT):
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.plan = SegmentPlan.from_seconds(model.stft, segment, overlap, batch_size)
        self.method = resolve_method(model, method)
        # whole numbers, as batch_size: 1.5 ran as 1, NaN and "1" failed with other errors
        for name, value in (("misi_iters", misi_iters), ("wiener_iters", wiener_iters)):
            if not (_is_number(value, numbers.Integral) and value >= 0):
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        if not _is_number(seed, numbers.Integral):  # None or 1.5 failed in torch's manual_seed, at the first segment
            raise ValueError(f"seed must be a whole number, got {seed!r}")
        # checked here too: mono input never reaches the filter
        self.wiener_exponent = check_exponent(wiener_exponent, "wiener_exponent")
        self.misi_iters = int(misi_iters)
        self.wiener_iters = int(wiener_iters)
        self.high_band = bandext.check_mode(high_band)
        self.seed = seed
        log.debug("Separator on %s: method %s, Wiener %d, MISI %d, segments of %d samples every %d, batches of %d",
                  self.device, self.method, self.wiener_iters, self.misi_iters, self.plan.segment, self.plan.step,
                  self.plan.batch)

    @classmethod
    def from_pretrained(cls, name=pretrained.DEFAULT, **options) -> "Separator":
        """A Separator around the bundled model `name` (:func:`chimera.pretrained.load`);
        `options` as for the constructor."""
        return cls(pretrained.load(name), **options)

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
        spec = out.mixture_spec
        del out  # the masks (and embeddings): not needed from here on
        if self.wiener_iters > 0:
            B, C, F, T = est.shape
            est = multichannel_wiener(est.reshape(B // channels, channels, C, F, T),
                                      spec.reshape(B // channels, channels, F, T),
                                      self.wiener_iters, inplace=True,
                                      exponent=self.wiener_exponent if channels > 1 else MONO_WIENER_EXPONENT
                                      ).reshape(B, C, F, T)
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
        return apply_masks(masks.to(spec.real.dtype), spec)

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
        """Separate a recording of any length at any rate: sources first, like demucs.

        waveform: ``(channels, L)`` or ``(L,)`` float samples at `sample_rate` (a tensor on
        any device, requiring grad or not, or an array; a soundfile-style ``(L, channels)``
        array is refused: pass its transpose); sample_rate: a whole number of Hz from
        :data:`MIN_RATE` to :data:`MAX_RATE`. Returns ``(C, channels, L)`` or ``(C, L)``
        sources in :attr:`source_names` order (``dict(zip(sep.source_names, sources))`` names
        them), on the input tensor's device and in its dtype (float32 on the CPU for an
        array). Inference only: the result carries no gradient.
        """
        rate = _check_rate(sample_rate)
        x = _as_waveform(waveform)
        mono = x.dim() == 1
        x = x.reshape(1, -1) if mono else x
        if not torch.isfinite(x).all():
            raise ValueError("waveform contains NaN or Inf samples")
        channels, L = x.shape
        stream = self.stream(channels, rate, L)
        parts = list(stream.push(x.numpy().T)) + list(stream.finish())
        out = np.concatenate(parts, axis=0) if parts else np.zeros((0, channels, len(self.source_names)), np.float32)
        out = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 1, 0)))  # (C, channels, L)
        out = out[:, 0] if mono else out
        if isinstance(waveform, torch.Tensor) and waveform.is_floating_point():
            out = out.to(waveform.device, waveform.dtype)
        return out

    def stream(self, channels, sample_rate, length, out_rate=None):
        """A :class:`~chimera.stream.SeparationStream` for `length` samples of `channels`
        channels, giving sources at `out_rate` (default: `sample_rate`). Over
        :data:`MAX_WIENER_CHANNELS` channels, streams over groups of them, each channel
        filtered on its own. A ValueError for a rate below :data:`MIN_RATE` or above
        :data:`MAX_RATE` (an `out_rate` may be below)."""
        sample_rate = _check_rate(sample_rate)  # 8000.5 ran as 8000 Hz
        if not (_is_number(channels, numbers.Integral) and channels >= 1):  # 0 made a stream that could never finish
            raise ValueError(f"stream: channels must be a whole number >= 1, got {channels!r}")
        if out_rate is not None:
            out_rate = _check_rate(out_rate, lowest=1)
        if channels <= MAX_WIENER_CHANNELS:
            return self._stream(self.source_spectra, channels, sample_rate, length, out_rate)

        def each_alone(batch, _channels):  # each row a mono recording
            return self.source_spectra(batch, 1)
        sizes = [min(MAX_WIENER_CHANNELS, channels - c) for c in range(0, channels, MAX_WIENER_CHANNELS)]
        return ChannelGroups([self._stream(each_alone, n, sample_rate, length, out_rate) for n in sizes])

    def _stream(self, spectra, channels, sample_rate, length, out_rate):
        return SeparationStream(spectra, self.plan, self.model.stft, self.model.n_sources, channels,
                                sample_rate, length, out_rate=out_rate, high_band=self.high_band)

    def separate_file(self, path, out_dir="separated", **options):
        """Separate one audio file into `out_dir/<name>/<source>.wav`; returns the paths.
        See :func:`separate_file` for the options."""
        return separate_file(self, path, out_dir=out_dir, **options)


# ---------------------------------------------------------------------- files

def output_paths(path, source_names, out_dir="separated", filename=DEFAULT_FILENAME, ext="wav",
                 output_files=None, relpath=None):
    """Where the sources of `path` go: `output_files` in source order, else `filename`
    under `out_dir`, with the fields {track} (the input's name without extension),
    {trackext} (its extension), {stem} (the source name), {ext} (the output's extension)
    and {relpath} (`relpath`: the input's path under the folder it was found in, without
    extension; {track} when not given). ValueError for an unknown field."""
    if output_files is not None:
        if len(output_files) != len(source_names):
            raise ValueError(f"--output-files: {len(output_files)} names given, but the model has "
                             f"{len(source_names)} sources ({', '.join(source_names)})")
        return [os.fspath(p) for p in output_files]
    track, trackext = os.path.splitext(os.path.basename(os.fspath(path)))
    fields = dict(track=track, trackext=trackext.lstrip("."), ext=ext, relpath=relpath or track)
    try:
        return [os.path.normpath(os.path.join(out_dir, filename.format(stem=name, **fields)))
                for name in source_names]
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"--filename {filename!r}: {exc!r} is not a field; use "
                         + ", ".join("{" + f + "}" for f in FILENAME_FIELDS)) from None


def separate_file(separator, path, out_dir="separated", output_files=None, filename=DEFAULT_FILENAME,
                  ext="wav", subtype=None, clip="clamp", force=False, block_seconds=10.0, progress=False,
                  relpath=None, targets=None, tidy=True):
    """Separate the audio file `path` and write one file per source, atomically.

    The input is read in blocks and the outputs are written as the samples become final,
    so memory does not grow with the file's length. Outputs have the input's length,
    channel count and sample rate, except where the output format cannot hold that rate
    (opus, mp3: :func:`chimera.audio.output_rate`, the next rate up that it can). Existing
    outputs are kept unless `force`; on any error nothing is written: the outputs are put in
    place together, and when one cannot be, none is (the files they replaced restored).
    `clip`: "clamp" limits the samples to [-1, 1] (and says how many it clipped, a warning
    once the file is written); "none" leaves samples as they are (only sensible with a float
    subtype: an integer one clips them, and the warning says so).
    `targets`: the output paths when already computed with :func:`output_paths` (else from
    the naming options). `progress`: a bar in seconds of audio on stderr. `tidy`: the folders
    made for a failed input are removed; a process that may share them with other writers
    (predict's ``-j`` workers, torchrun's ranks) passes False and tidies once all are done:
    an output still being written (unnamed) leaves no entry, so its folder looks empty.
    Returns the output paths. A problem with the input or an output raises
    :class:`~chimera.audio.AudioError`.
    """
    _, subtype = check_output_format(ext, subtype)
    # a positive number of seconds: inf raised OverflowError, "0.1" repeated the string,
    # 0 and below read one sample at a time
    if not (_is_number(block_seconds, numbers.Real) and math.isfinite(block_seconds) and block_seconds > 0):
        raise ValueError(f"block_seconds must be a positive number of seconds, got {block_seconds!r}")
    if clip not in ("clamp", "none"):
        raise ValueError(f"clip mode must be 'clamp' or 'none', got {clip!r}")
    if targets is None:
        targets = output_paths(path, separator.source_names, out_dir, filename, ext, output_files, relpath)
    # realpath: an output naming the input through a symlink replaced the input's file
    if os.path.realpath(os.fspath(path)) in {os.path.realpath(t) for t in targets}:
        raise AudioError.at(path, "an output would overwrite the input")
    if not force:
        for t in targets:
            if os.path.exists(t):
                raise AudioError.at(t, "exists (use --force to overwrite)")
    created = folders_to_make(targets)
    start = time.perf_counter()
    try:
        with open_audio(path) as source:  # decode it all once before any output exists
            _check_header(path, source, ext)
            block = max(1, int(block_seconds * source.samplerate))
            for _ in read_blocks(source, block):
                pass
            seconds = source.frames / source.samplerate
        clipped = _separate_open_file(separator, path, targets, ext, subtype, clip, force, block_seconds, progress)
    except BaseException:
        if tidy:  # leave no empty folders behind for a failed input
            remove_empty_folders(created)
        raise
    elapsed = time.perf_counter() - start
    if clipped["samples"]:  # said once the progress bar has cleared its line
        how = "clipped to [-1, 1]" if clip == "clamp" else f"clipped by the {subtype} format"
        log.warning("%s: %d output samples beyond full scale (peak %.2f, %+.1f dBFS) were %s; "
                    "--float32 --clip-mode none keeps them", path, clipped["samples"], clipped["peak"],
                    20 * np.log10(clipped["peak"]), how)
    log.info("%s: %.1f s of audio in %.1f s (%.1fx real time) -> %s", path, seconds, elapsed,
             seconds / max(elapsed, 1e-9), ", ".join(targets))
    return targets


def _check_header(path, source, ext):
    """Refuse, before any work, an input (`source`, open) whose rate chimera does not
    separate or whose channels the output format cannot hold."""
    try:
        _check_rate(source.samplerate)
        check_output_channels(ext, source.channels)
    except ValueError as exc:
        raise AudioError.at(path, str(exc)) from None


def _separate_open_file(separator, path, targets, ext, subtype, clip, force, block_seconds, progress):
    with open_audio(path) as source, _output_files(targets, force) as files:
        sinks = [_Sink(f, t) for f, t in zip(files, targets)]
        try:
            clipped = _write_sources(separator, path, source, sinks, ext, subtype, clip, block_seconds, progress)
        except Exception:  # soundfile's own error hides the system's (disk full): say that one
            _raise_sink_error(sinks)
            raise
        _raise_sink_error(sinks)  # one soundfile did not notice (the header written at close): no set placed
        return clipped


def _raise_sink_error(sinks):
    """Raise the AudioError of the OSError a sink kept, naming its output, if any."""
    failed = next((s for s in sinks if s.error is not None), None)
    if failed is not None:
        raise _output_error(failed.error, failed.path) from None


@contextlib.contextmanager
def _output_files(targets, force):
    """:func:`~chimera.atomic.atomic_writes`, its own OSErrors (making a folder, placing the
    files) as AudioErrors naming the output; those of the block (reading the input) as they are."""
    in_block = False
    try:
        with atomic_writes(targets, force=force) as files:
            try:
                yield files
            except BaseException:
                in_block = True
                raise
    except OSError as exc:
        if in_block:
            raise
        raise _output_error(exc, targets[0]) from None


def _output_error(exc, path):
    """An OSError about an output as an AudioError: one line naming the file (the output
    `path` when the error names none, or only a hidden partial file of its folder)."""
    if isinstance(exc, OutputExistsError) or exc.errno is None:  # chimera.atomic's, worded already
        return AudioError(str(exc), path=exc.filename or path)
    where = os.fspath(exc.filename) if exc.filename else path
    if os.path.basename(where).startswith(PARTIAL_PREFIX):  # renamed or linked to filename2
        where = os.fspath(exc.filename2) if exc.filename2 else path
    reason = exc.strerror or str(exc)
    return AudioError.at(where, f"cannot be written ({reason[:1].lower() + reason[1:]})")


class _Sink:
    """The file object libsndfile writes an output through. soundfile calls it from C, where
    an exception (disk full) is printed as "Exception ignored" and lost, and the write only
    fails later, unexplained: the first OSError is kept here, for the message. (Ctrl-C and
    SIGTERM wait outside those calls: signals_deferred.)"""

    def __init__(self, file, path):
        self.file, self.path, self.error = file, path, None

    def _call(self, method, *args, failed):
        if self.error is None:
            try:
                return getattr(self.file, method)(*args)
            except OSError as exc:
                self.error = exc
        return failed

    def write(self, data):
        return self._call("write", data, failed=0)

    def read(self, n=-1):
        return self._call("read", n, failed=b"")

    def seek(self, offset, whence=0):
        return self._call("seek", offset, whence, failed=-1)

    def tell(self):
        return self._call("tell", failed=-1)


def _write_sources(separator, path, source, sinks, ext, subtype, clip, block_seconds, progress):
    major, _ = check_output_format(ext, subtype)
    with contextlib.ExitStack() as outputs:  # closed (headers written) before the files are placed
        rate, channels, frames = source.samplerate, source.channels, source.frames
        out_rate = output_rate(ext, rate)
        if out_rate != rate:
            log.info("%s: %s cannot be written at %d Hz: the outputs are at %d Hz", path, ext, rate, out_rate)
        # libsndfile calls the sinks from C when it opens (the header), writes and closes an
        # output: signals wait outside those calls (signals_deferred)
        writers = []
        outputs.callback(_close_all, writers)
        try:
            with signals_deferred():
                for s in sinks:
                    writers.append(sf.SoundFile(s, "w", samplerate=out_rate, channels=channels, format=major,
                                                subtype=subtype))
        except _WRITE_ERRORS as exc:
            if any(s.error is not None for s in sinks):
                raise
            raise AudioError.at(sinks[0].path, f"cannot be written as {ext} ({_reason(exc)})") from None
        if channels > MAX_WIENER_CHANNELS and separator.wiener_iters > 0:
            log.warning("%s: %d channels: the Wiener filter runs on each channel alone (across channels: at most %d)",
                        path, channels, MAX_WIENER_CHANNELS)
        stream = separator.stream(channels, rate, frames, out_rate=out_rate)
        bar = outputs.enter_context(_seconds_bar(frames / rate, os.path.basename(os.fspath(path)), progress))
        clipped = {"samples": 0, "peak": 0.0}
        integer = subtype.startswith(INTEGER_SUBTYPES)

        def write(out):  # out: (n, channels, C)
            if clip == "clamp" or integer:  # (libsndfile clips what an integer format cannot hold)
                level = np.abs(out)
                over = level > 1.0
                if over.any():  # counted, so that a loud input's clipping is said, not silent
                    clipped["samples"] += int(over.sum())
                    clipped["peak"] = max(clipped["peak"], float(level.max()))
                    if clip == "clamp":
                        out = np.clip(out, -1.0, 1.0)
            with signals_deferred():
                for c, w in enumerate(writers):
                    w.write(np.ascontiguousarray(out[:, :, c]))

        for data in read_blocks(source, max(1, int(block_seconds * rate))):
            for out in stream.push(data):
                write(out)
            bar.update(data.shape[0] / rate)
        for out in stream.finish():
            write(out)
    return clipped


def _close_all(writers):
    """Close every writer (their headers are written now), signals deferred, each even when
    another's close failed."""
    with signals_deferred(), contextlib.ExitStack() as closing:
        for w in writers:
            closing.callback(w.close)


# What libsndfile raises for an output it refuses (e.g. a rate or channel count the format
# cannot hold); the class differs by soundfile version.
_WRITE_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError)


def _seconds_bar(seconds, name, enabled):
    """A progress bar counting seconds of audio (not samples: comparable across rates)."""
    return tqdm(total=round(seconds, 2), unit="s", leave=False, desc=name, dynamic_ncols=True, disable=not enabled,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}]")
