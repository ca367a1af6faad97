"""Audio files in and out: open and validate, read (whole or in blocks), write, resample.

Every problem with a file (missing, a folder, empty, not audio, truncated, NaN/Inf samples,
an output that exists) is an :class:`AudioError` whose message is one line naming the file
and the problem, so the data sets, ``predict`` and ``evaluate`` report a bad file the same
way, and a bad file inside a DataLoader worker still says which one it was.

libsndfile reads and writes the files; what it cannot read (AAC/ALAC in .m4a, WMA, WebM,
…) is decoded by ffmpeg through a pipe (:class:`FfmpegFile`), when ffmpeg is installed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AUDIO_EXTENSIONS", "AudioError", "AudioInfo", "FFMPEG_EXTENSIONS", "FfmpegFile", "OUTPUT_FORMATS",
    "OUTPUT_CHANNELS", "OUTPUT_RATES", "StreamResampler", "audio_info", "check_output_channels", "check_output_format",
    "open_audio", "output_rate",
    "read_audio", "read_blocks", "resample", "to_mono", "write_audio",
]

PathLike = str | os.PathLike

#: Formats libsndfile reads itself, so its verdict on such a file stands (no ffmpeg retry).
_SNDFILE_ONLY = (".wav", ".flac", ".aiff", ".aif", ".au", ".w64", ".caf")
#: Formats that only ffmpeg reads (libsndfile has no AAC, ALAC, WMA, WebM/Matroska, AC-3).
FFMPEG_EXTENSIONS = (".m4a", ".aac", ".mp4", ".wma", ".webm", ".mka", ".ac3")
#: File name endings taken for audio when a folder is searched (predict, data sets).
AUDIO_EXTENSIONS = _SNDFILE_ONLY + (".ogg", ".oga", ".opus", ".mp3") + FFMPEG_EXTENSIONS

#: Output formats (libsndfile major format, default subtype) by file extension.
OUTPUT_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
                  "opus": ("OGG", "OPUS"), "mp3": ("MP3", "MPEG_LAYER_III"), "aiff": ("AIFF", "PCM_16")}
#: The only sample rates some output formats hold (libsndfile refuses others).
OUTPUT_RATES = {"opus": (8000, 12000, 16000, 24000, 48000),
                "mp3": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)}
#: The most channels each output format holds, found by writing them with libsndfile 1.2.2
#: (tests/test_audio.py checks them): MP3 2, FLAC 8, Opus 255, WAV and AIFF 1024 (libsndfile's
#: own limit). Vorbis: 255, libvorbis' limit; libsndfile takes more, then crashes the process.
OUTPUT_CHANNELS = {"wav": 1024, "aiff": 1024, "flac": 8, "ogg": 255, "opus": 255, "mp3": 2}
#: Other extensions of the output formats.
FORMAT_ALIASES = {"aif": "aiff", "wave": "wav"}


def format_of(name) -> str | None:
    """The output format a file name's extension says (an OUTPUT_FORMATS key), else None."""
    ext = os.path.splitext(os.fspath(name))[1].lstrip(".").lower()
    ext = FORMAT_ALIASES.get(ext, ext)
    return ext if ext in OUTPUT_FORMATS else None

# What soundfile raises for a file it cannot open or decode (the class differs by version).
_DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)


class AudioError(Exception):
    """A file that cannot be used as audio. ``path`` and ``problem`` are kept as attributes.

    Constructible from a single message too, so that DataLoader can re-raise it in the main
    process (it rebuilds worker exceptions as ``type(msg)``)."""

    def __init__(self, message: str, path: PathLike | None = None, problem: str | None = None):
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)
        self.problem = problem

    @classmethod
    def at(cls, path: PathLike, problem: str) -> "AudioError":
        return cls(f"{os.fspath(path)}: {problem}", path=path, problem=problem)

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


def _reason(exc: Exception) -> str:
    """libsndfile's reason alone (the message names the file already)."""
    text = str(getattr(exc, "error_string", "") or exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    return text.removeprefix("Error :").strip(" .")


def open_audio(path: PathLike) -> sf.SoundFile:
    """An open, validated ``soundfile.SoundFile`` (the caller closes it): raises
    :class:`AudioError` for a missing path, a folder, an empty file, a file libsndfile
    cannot read, or one whose header has no samples or an invalid rate/channel count."""
    path = os.fspath(path)
    if path == "-" and not os.path.exists(path):  # the usual name of standard input, which is not read
        raise AudioError.at(path, "standard input is not read (each input is read twice); save it to a file first")
    if not os.path.exists(path):  # ("nodir/" is a folder that is not there)
        raise AudioError.at(path, "no such folder" if path.endswith(os.sep) else "no such file")
    if os.path.isdir(path):
        raise AudioError.at(path, "is a folder, not an audio file")
    if not os.path.isfile(path):  # a pipe's data would be gone after the first of the two reads (check, separate)
        raise AudioError.at(path, "not a regular file (a pipe or a device); save it to a file first")
    if os.path.getsize(path) == 0:
        raise AudioError.at(path, "empty file (0 bytes)")
    try:
        f = sf.SoundFile(path)
    except _DECODE_ERRORS as exc:
        if path.lower().endswith(_SNDFILE_ONLY):
            raise AudioError.at(path, f"not a readable audio file ({_reason(exc)})") from None
        f = _open_with_ffmpeg(path, _reason(exc))
    problem = None
    if f.samplerate <= 0 or f.channels <= 0:
        problem = f"invalid header (rate {f.samplerate}, channels {f.channels})"
    else:  # a WAV cut right after its header has no samples left: say it was cut
        problem = _truncation(f) or ("the audio has no samples" if f.frames <= 0 else None)
    if problem:
        f.close()
        raise AudioError.at(path, problem)
    return f


# libsndfile's log line for the chunk of samples when the file ends before its size (WAV
# "data", AIFF "SSND", AU "Data Size"); it then shortens `frames` to what is there, silently.
_CHUNK_SIZE = re.compile(r"^\s*(?:data|SSND|Data Size)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # what streaming writers put there before the size is known


def _truncation(f) -> str | None:
    """The problem of a file cut short (a download or copy that stopped), else None."""
    m = _CHUNK_SIZE.search(getattr(f, "extra_info", "") or "")
    if m is None:
        return None
    said, there = int(m.group(1)), int(m.group(2))
    if said in _UNKNOWN_SIZES or there >= said:
        return None
    return f"truncated: it holds {there} of the {said} bytes of samples its header promises ({said - there} missing)"


def _ffmpeg_input(path: str) -> str:
    """`path` as ffmpeg's input argument: with the file: protocol, so that a relative name
    with a colon ("take:2.m4a") is not read as a protocol, nor one starting with "-" as an
    option of ffprobe."""
    return "file:" + path


def _ffmpeg_reason(lines: list[str], path: str, fallback: str) -> str:
    """ffmpeg's last error line, without the input name it starts with (the message names the file)."""
    return lines[-1].removeprefix(_ffmpeg_input(path) + ": ") if lines else fallback


def _open_with_ffmpeg(path: str, sndfile_reason: str) -> "FfmpegFile":
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise AudioError.at(path, f"not a readable audio file (libsndfile: {sndfile_reason}; ffmpeg, which reads "
                                  "more formats, is not installed)")
    try:
        return FfmpegFile(path)
    except RuntimeError as exc:
        raise AudioError.at(path, f"not a readable audio file (libsndfile: {sndfile_reason}; ffmpeg: {exc})") from None


class FfmpegFile:
    """An audio file decoded by ffmpeg to float32 through a pipe, with the part of
    ``soundfile.SoundFile``'s reading interface chimera uses (``name``, ``samplerate``,
    ``channels``, ``frames``, ``read``, ``seek``, ``tell``, ``close``). ``frames`` is
    counted by decoding the file once when it is opened (a container's duration is an
    estimate); memory stays bounded. Decoding problems raise RuntimeError with ffmpeg's
    reason."""

    _CHUNK = 1 << 20  # bytes per read when counting

    def __init__(self, path: PathLike):
        self.name = os.fspath(path)
        self.samplerate, self.channels = _ffprobe(self.name)
        self.frames, self._proc, self._errors = 0, None, None
        self.seek(0)
        width = 4 * self.channels
        counted = 0
        while chunk := self._proc.stdout.read(self._CHUNK):
            counted += len(chunk)
        self._check_exit()
        self.frames = counted // width
        self.seek(0)

    def _start(self, start: int) -> None:
        self.close()
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", _ffmpeg_input(self.name), "-map", "0:a:0",
               "-ac", str(self.channels), "-ar", str(self.samplerate)]
        if start:
            cmd += ["-af", f"atrim=start_sample={start}"]  # exact, unlike -ss on compressed audio
        cmd += ["-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
        self._errors = tempfile.TemporaryFile()  # a file, not a pipe: a chatty ffmpeg cannot block on it
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._errors)

    def _check_exit(self) -> None:
        if self._proc.wait() != 0:
            self._errors.seek(0)
            lines = self._errors.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(_ffmpeg_reason(lines, self.name, f"exit status {self._proc.returncode}"))

    def read(self, frames: int = -1, dtype: str = "float32", always_2d: bool = True) -> np.ndarray:
        width = 4 * self.channels
        want = (self.frames - self._pos if frames < 0 else frames) * width
        data = self._proc.stdout.read(max(0, want))
        if len(data) < want:
            self._check_exit()
        n = len(data) // width
        self._pos += n
        x = np.frombuffer(data[:n * width], dtype="<f4").reshape(n, self.channels).astype(dtype)
        return x if always_2d or self.channels > 1 else x[:, 0]

    def seek(self, frame: int) -> int:
        self._start(int(frame))
        self._pos = int(frame)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if getattr(self, "_proc", None) is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc.stdout.close()
            self._errors.close()
            self._proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


def _ffprobe(path: str) -> tuple[int, int]:
    """(sample rate, channels) of the first audio stream; RuntimeError with ffprobe's reason."""
    run = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                          "stream=sample_rate,channels", "-of", "json", _ffmpeg_input(path)], capture_output=True,
                         text=True)
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines()
        raise RuntimeError(_ffmpeg_reason(lines, path, f"ffprobe exit status {run.returncode}"))
    streams = json.loads(run.stdout or "{}").get("streams") or []
    if not streams:
        raise RuntimeError("no audio stream")
    return int(streams[0].get("sample_rate") or 0), int(streams[0].get("channels") or 0)


def audio_info(path: PathLike) -> AudioInfo:
    """Header information of a file that :func:`open_audio` accepts."""
    with open_audio(path) as f:
        return AudioInfo(os.fspath(path), int(f.frames), int(f.samplerate), int(f.channels))


def read_blocks(f: sf.SoundFile, block_frames: int, frames: int | None = None):
    """The next ``frames`` samples of the open file ``f`` (all that its header promises from
    the current position when None) as ``(n, channels)`` float32 blocks of at most
    ``block_frames``. A block that cannot be decoded, a file shorter than its header or a
    NaN/Inf sample raises :class:`AudioError` naming the file and where."""
    rate, start = f.samplerate, f.tell()
    end = f.frames if frames is None else min(f.frames, start + max(0, int(frames)))
    block_frames = max(1, int(block_frames))
    at = start
    while at < end:
        try:
            data = f.read(min(block_frames, end - at), dtype="float32", always_2d=True)
        except _DECODE_ERRORS as exc:
            raise AudioError.at(f.name, f"read failed at sample {at} ({_reason(exc)})") from None
        if data.shape[0] == 0:
            raise AudioError.at(f.name, f"file ends at sample {at}, its header says {f.frames}")
        if not np.isfinite(data).all():
            row, col = np.argwhere(~np.isfinite(data))[0]
            bad = at + int(row)
            raise AudioError.at(f.name, f"NaN/Inf sample at {bad / rate:.3f} s (sample {bad} is {data[row, col]})")
        at += data.shape[0]
        yield data


def read_audio(path: PathLike, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """Read ``frames`` samples (all when -1) from sample ``start`` as float32
    ``(frames, channels)`` and the sample rate. Reading past the end returns fewer frames
    (callers pad); any problem with the file raises :class:`AudioError` naming it."""
    if start < 0:
        raise ValueError(f"read_audio: start must be >= 0, got {start} (for {os.fspath(path)})")
    with open_audio(path) as f:
        if start >= f.frames:
            return np.zeros((0, f.channels), np.float32), f.samplerate
        if start:  # an open file is at sample 0 already
            try:
                f.seek(int(start))
            except _DECODE_ERRORS as exc:  # a FLAC cut short: libsndfile's bare "psf_fseek() failed"
                raise AudioError.at(f.name, f"seek to sample {start} failed ({_reason(exc)})") from None
        n = f.frames - start if frames < 0 else frames
        blocks = list(read_blocks(f, max(n, 1), n))
        x = np.concatenate(blocks) if blocks else np.zeros((0, f.channels), np.float32)
        return x, f.samplerate


def check_output_format(ext: str, subtype: str | None = None) -> tuple[str, str]:
    """The libsndfile ``(format, subtype)`` for output extension ``ext`` (subtype: its
    default when None); ValueError when the pair cannot be written."""
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"unsupported output format {ext!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    major, default = OUTPUT_FORMATS[ext]
    subtype = subtype or default
    if major not in sf.available_formats() or default not in sf.available_subtypes(major):
        raise ValueError(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {ext}")
    if not sf.check_format(major, subtype):
        raise ValueError(f"output format {ext} cannot hold subtype {subtype}")
    return major, subtype


def check_output_channels(ext: str, channels: int) -> None:
    """A ValueError saying which formats hold `channels` channels when `ext` cannot."""
    if channels > OUTPUT_CHANNELS[ext]:
        fits = [e for e, n in OUTPUT_CHANNELS.items() if channels <= n]
        hint = f"; {', '.join(fits)} can" if fits else ""
        raise ValueError(f"{channels} channels cannot be written as {ext}: it holds at most {OUTPUT_CHANNELS[ext]}"
                         + hint)


def output_rate(ext: str, rate: int) -> int:
    """The sample rate an output of format `ext` gets for an input at `rate`: `rate` when the
    format holds it, else the next rate up that it holds (so the whole band is kept), else
    its highest (opus: 44100 -> 48000, its own rate; mp3: 96000 -> 48000)."""
    rates = OUTPUT_RATES.get(ext)
    if rates is None or rate in rates:
        return int(rate)
    return next((r for r in rates if r > rate), rates[-1])


def write_audio(path: PathLike, data: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write ``(frames,)`` or ``(frames, channels)`` audio, creating parent folders.

    int16 arrays are written verbatim as PCM_16 (bit-exact); float arrays default to FLOAT,
    or to the format's own default where it has no FLOAT (FLAC: PCM_16, OGG: VORBIS, MP3).
    A write libsndfile refuses (format, rate, channels, shape) is a ValueError naming the
    file, and leaves no new file behind and an existing one as it was: the file is written
    under a hidden name beside it and renamed over ``path`` once complete."""
    path = os.fspath(path)
    data = np.asarray(data)
    if subtype is None:
        subtype = "PCM_16" if data.dtype == np.int16 else "FLOAT"
        major = os.path.splitext(path)[1][1:].upper()
        if major in sf.available_formats() and not sf.check_format(major, subtype):
            subtype = sf.default_subtype(major)  # FLOAT was refused for every .flac/.ogg/.mp3
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise ValueError(f"refusing to write NaN/Inf samples to {path}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # libsndfile truncates (or creates) its file before it checks the rate: a refused write
    # destroyed the file it was to replace. Same extension: libsndfile reads the format from it.
    fd, partial = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial" + os.path.splitext(path)[1],
                                   dir=folder)
    os.close(fd)
    try:
        sf.write(partial, data, int(sample_rate), subtype=subtype)
        os.replace(partial, path)
    except _DECODE_ERRORS as exc:
        raise ValueError(f"{path}: cannot write it as {subtype} at {int(sample_rate)} Hz ({_reason(exc)})") from None
    finally:
        if os.path.lexists(partial):
            os.remove(partial)


def resample(x: np.ndarray, sr_in: int, sr_out: int, quality: str = "HQ", axis: int = 0) -> np.ndarray:
    """Resample float32 audio along ``axis`` with soxr; the other axes are channels."""
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out or x.shape[axis] == 0:
        return np.ascontiguousarray(x)
    moved = np.moveaxis(x, axis, 0)
    flat = np.ascontiguousarray(moved.reshape(moved.shape[0], -1))   # (frames, channels)
    y = np.asarray(soxr.resample(flat, sr_in, sr_out, quality=quality), dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(y.reshape(-1, *moved.shape[1:]), 0, axis))


class StreamResampler:
    """Resample ``(n, channels)`` float32 blocks as they arrive (soxr, the same quality as
    :func:`resample`); the identity when the rates agree."""

    def __init__(self, sr_in: int, sr_out: int, channels: int, quality: str = "HQ"):
        self.channels = int(channels)
        self._soxr = None if sr_in == sr_out else soxr.ResampleStream(sr_in, sr_out, self.channels, dtype="float32",
                                                                      quality=quality)

    def push(self, block: np.ndarray) -> np.ndarray:
        block = np.ascontiguousarray(block, dtype=np.float32)
        return block if self._soxr is None else self._soxr.resample_chunk(block, last=False)

    def finish(self) -> np.ndarray:
        """What the resampler still holds (nothing for the identity)."""
        empty = np.zeros((0, self.channels), np.float32)
        return empty if self._soxr is None else self._soxr.resample_chunk(empty, last=True)


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
