"""Separation data sets. (The demo data is made by ``tools/demodata``, beside the package:
the library never imports it.)

The audio helpers are re-exported from :mod:`chimera.audio`, their home, for data-set users."""
from ..audio import AUDIO_EXTENSIONS, AudioError, AudioInfo, audio_info, read_audio, resample, to_mono, write_audio
from .datasets import DSD100, MUSDB18, DemoTracks, FolderTuple, SegmentDataset, Track, WSJ0Mix, random_eq

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "AudioInfo",
    "DSD100",
    "DemoTracks",
    "FolderTuple",
    "MUSDB18",
    "SegmentDataset",
    "Track",
    "WSJ0Mix",
    "audio_info",
    "random_eq",
    "read_audio",
    "resample",
    "to_mono",
    "write_audio",
]
