"""The library's audio helpers, used by the data tool (never the other way round).

Issue 17 moves ``chimera.data.audio`` to ``chimera.audio``; either location works."""
try:
    from chimera.audio import read_audio, resample, write_audio
except ImportError:  # before the move
    from chimera.data.audio import read_audio, resample, write_audio

__all__ = ["read_audio", "resample", "write_audio"]
