"""Audio file helpers: reading with clear errors, writing, resampling (soxr), channel handling.

Every failure to read a file becomes an :class:`AudioError` whose message names the file and
the problem, so that a bad file in a data set is reported as such rather than as an obscure
exception deep inside a DataLoader worker.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AudioError",
    "AudioInfo",
    "audio_info",
    "read_audio",
    "write_audio",
    "resample",
    "to_mono",
]

PathLike = str | os.PathLike


class AudioError(Exception):
    """A file that cannot be used as audio. ``path`` and ``problem`` are kept as attributes.

    Constructible from a single message too, so that DataLoader can re-raise it in the main
    process (it rebuilds worker exceptions as ``type(msg)``)."""

    def __init__(self, message: str, path: PathLike | None = None, problem: str | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.problem = problem

    @classmethod
    def at(cls, path: PathLike, problem: str) -> "AudioError":
        return cls(f"{path}: {problem}", path=path, problem=problem)

    def __reduce__(self):  # keep path/problem across pickling (multiprocessing)
        return (type(self), (str(self), self.path, self.problem))


@dataclass(frozen=True)
class AudioInfo:
    path: str
    frames: int
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError.at(path, "file does not exist")
    if path.is_dir():
        raise AudioError.at(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError.at(path, "file is empty (0 bytes)")


def _classify(path: Path, exc: Exception) -> AudioError:
    msg = str(exc)
    low = msg.lower()
    if "format not recognised" in low or "unknown format" in low or "not a" in low:
        problem = f"not a readable audio file ({msg.split(':')[-1].strip() or msg})"
    else:
        problem = f"corrupt or unreadable audio ({msg})"
    return AudioError.at(path, problem)


def audio_info(path: PathLike) -> AudioInfo:
    """Header information; raises :class:`AudioError` for missing, empty, non-audio files."""
    p = Path(path)
    _check_exists(p)
    try:
        info = sf.info(str(p))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise _classify(p, exc) from exc
    if info.frames <= 0:
        raise AudioError.at(p, "contains no audio frames")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError.at(p, f"invalid header (rate {info.samplerate}, channels {info.channels})")
    return AudioInfo(str(p), int(info.frames), int(info.samplerate), int(info.channels))


def read_audio(
    path: PathLike,
    start: int = 0,
    frames: int = -1,
    *,
    check_finite: bool = True,
) -> tuple[np.ndarray, int]:
    """Read ``frames`` frames (all when -1) from ``start`` as float32 ``(frames, channels)``.

    Reading past the end returns fewer frames (callers pad). Raises :class:`AudioError` naming
    the file when it is missing, empty, not audio, truncated/corrupt, or holds NaN/Inf."""
    p = Path(path)
    _check_exists(p)
    try:
        with sf.SoundFile(str(p)) as f:
            sr = f.samplerate
            if start:
                if start >= f.frames:
                    return np.zeros((0, f.channels), np.float32), sr
                f.seek(int(start))
            x = f.read(frames=int(frames), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:
        raise _classify(p, exc) from exc
    if check_finite and x.size and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AudioError.at(p, f"contains {bad} NaN/Inf sample(s)")
    return x, sr


def write_audio(path: PathLike, data: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write ``(frames,)`` or ``(frames, channels)`` audio, creating parent directories.

    int16 arrays are written verbatim as PCM_16 (bit-exact); float arrays default to FLOAT."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data)
    if subtype is None:
        subtype = "PCM_16" if data.dtype == np.int16 else "FLOAT"
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise ValueError(f"refusing to write NaN/Inf samples to {p}")
    sf.write(str(p), data, int(sample_rate), subtype=subtype)


def resample(x: np.ndarray, sr_in: int, sr_out: int, quality: str = "HQ") -> np.ndarray:
    """Resample along the first axis with soxr (``(frames,)`` or ``(frames, channels)``)."""
    if sr_in == sr_out or x.shape[0] == 0:
        return np.ascontiguousarray(x, dtype=np.float32)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    y = soxr.resample(np.ascontiguousarray(x, dtype=np.float32), sr_in, sr_out, quality=quality)
    return np.asarray(y, dtype=np.float32)


def to_mono(x: np.ndarray, mode: str = "mean", channel: int | None = None) -> np.ndarray:
    """``(frames, channels)`` -> ``(frames,)``: ``mean`` downmix, or one channel (``channel``)."""
    if x.ndim == 1:
        return x
    if mode == "mean":
        return x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if mode in ("random", "channel"):
        c = 0 if channel is None else channel % x.shape[1]
        return np.ascontiguousarray(x[:, c])
    raise ValueError(f"unknown mono mode {mode!r} (expected 'mean' or 'random')")
