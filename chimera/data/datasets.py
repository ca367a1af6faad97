"""Separation data sets: MUSDB18-HQ, DSD100, our demo layout, wsj0-2mix, and folders of isolated
sources mixed on the fly (``FolderTuple``).

Every data set yields ``{"mixture": (L,) float32, "sources": (C, L) float32, "name": str}`` at the
model sample rate, mono. Randomness is a pure function of ``(seed, epoch, index)`` when ``seed``
is given (call :meth:`set_epoch` each epoch, before creating the DataLoader iterator), so results
do not depend on the number of DataLoader workers and a resumed run sees the same data. With
``seed=None`` the draws come from torch's global generator, which DataLoader seeds per worker.

Files that cannot be read are handled by ``on_error``: ``"skip"`` warns with the path and uses
another track/file, ``"raise"`` raises :class:`~chimera.audio.AudioError` naming the path.
"""
from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch
from torch.utils.data import Dataset

from ..audio import AUDIO_EXTENSIONS, AudioError, audio_info, read_audio, resample, to_mono

__all__ = [
    "SegmentDataset",
    "Track",
    "MUSDB18",
    "DSD100",
    "DemoTracks",
    "WSJ0Mix",
    "FolderTuple",
]

_MAX_SKIPS = 32  # give up after this many unreadable items in a row


class _PartnerError(AudioError):
    """A remix partner's file could not be read (that stem group is excluded, not the item's track)."""


class _KnownBad(Exception):
    """The item would read a file already known to be unreadable (skipped without a warning)."""


#: The key of a track's mixture file among its unreadable parts (stem groups are 0, 1, ...).
_MIXTURE = -1


@dataclass
class Track:
    """One example: files summed per output source, an optional mixture file, shared header."""

    name: str
    sources: list[list[str]]
    mixture: str | None = None
    frames: int = 0
    sample_rate: int = 0
    channels: int = 0


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


#: soxr's qualities (the names in any case, or its constants).
_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")


def _check_quality(q) -> None:
    """``resample_quality`` is one soxr takes (else soxr refused it at the first item that
    needed resampling: a worker's traceback, an epoch in when only some files differ in rate)."""
    ok = (isinstance(q, str) and q.upper().removeprefix("SOXR_") in _QUALITIES) or (
        isinstance(q, int) and not isinstance(q, bool) and q in (soxr.QQ, soxr.LQ, soxr.MQ, soxr.HQ, soxr.VHQ))
    if not ok:
        raise ValueError(f"resample_quality must be one of {_QUALITIES}, got {q!r}")


def _check_seed(seed) -> None:
    """numpy's generators take a non-negative integer only (else: a traceback at the first item)."""
    if seed is not None and not (isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")


class _Base(Dataset):
    """Options shared by all data sets (see module docstring)."""

    def __init__(
        self,
        *,
        sample_rate: int,
        segment_seconds: float | None = None,
        train: bool = True,
        seed: int | None = None,
        mono: str = "mean",
        gain_db: tuple[float, float] | None = None,
        on_error: str = "skip",
        resample_quality: str = "HQ",
    ):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        # NaN, inf or less than a frame failed only at the first item (a worker's traceback)
        if segment_seconds is not None and not (math.isfinite(segment_seconds)
                                                and round(segment_seconds * sample_rate) >= 1):
            raise ValueError(f"segment_seconds must be positive (at least one frame) or None, got {segment_seconds}")
        _check_choice("mono", mono, ("mean", "random"))
        _check_choice("on_error", on_error, ("skip", "raise"))
        _check_quality(resample_quality)
        _check_seed(seed)
        if gain_db is not None:
            try:  # (a number or a string was a TypeError, or its characters)
                pair = None if isinstance(gain_db, (str, bytes)) else [float(v) for v in gain_db]
            except (TypeError, ValueError):
                pair = None
            if pair is None or len(pair) != 2 or not (all(math.isfinite(v) for v in pair) and pair[0] <= pair[1]):
                shown = list(gain_db) if isinstance(gain_db, (list, tuple)) else gain_db
                raise ValueError(f"gain_db must be (low, high) in dB with low <= high, got {shown!r}")
        self.sample_rate = int(sample_rate)
        self.segment_seconds = segment_seconds
        self.train = bool(train)
        self.seed = seed
        self.mono = mono
        self.gain_db = None if gain_db is None else (float(gain_db[0]), float(gain_db[1]))
        self.on_error = on_error
        self.resample_quality = resample_quality
        self.epoch = 0

    # -- randomness -------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of an epoch (training only; validation never changes)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        if not self.train:
            return np.random.default_rng([0 if self.seed is None else self.seed, 0x7A11D, index])
        if self.seed is None:
            # torch's global generator: seeded per worker by DataLoader, and by torch.manual_seed.
            return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        return np.random.default_rng([self.seed, self.epoch, index])

    @property
    def segment_frames(self) -> int | None:
        if self.segment_seconds is None:
            return None
        return int(round(self.segment_seconds * self.sample_rate))

    def _start(self, rng: np.random.Generator, frames: int, sr: int, speed: float = 1.0) -> int:
        """A random start frame in a file of ``frames`` at ``sr``, with room for a segment
        played at ``speed`` (0 for whole files)."""
        n_model = self.segment_frames
        if n_model is None:
            return 0
        n_file = _file_frames(n_model * speed, sr, self.sample_rate)
        return int(rng.integers(0, max(0, frames - n_file) + 1))

    # -- reading ----------------------------------------------------------------------------
    def _handle(self, err: AudioError) -> None:
        if self.on_error == "raise":
            raise err
        warnings.warn(f"skipping unreadable audio: {err}", RuntimeWarning, stacklevel=3)

    def _read(self, path: str, sr: int, start: int, n_model: int | None, channel: int | None,
              speed: float = 1.0) -> np.ndarray:
        """Read a segment of ``n_model`` frames at the model rate starting at file frame ``start``,
        played ``speed`` times as fast (pitch and tempo together, as a tape would)."""
        if n_model is None:
            x, file_sr = read_audio(path)
        else:
            x, file_sr = read_audio(path, start, _file_frames(n_model * speed, sr, self.sample_rate))
        if file_sr != sr:
            raise AudioError.at(path, f"sample rate {file_sr} Hz differs from its track ({sr} Hz)")
        x = to_mono(x, "random" if channel is not None else "mean", channel)
        x = resample(x, sr, self.sample_rate / speed, self.resample_quality)
        if n_model is not None:
            x = _fit(x, n_model)
        return x

    def _gains(self, rng: np.random.Generator, n: int) -> np.ndarray | None:
        if not self.train or self.gain_db is None:
            return None
        lo, hi = self.gain_db
        return (10.0 ** (rng.uniform(lo, hi, size=n) / 20.0)).astype(np.float32)

    def _channel(self, rng: np.random.Generator, channels: int) -> int | None:
        if self.train and self.mono == "random" and channels > 1:
            return int(rng.integers(channels))
        return None


def _file_frames(n_model: float, sr: int, model_rate: int) -> int:
    """File frames at ``sr`` that cover ``n_model`` frames at the model's rate."""
    return int(math.ceil(n_model * sr / model_rate))


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    if x.shape[0] >= n:
        return x[:n]
    return np.pad(x, (0, n - x.shape[0]))


def _item(mixture: np.ndarray, sources: list[np.ndarray], name: str) -> dict:
    n = min([mixture.shape[0]] + [s.shape[0] for s in sources])
    return {
        "mixture": torch.from_numpy(np.ascontiguousarray(mixture[:n], dtype=np.float32)),
        "sources": torch.from_numpy(np.stack([s[:n] for s in sources]).astype(np.float32)),
        "name": name,
    }


#: Control points of a random equaliser curve (``eq_db``): log-spaced from 60 Hz to Nyquist.
_EQ_POINTS = 8
_EQ_LOW_HZ = 60.0


def random_eq(x: np.ndarray, rng: np.random.Generator, max_db: float, sample_rate: int) -> np.ndarray:
    """``x`` (1-D) through a random smooth equaliser: gains uniform in ±``max_db`` at
    ``_EQ_POINTS`` log-spaced frequencies, linear in dB between them (flat below the first,
    the top one at Nyquist). It moves formants and spectral tilt, so that a voice or
    instrument with another timbre than those of training is still recognised."""
    n = x.shape[0]
    gains_db = rng.uniform(-max_db, max_db, size=_EQ_POINTS)
    if n < 2:
        return x
    spectrum = np.fft.rfft(x.astype(np.float64))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    points = np.geomspace(_EQ_LOW_HZ, sample_rate / 2, _EQ_POINTS)
    curve = np.interp(np.log(np.maximum(freqs, _EQ_LOW_HZ)), np.log(points), gains_db)
    return np.fft.irfft(spectrum * 10.0 ** (curve / 20.0), n).astype(np.float32)


def _speed_range(speed: Sequence[float] | None) -> tuple[float, float] | None:
    """``speed`` as (low, high) playback speeds, 0 < low <= high (None: no speed changes)."""
    if speed is None:
        return None
    r = tuple(float(v) for v in speed)
    if len(r) != 2 or not all(math.isfinite(v) and v > 0 for v in r) or r[0] > r[1]:
        raise ValueError(f"speed must be (low, high) with 0 < low <= high, got {list(speed)}")
    return r


def _keep_weights(weights: Sequence[float] | None, n: int) -> np.ndarray | None:
    """``solo_keep`` as probabilities over the ``n`` sources (None: uniform)."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"solo_keep must be {n} non-negative weights (one per source, not all 0), got {list(weights)}")
    return w / w.sum()


class SegmentDataset(_Base):
    """Tracks of aligned stems (plus an optional mixture file), cut into segments.

    Training (``train=True``): ``len = tracks * segments_per_track``; each item is a random
    segment of track ``index % tracks``. Augmentation: per-source gains (``gain_db``), remixing
    (``remix`` = probability that each source comes from another random track at its own
    offset), solos (``solo`` = probability that an item keeps one random source and silences
    the others: teaches a model that a source can be absent, so a voice alone or an
    instrumental alone leaves the other outputs near silent; ``solo_keep`` = relative weights
    of the sources as the one kept, uniform by default), random equalisation (``eq_db`` > 0:
    each source through its own smooth random curve of up to ±``eq_db``, :func:`random_eq`),
    speed changes (``speed`` = (low, high): each source played at its own random speed, drawn
    log-uniformly in that range; pitch, formants and tempo move together, so a voice or a
    piece of music becomes another one), random channel
    (``mono="random"``). When an item is augmented the mixture is the sum of its sources;
    otherwise the mixture file is used if there is one (``mixture="auto"``; ``"sum"`` always
    sums, ``"file"`` always reads the file).

    Validation (``train=False``): segments at fixed offsets derived from the seed, no
    augmentation, channel downmix; ``segment_seconds=None`` yields whole tracks.
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        source_names: Sequence[str],
        *,
        segments_per_track: int = 1,
        remix: float = 0.0,
        solo: float = 0.0,
        solo_keep: Sequence[float] | None = None,
        eq_db: float = 0.0,
        speed: Sequence[float] | None = None,
        mixture: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_choice("mixture", mixture, ("auto", "sum", "file"))
        for name, p in (("remix", remix), ("solo", solo)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if not segments_per_track >= 1:  # (NaN too)
            raise ValueError(f"segments_per_track must be >= 1, got {segments_per_track}")
        self.source_names = list(source_names)
        if not self.source_names:  # (failed at the first item, deep in numpy)
            raise ValueError(f"{type(self).__name__}: no sources (targets, sources or n_src name none)")
        self.segments_per_track = int(segments_per_track)
        self.remix = float(remix)
        self.solo = float(solo)
        self.solo_keep = _keep_weights(solo_keep, len(self.source_names))
        if not (math.isfinite(eq_db) and eq_db >= 0):
            raise ValueError(f"eq_db must be >= 0 (dB), got {eq_db}")
        self.eq_db = float(eq_db)
        self.speed = _speed_range(speed)
        self.mixture_mode = mixture
        self.tracks = self._probe(tracks)
        if not self.tracks:
            raise ValueError(f"{type(self).__name__}: no usable tracks found")
        # (track index, stem group or _MIXTURE) found unreadable. Per group, not per track: a
        # track excluded whole once one stem failed made later draws depend on what had been met.
        self._bad: set[tuple[int, int]] = set()

    def _probe(self, tracks: Sequence[Track]) -> list[Track]:
        """Read headers; drop (or raise on) tracks with unreadable or mismatched files."""
        out = []
        for t in tracks:
            try:
                files = [f for group in t.sources for f in group]
                if self.mixture_mode != "sum" and t.mixture is not None:
                    files.append(t.mixture)
                elif self.mixture_mode == "file" and t.mixture is None:
                    raise AudioError(f"track {t.name}: mixture='file' but it has no mixture file")
                infos = [audio_info(f) for f in files]
                rates = {i.sample_rate for i in infos}
                if len(rates) > 1:
                    odd = next(i for i in infos if i.sample_rate != infos[0].sample_rate)
                    raise AudioError.at(odd.path, f"sample rate {odd.sample_rate} Hz differs from "
                                        f"{infos[0].path} ({infos[0].sample_rate} Hz)")
                chans = {i.channels for i in infos}
                if len(chans) > 1:
                    odd = next(i for i in infos if i.channels != infos[0].channels)
                    raise AudioError.at(odd.path, f"{odd.channels} channels, but {infos[0].path} "
                                        f"has {infos[0].channels}")
                t = Track(t.name, t.sources, t.mixture, min(i.frames for i in infos),
                          infos[0].sample_rate, infos[0].channels)
            except AudioError as err:
                self._handle(err)
                continue
            out.append(t)
        return out

    def __len__(self) -> int:
        if self.segment_seconds is None:
            return len(self.tracks)
        return len(self.tracks) * self.segments_per_track

    def _speeds(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Each source's playback speed: 1 unless ``speed`` is set (drawn only then, so that
        recipes without it keep their draws)."""
        if not self.train or self.speed is None or self.segment_frames is None:
            return np.ones(n)
        lo, hi = np.log(self.speed)
        return np.exp(rng.uniform(lo, hi, size=n))

    def _other_track(self, rng: np.random.Generator, group: int) -> int:
        """A random remix partner for stem ``group``: a track whose ``group`` is known to be
        unreadable is drawn again. (Drawing among the readable ones made the draw depend on
        which bad tracks this process had met so far: the items differed with the number of
        DataLoader workers, and from a fresh start. Without bad tracks the draw is the same.)"""
        if sum(g == group for _, g in self._bad) >= len(self.tracks):
            raise AudioError(f"{type(self).__name__}: no readable {self.source_names[group]!r} left to remix from")
        while True:
            k = int(rng.integers(len(self.tracks)))
            if (k, group) not in self._bad:
                return k

    def _load(self, index: int, draws: int) -> dict:
        """Item ``index``'s track with the random numbers of item ``draws``: the item asked for,
        which a later ``index`` stands in for when its track is unreadable (with the draws of
        ``index`` it was a copy of that item, twice in the epoch)."""
        rng = self._rng(draws)
        ti = index % len(self.tracks)
        t = self.tracks[ti]
        n = self.segment_frames
        speeds = self._speeds(rng, len(t.sources))
        augmented = bool(np.any(speeds != 1.0))
        channel = self._channel(rng, t.channels)
        start = self._start(rng, t.frames, t.sample_rate, float(speeds.max()))
        plan = []  # per stem group: (track read, its start, remixed?), all drawn before reading
        for k in range(len(t.sources)):
            if self.train and self.remix > 0 and n is not None and rng.random() < self.remix:
                j = self._other_track(rng, k)
                src_start = self._start(rng, self.tracks[j].frames, self.tracks[j].sample_rate, float(speeds[k]))
                # its own track drawn again is read elsewhere: the mixture file no longer fits
                augmented = augmented or j != ti or src_start != start
                plan.append((j, src_start, True))
            else:
                plan.append((ti, start, False))
        # The item fails exactly when a file it reads is bad, known or not (whatever was met before)
        if any((ti, k) in self._bad for k, (_, _, remixed) in enumerate(plan) if not remixed):
            raise _KnownBad
        sources = []
        for k, (j, src_start, remixed) in enumerate(plan):
            src_t = self.tracks[j]
            ch = None if channel is None else min(channel, src_t.channels - 1)
            try:
                parts = [self._read(f, src_t.sample_rate, src_start, n, ch, float(speeds[k]))
                         for f in src_t.sources[k]]
                if n is None and len({x.shape[0] for x in parts}) > 1:
                    # whole tracks: the stems of a group may differ by a frame (a broadcast error)
                    m = min(x.shape[0] for x in parts)
                    parts = [x[:m] for x in parts]
                s = sum(parts)
            except AudioError as err:
                self._bad.add((j, k))
                if remixed:  # the partner's group is bad, not this track: draw another
                    raise _PartnerError(str(err), path=err.path) from None
                raise
            sources.append(np.asarray(s, dtype=np.float32))
        if n is None:  # whole tracks: stems may differ by a frame or two after resampling
            m = min(s.shape[0] for s in sources)
            sources = [s[:m] for s in sources]
        gains = self._gains(rng, len(sources))
        if gains is not None:
            sources = [s * g for s, g in zip(sources, gains)]
            augmented = True
        # Equaliser and solo drawn after the other augmentations (and only when enabled), so
        # that older recipes keep their draws.
        if self.train and self.eq_db > 0:
            sources = [random_eq(s, rng, self.eq_db, self.sample_rate) for s in sources]
            augmented = True
        if self.train and self.solo > 0 and len(sources) > 1 and rng.random() < self.solo:
            # Uniform solos keep their original draw, so older recipes reproduce.
            keep = (int(rng.integers(len(sources))) if self.solo_keep is None
                    else int(rng.choice(len(sources), p=self.solo_keep)))
            sources = [s if k == keep else np.zeros_like(s) for k, s in enumerate(sources)]
            augmented = True
        use_file = t.mixture is not None and (
            self.mixture_mode == "file" or (self.mixture_mode == "auto" and not augmented))
        if use_file:
            if (ti, _MIXTURE) in self._bad:
                raise _KnownBad
            try:
                mixture = self._read(t.mixture, t.sample_rate, start, n, channel)
            except AudioError:
                self._bad.add((ti, _MIXTURE))
                raise
        else:
            mixture = np.sum(sources, axis=0, dtype=np.float32)
        return _item(mixture, sources, t.name)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        i = index
        tries = min(_MAX_SKIPS, len(self.tracks))
        for _ in range(tries):
            item = self._attempt(i, index)
            if item is not None:
                return item
            i = (i + 1) % len(self)
        raise AudioError(f"{type(self).__name__}: gave up after {tries} unreadable tracks "
                         f"near item {index} (see the warnings above for their paths)")

    def _attempt(self, i: int, index: int) -> dict | None:
        """Item ``index`` from the track of item ``i``, or None when it reads a bad file. A bad
        remix partner found on the way is excluded and the item drawn again (not counted as a
        try: how many were met before must not matter; each time one more is known, so it ends)."""
        while True:
            try:
                return self._load(i, index)
            except _PartnerError as err:
                self._handle(err)
            except _KnownBad:
                return None
            except AudioError as err:
                self._handle(err)
                return None


def _names(option: str, value) -> list[str] | None:
    """A list of names (None stays None). A string is refused: it was read as its letters
    (``exclude = "song"`` excluded the tracks named "s", "o", ...: none, silently)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{option} must be a list of names, got the string {value!r}")
    return [str(v) for v in value]


def _groups(targets, sources, default: Sequence[str]) -> dict[str, list[str]]:
    """The output groups of ``targets``, else one per name in ``sources`` (None: ``default``)."""
    sources = _names("sources", sources)
    if sources == []:  # (it was taken for the default stems, silently)
        raise ValueError("sources is an empty list: name at least one source, or leave it out for the default")
    if targets is None:
        targets = list(default) if sources is None else sources
    if isinstance(targets, Mapping):
        groups = {str(k): _names(f"targets.{k}", v) for k, v in targets.items()}
    else:
        groups = {s: [s] for s in _names("targets", targets)}
    for name, members in groups.items():
        if not members:
            raise ValueError(f"target group {name!r} is empty")
    return groups


def _select(names: Iterable[str], tracks, exclude) -> list[str]:
    names = sorted(names)
    tracks, exclude = _names("tracks", tracks), _names("exclude", exclude)
    if tracks is not None:
        wanted = set(tracks)
        missing = wanted - set(names)
        if missing:
            raise ValueError(f"unknown track(s): {sorted(missing)}")
        names = [n for n in names if n in wanted]
    if exclude is not None:
        names = [n for n in names if n not in set(exclude)]
    return names


def _track_folders(base: Path) -> list[str]:
    """The track folders in `base`: hidden ones (.ipynb_checkpoints, .git) are none."""
    return [p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _check_excluded(exclude, names: Iterable[str]) -> None:
    """``exclude`` names tracks found (in some root): a misspelt held-out track was trained on."""
    unknown = set(_names("exclude", exclude) or ()) - set(names)
    if unknown:
        raise ValueError(f"unknown track(s) in exclude: {sorted(unknown)}")


class MUSDB18(SegmentDataset):
    """MUSDB18-HQ layout ``root/<split>/<track>/{mixture,<source>...}.wav``.

    ``targets`` groups stems into outputs, e.g. ``{"vocals": ["vocals"], "accompaniment":
    ["drums", "bass", "other"]}`` (each output is the sum of its stems); default: one output
    per name in ``sources``. ``split=None`` means ``root`` itself holds the track folders.
    ``tracks``/``exclude`` select track names (e.g. a validation subset of ``train``).
    ``root`` may be a list of such folders (e.g. the demo data and a second draw of training
    tracks): their tracks are pooled, named ``<index of the root>/<track>``, and ``tracks`` /
    ``exclude`` select by the plain track name in every root."""

    DEFAULT_SOURCES = ("vocals", "drums", "bass", "other")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        *,
        sources: Sequence[str] | None = None,
        targets: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
        tracks: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        mixture_name: str | None = "mixture",
        ext: str = ".wav",
        **kwargs,
    ):
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        if not roots:
            raise ValueError(f"{type(self).__name__}: root is an empty list")
        groups = _groups(targets, sources, self.DEFAULT_SOURCES)
        tracks, exclude = _names("tracks", tracks), _names("exclude", exclude)  # read once, for every root
        found, seen = [], set()
        for i, r in enumerate(roots):
            base = Path(r) if split is None else Path(r) / split
            if not base.is_dir():
                raise FileNotFoundError(f"{type(self).__name__}: no such directory {base}")
            names = _track_folders(base)
            seen.update(names)
            for name in _select(names, tracks, exclude):
                d = base / name
                mix = None if mixture_name is None else str(d / f"{mixture_name}{ext}")
                found.append(Track(name if len(roots) == 1 else f"{i}/{name}",
                                   [[str(d / f"{s}{ext}") for s in g] for g in groups.values()], mix))
        _check_excluded(exclude, seen)
        super().__init__(found, list(groups), **kwargs)


class DemoTracks(MUSDB18):
    """Our generated layout ``root/<split>/<track>/{mixture,vocals,accompaniment}.wav``."""

    DEFAULT_SOURCES = ("vocals", "accompaniment")


class DSD100(SegmentDataset):
    """DSD100 layout: ``Mixtures/<Dev|Test>/<track>/mixture.wav`` and
    ``Sources/<Dev|Test>/<track>/{vocals,drums,bass,other}.wav``; ``targets`` as in MUSDB18."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "Dev",
        *,
        sources: Sequence[str] | None = None,
        targets: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
        tracks: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        ext: str = ".wav",
        **kwargs,
    ):
        root = Path(root)
        src_dir = root / "Sources" / split
        mix_dir = root / "Mixtures" / split
        if not src_dir.is_dir():
            raise FileNotFoundError(f"DSD100: no such directory {src_dir}")
        groups = _groups(targets, sources, MUSDB18.DEFAULT_SOURCES)
        names = _track_folders(src_dir)
        _check_excluded(exclude, names)
        names = _select(names, tracks, exclude)
        found = []
        for name in names:
            mix = mix_dir / name / f"mixture{ext}"
            found.append(Track(name, [[str(src_dir / name / f"{s}{ext}") for s in g]
                                      for g in groups.values()], str(mix)))
        super().__init__(found, list(groups), **kwargs)


class WSJ0Mix(SegmentDataset):
    """wsj0-2mix layout ``root/<tr|cv|tt>/{mix,s1,s2}/<utterance>.wav`` (``n_src`` speakers).

    ``root`` is the folder holding ``tr``/``cv``/``tt`` (e.g. ``wav8k/min``). Utterances missing
    from one of the speaker folders are reported like unreadable files. ``tracks``/``exclude``
    select utterances by name (the file's name without its extension, the track's name, as in
    the other data sets; the file name, which ``tracks`` once took, is taken too)."""

    def __init__(self, root: str | os.PathLike, split: str = "tr", *, n_src: int = 2,
                 tracks: Iterable[str] | None = None, exclude: Iterable[str] | None = None, **kwargs):
        base = Path(root) / split
        mix_dir = base / "mix"
        if not mix_dir.is_dir():
            raise FileNotFoundError(f"WSJ0Mix: no such directory {mix_dir}")
        stem = {p.name: p.stem for p in mix_dir.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS}
        tracks, exclude = _names("tracks", tracks), _names("exclude", exclude)
        # a file name (what `tracks` took before) stands for its utterance
        tracks = None if tracks is None else [stem.get(n, n) for n in tracks]
        exclude = None if exclude is None else [stem.get(n, n) for n in exclude]
        _check_excluded(exclude, stem.values())
        wanted = set(_select(set(stem.values()), tracks, exclude))
        found = [Track(stem[n], [[str(base / f"s{k + 1}" / n)] for k in range(n_src)], str(mix_dir / n))
                 for n in sorted(stem) if stem[n] in wanted]
        kwargs.setdefault("mixture", "auto")
        super().__init__(found, [f"s{k + 1}" for k in range(n_src)], **kwargs)


def _list_audio(folder: str | os.PathLike) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"FolderTuple: no such directory {folder}")
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)


class FolderTuple(_Base):
    """Mixtures made on the fly from folders of isolated sources, one folder (or list of
    folders) per source type: each item pairs one random file per source, a random segment of
    each, random gains (``gain_db``), and mixture = sum of sources.

    Pairing: each epoch every folder is shuffled (from ``seed`` and the epoch) and item ``i``
    takes the ``i``-th file of each shuffled folder, so all files are used each epoch and the
    pairing changes from epoch to epoch. ``train=False`` fixes pairing and offsets from the
    seed (and applies no gains). ``epoch_length`` defaults to the size of the largest folder."""

    def __init__(
        self,
        folders: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]],
        *,
        epoch_length: int | None = None,
        gain_db: tuple[float, float] | None = (-5.0, 5.0),
        **kwargs,
    ):
        kwargs.setdefault("segment_seconds", 4.0)
        super().__init__(gain_db=gain_db, **kwargs)
        if self.segment_seconds is None:
            raise ValueError("FolderTuple needs segment_seconds (files differ in length)")
        if not folders:
            raise ValueError("FolderTuple needs at least one source folder")
        self.source_names = [str(k) for k in folders]
        self.files: list[list[tuple[str, int, int, int]]] = []  # (path, frames, rate, channels)
        for name, dirs in folders.items():
            dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs)
            entries = []
            for path in (p for d in dirs for p in _list_audio(d)):
                try:
                    i = audio_info(path)
                except AudioError as err:
                    self._handle(err)
                    continue
                entries.append((i.path, i.frames, i.sample_rate, i.channels))
            if not entries:
                raise ValueError(f"FolderTuple: no usable audio files for source {name!r} in {dirs}")
            self.files.append(entries)
        # (``epoch_length or ...``: 0 was taken for the default, silently)
        self.epoch_length = max(len(f) for f in self.files) if epoch_length is None else int(epoch_length)
        if self.epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
        self._bad: set[str] = set()

    def __len__(self) -> int:
        return self.epoch_length

    def pairing(self, index: int) -> list[str]:
        """The files item ``index`` uses in the current epoch (before any skip)."""
        return [self.files[k][j][0] for k, j in enumerate(self._choose(index))]

    def _choose(self, index: int) -> list[int]:
        if self.seed is None and self.train:
            rng = self._rng(index)
            return [int(rng.integers(len(f))) for f in self.files]
        base = 0 if self.seed is None else self.seed
        epoch = self.epoch if self.train else -1
        out = []
        for k, f in enumerate(self.files):
            perm = np.random.default_rng([base, epoch + 1, 0xF01D, k]).permutation(len(f))
            out.append(int(perm[index % len(f)]))
        return out

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = self._rng(index)
        n = self.segment_frames
        sources, names = [], []
        for k, j in enumerate(self._choose(index)):
            entries = self.files[k]
            for attempt in range(min(_MAX_SKIPS, len(entries))):
                path, frames, sr, ch = entries[(j + attempt) % len(entries)]
                if path in self._bad:
                    continue
                # a failed read gives its draws back: the next file draws as it does once the
                # bad one is known (else an item depended on what this process had read before)
                state = rng.bit_generator.state
                start = self._start(rng, frames, sr)
                try:
                    x = self._read(path, sr, start, n, self._channel(rng, ch))
                except AudioError as err:
                    self._handle(err)
                    self._bad.add(path)
                    rng.bit_generator.state = state
                    continue
                sources.append(x)
                names.append(Path(path).stem)
                break
            else:
                raise AudioError(f"FolderTuple: no readable file for source "
                                 f"{self.source_names[k]!r} near item {index}")
        gains = self._gains(rng, len(sources))
        if gains is not None:
            sources = [s * g for s, g in zip(sources, gains)]
        mixture = np.sum(sources, axis=0, dtype=np.float32)
        return _item(mixture, sources, "+".join(names))
